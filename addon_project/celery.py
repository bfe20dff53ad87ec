"""The Celery app: configuration comes from Django settings (CELERY_* names)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "addon_project.settings")

app = Celery("addon_project", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


logger = logging.getLogger(__name__)


def in_background(work: Callable[..., Any], *args: Any) -> None:
    """Run `work(*args)` (publishing tasks, Redis chores) without making a request wait for it.

    Shoptet gives the install callback 5 s and webhooks 4 s; a hung broker or Redis must not spend
    them. A failure is logged; the periodic sweeps (complete_pending_installs, redeliver_webhooks)
    pick up what was not queued. In eager mode (tests) it runs inline.
    """
    if app.conf.task_always_eager:
        work(*args)
        return
    threading.Thread(
        target=_run_logged,
        args=(work, args),
        name=f"background-{getattr(work, '__name__', 'work')}",
        daemon=True,
    ).start()


def _run_logged(work: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        work(*args)
    except (
        Exception
    ) as exc:  # a broker's errors vary by transport; none may vanish silently
        logger.warning(
            "background %s%r failed: %s",
            getattr(work, "__name__", work),
            args,
            type(exc).__name__,
        )
