"""Work a request must not wait for: queue a task or run a Redis chore on a short-lived thread."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from typing import Any

from addon_project.celery import app

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
    # The thread gets a copy of the caller's context, so a task it queues carries the request id.
    threading.Thread(
        target=contextvars.copy_context().run,
        args=(_run_logged, work, args),
        name=f"background-{getattr(work, '__name__', 'work')}",
        daemon=True,
    ).start()


def _run_logged(work: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        work(*args)
    # A broker's errors vary by transport; none may vanish silently.
    except Exception as exc:
        logger.warning(
            "background %s%r failed: %s",
            getattr(work, "__name__", work),
            args,
            type(exc).__name__,
        )
