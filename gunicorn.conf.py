"""Gunicorn settings for production: `gunicorn addon_project.wsgi` picks this file up from the project
directory (or name it with `-c gunicorn.conf.py`). Every value can be overridden by the environment
variables below or on the command line.

Run it behind a buffering reverse proxy (nginx, a cloud load balancer): gunicorn's workers are few and
a slow client would hold one for as long as it dribbles its request or reads the answer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


# Loopback by default: the proxy in front connects here. In a container, set GUNICORN_BIND=0.0.0.0:8000.
bind = os.environ.get("GUNICORN_BIND", "").strip() or "127.0.0.1:8000"
# Threads, not only processes: the install callback and settings-page login wait up to a few seconds
# on Shoptet's OAuth server, and a waiting thread costs far less than a waiting process.
worker_class = "gthread"
workers = _int("WEB_CONCURRENCY", min(2 * (os.cpu_count() or 1) + 1, 8))
threads = _int("GUNICORN_THREADS", 4)
# Shoptet gives the install callback 5 s; nothing we serve should take 30. A hung request is killed.
timeout = _int("GUNICORN_TIMEOUT", 30)
graceful_timeout = 30
keepalive = 5
# Recycle workers now and then so a slow leak in any library cannot grow without bound.
max_requests = 2000
max_requests_jitter = 200
# The proxy's X-Forwarded-Proto decides https (Django's SECURE_PROXY_SSL_HEADER); gunicorn itself
# trusts forwarded headers only from these addresses.
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")

# Access log on stdout. `%(U)s` is the path *without* the query string: install and settings-page
# codes (`?code=…`) never reach the log. The last field is our request id (X-Request-ID), which
# joins an access line to the application's log lines for the same request.
accesslog = "-"
errorlog = "-"
# The master and the workers log like the app: LOG_FORMAT (JSON in production), one line per event,
# the request id on access lines. Reading the settings here also stops a start without SECRET_KEY
# before any worker boots.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "addon_project.settings")
from django.conf import settings as _django_settings  # noqa: E402

logconfig_dict = _django_settings.LOGGING
access_log_format = (
    '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms "%({x-request-id}o)s"'
)


def on_starting(server: Any) -> None:
    """Make sure the metrics directory exists (prometheus-client multiprocess mode).

    It is shared with the Celery processes of this host so /metrics adds them up; empty it when the
    whole stack (re)starts, before any process runs (see the README), never here: a web restart alone
    would delete the live files of running workers.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)


def child_exit(server: Any, worker: Any) -> None:
    """A finished worker's live gauges must stop counting (prometheus-client multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
