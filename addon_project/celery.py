"""The Celery app: configuration comes from Django settings (CELERY_* names)."""

from __future__ import annotations

import logging
import logging.config
import os
from typing import Any

from celery import Celery, signals

from addon_project import logging_context

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "addon_project.settings")

app = Celery("addon_project", task_cls="celery.contrib.django.task:DjangoTask")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# --- Logging: our LOGGING config, and the request id carried from a request into its tasks ------

# Message header that carries the request id of whoever queued a task.
REQUEST_ID_HEADER = "x_request_id"
_task_contexts: dict[str, Any] = {}


@signals.setup_logging.connect
def _use_django_logging(loglevel: int | str | None = None, **kwargs: Any) -> None:
    """Worker and beat log through settings.LOGGING (same format as web), at their `-l` level.

    Connecting this signal stops Celery from replacing the root logger's handlers with its own
    format; it also leaves stdout alone (nothing of ours prints).
    """
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)
    if loglevel:
        logging.getLogger().setLevel(loglevel)


@signals.before_task_publish.connect
def _publish_request_id(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    request_id = logging_context.current_request_id()
    if headers is not None and request_id is not None:
        headers.setdefault(REQUEST_ID_HEADER, request_id)


@signals.task_prerun.connect
def _start_task_context(
    task_id: str | None = None, task: Any = None, **kwargs: Any
) -> None:
    request = getattr(task, "request", None)
    # A worker puts message headers on the request itself; apply() keeps them under `headers`.
    carried = getattr(request, REQUEST_ID_HEADER, None) or (
        getattr(request, "headers", None) or {}
    ).get(REQUEST_ID_HEADER)
    if carried is None and getattr(request, "is_eager", False):
        # Run inline (tests, eager mode): the caller's context is the one that queued it.
        carried = logging_context.current_request_id()
    request_id = logging_context.accepted_request_id(
        carried if isinstance(carried, str) else None
    )
    token = logging_context.start(
        request_id=request_id, task=getattr(task, "name", None), task_id=task_id
    )
    if task_id is not None:
        _task_contexts[task_id] = token


@signals.task_postrun.connect
def _end_task_context(task_id: str | None = None, **kwargs: Any) -> None:
    token = _task_contexts.pop(task_id, None) if task_id is not None else None
    if token is not None:
        logging_context.reset(token)
    else:
        logging_context.clear()
