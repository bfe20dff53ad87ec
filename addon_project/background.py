"""Work a request must not wait for: queue a task or run a Redis chore on this process's background thread."""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from addon_project.celery import app

logger = logging.getLogger(__name__)

# How long a process that is exiting (a recycled gunicorn worker) waits for work already handed over.
DRAIN_ON_EXIT_SECONDS = 3.0
# Work waiting for the thread, at most. A broker that hangs for a while must not grow a process's
# memory without bound: past this, work is dropped with a warning and the sweeps recover it.
MAX_WAITING = 10_000

_Item = tuple[contextvars.Context, Callable[..., Any], tuple[Any, ...]]
_lock = threading.Lock()
_queue: queue.Queue[_Item] = queue.Queue(MAX_WAITING)
_owner_pid: int | None = None
_thread: threading.Thread | None = None


def in_background(work: Callable[..., Any], *args: Any) -> bool:
    """Run `work(*args)` (publishing tasks, Redis chores) without making a request wait for it.

    Shoptet gives the install callback 5 s and webhooks 4 s; a hung broker or Redis must not spend
    them. A failure is logged; the periodic sweeps (complete_pending_installs, redeliver_webhooks)
    pick up what was not queued. In eager mode (tests) it runs inline. Returns whether the work
    was handed over (False: dropped, the queue being full).

    One long-lived thread per process runs the work in order: a thread started per call cost a
    webhook delivery more CPU than its publish (bench/ingest.py), and the caller waited for it to
    start.
    """
    if app.conf.task_always_eager:
        work(*args)
        return True
    # The thread gets a copy of the caller's context, so a task it queues carries the request id.
    try:
        _running_queue().put_nowait((contextvars.copy_context(), work, args))
        return True
    except queue.Full:
        logger.warning(
            "background work dropped: %s items already waiting (broker or Redis slow?); "
            "the periodic sweeps will redo %s",
            MAX_WAITING,
            getattr(work, "__name__", work),
        )
        return False


def _running_queue() -> queue.Queue[_Item]:
    """This process's queue, with its thread running (started again in a forked child, or if it
    ever died)."""
    global _queue, _owner_pid, _thread
    pid = os.getpid()
    if _owner_pid != pid or _thread is None or not _thread.is_alive():
        with _lock:
            if _owner_pid != pid:
                # A fork copies the queue but not the thread: what the parent queued is the parent's.
                _queue = queue.Queue(MAX_WAITING)
                _thread = None
                _owner_pid = pid
            if _thread is None or not _thread.is_alive():
                _thread = threading.Thread(
                    target=_serve, args=(_queue,), name="background", daemon=True
                )
                _thread.start()
    return _queue


def _serve(items: queue.Queue[_Item]) -> None:
    while True:
        context, work, args = items.get()
        context.run(_run_logged, work, args)
        items.task_done()


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


@atexit.register
def _drain_before_exit() -> None:
    """Give work already handed over a moment to finish when the process exits normally."""
    if _owner_pid != os.getpid():
        return
    done = threading.Event()
    try:
        _queue.put_nowait((contextvars.copy_context(), done.set, ()))
    except queue.Full:
        return
    done.wait(DRAIN_ON_EXIT_SECONDS)
