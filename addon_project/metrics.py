"""Prometheus metrics and the `/metrics` view.

Labels are small fixed sets: never an e-shop id, a token, a code or a raw path (per-tenant detail
belongs in the admin). With `PROMETHEUS_MULTIPROC_DIR` set *before the process starts*, every
process (gunicorn workers, Celery children) writes its values to files in that directory and the
view adds them up with `MultiProcessCollector`; without it, the view serves this process's own
registry (development). Celery queue depth is read from Redis at scrape time.

The `observe_*` helpers keep each call site to one line and also feed the dashboard's hourly
`activity` counters where a chart series exists.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator

import redis
from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from addon_project import activity
from addon_project.client_ip import client_ip, ip_in_networks
from addon_project.redis_client import get_redis
from shoptet_api import errors

logger = logging.getLogger(__name__)

# --- Metrics -------------------------------------------------------------------------------------

INSTALL_REQUESTS = Counter(
    "addon_install_requests",
    "Install callbacks answered, by HTTP status.",
    ["status"],
)
INSTALLS = Counter(
    "addon_installs",
    "Installs stored, new e-shops and reinstalls.",
    ["kind"],
)
WEBHOOK_DELIVERIES = Counter(
    "shoptet_webhook_deliveries",
    "Webhook deliveries received, by event and outcome (accepted, duplicate, bad_signature, ...).",
    ["event", "outcome"],
)
WEBHOOK_PROCESSED = Counter(
    "shoptet_webhook_processing",
    "Webhook handler runs, by event and resulting inbox status.",
    ["event", "outcome"],
)
WEBHOOK_HANDLER_SECONDS = Histogram(
    "shoptet_webhook_handler_seconds",
    "Time a webhook handler ran, by event.",
    ["event"],
)
TOKEN_MINTS = Counter(
    "shoptet_token_mints",
    "API access tokens minted (getAccessToken answered), by trigger.",
    ["trigger"],
)
TOKEN_FAILURES = Counter(
    "shoptet_token_failures",
    "Failed getAccessToken calls, by reason.",
    ["reason"],
)
TOKEN_WAITS = Counter(
    "shoptet_token_renewal_waits",
    "Renewals left to another process (single flight), by how the wait ended.",
    ["outcome"],
)
TOKEN_CAP = Counter(
    "shoptet_token_cap_reached",
    "Renewals that found the per-installation token cap full, by what happened.",
    ["outcome"],
)
API_CALLS = Counter(
    "shoptet_api_calls",
    "API requests sent, by endpoint template and HTTP status ('error': no answer).",
    ["endpoint", "status"],
)
API_SECONDS = Histogram(
    "shoptet_api_call_seconds",
    "Time from sending an API request to its answer (no endpoint label: cardinality).",
)
API_RETRIES = Counter(
    "shoptet_api_retries",
    "API requests repeated after an error, by reason.",
    ["reason"],
)
SLOT_WAITS = Counter(
    "shoptet_api_slot_waits",
    "Requests that found all in-flight slots of their e-shop taken, by how the wait ended.",
    ["outcome"],
)
SLOT_WAIT_SECONDS = Histogram(
    "shoptet_api_slot_wait_seconds",
    "Time spent waiting for an in-flight slot (only requests that waited).",
)
BUCKET_PAUSES = Counter(
    "shoptet_api_bucket_pauses",
    "Requests paused because the e-shop's rate-limit bucket was nearly full.",
)

# --- Label values --------------------------------------------------------------------------------

OTHER = "other"
MAX_ENDPOINTS = 200
_ENDPOINT_SHAPE = re.compile(
    r"(GET|HEAD|POST|PUT|PATCH|DELETE) /api(/([a-z][a-zA-Z-]{0,40}|\{id\})){0,6}"
)
_endpoints_seen: set[str] = set()
_endpoints_lock = threading.Lock()


def endpoint_value(label: str) -> str:
    """A client `endpoint_label` (`GET /api/orders/{id}`) if it has a known shape, else `other`.

    A path segment with a digit is `{id}` already; a code of letters only could still make many
    values, so this process lets through at most MAX_ENDPOINTS distinct ones.
    """
    if not _ENDPOINT_SHAPE.fullmatch(label):
        return OTHER
    with _endpoints_lock:
        if label not in _endpoints_seen:
            if len(_endpoints_seen) >= MAX_ENDPOINTS:
                return OTHER
            _endpoints_seen.add(label)
    return label


def event_value(event: str | None) -> str:
    """A webhook event name we handle or subscribe to; anything else (unauthenticated) is `other`."""
    if event is None:
        return "none"
    from shoptet_api.webhooks import HANDLERS  # the webhook module imports this one

    if event in HANDLERS or event in settings.SHOPTET_WEBHOOK_EVENTS:
        return event
    return OTHER


# --- Observations (one line at each call site) ---------------------------------------------------


def observe_install_request(status: int) -> None:
    INSTALL_REQUESTS.labels(status=str(status)).inc()


def observe_install(*, created: bool) -> None:
    INSTALLS.labels(kind="new" if created else "reinstall").inc()


def observe_webhook_delivery(event: str | None, outcome: str) -> None:
    WEBHOOK_DELIVERIES.labels(event=event_value(event), outcome=outcome).inc()
    if outcome == "accepted":
        activity.count("webhooks_received")


def observe_webhook_processing(event: str, outcome: str, seconds: float | None) -> None:
    """A handler run ended with inbox status `outcome`; `seconds` is None when no handler ran."""
    name = event_value(event)
    WEBHOOK_PROCESSED.labels(event=name, outcome=outcome).inc()
    if seconds is not None:
        WEBHOOK_HANDLER_SECONDS.labels(event=name).observe(seconds)
    if outcome in ("processed", "ignored"):
        activity.count("webhooks_processed")
    elif outcome in ("failed", "dead"):
        activity.count("webhooks_failed")


def observe_token_mint(trigger: str) -> None:
    TOKEN_MINTS.labels(trigger=trigger).inc()
    activity.count("token_renewals")


def observe_token_failure(exc: BaseException) -> None:
    TOKEN_FAILURES.labels(reason=_failure_reason(exc)).inc()
    activity.count("token_failures")


def observe_token_wait(outcome: str) -> None:
    TOKEN_WAITS.labels(outcome=outcome).inc()


def observe_token_cap(outcome: str) -> None:
    TOKEN_CAP.labels(outcome=outcome).inc()


def observe_api_call(label: str, status: int | str, seconds: float) -> None:
    """One request to the API: `status` is the HTTP status, or "error" when no answer came."""
    API_CALLS.labels(endpoint=endpoint_value(label), status=str(status)).inc()
    API_SECONDS.observe(seconds)
    activity.count("api_calls")
    if status == 429:
        activity.count("api_429")


def observe_api_retry(exc: BaseException) -> None:
    API_RETRIES.labels(reason=_failure_reason(exc)).inc()


def observe_slot_wait(outcome: str, seconds: float) -> None:
    SLOT_WAITS.labels(outcome=outcome).inc()
    SLOT_WAIT_SECONDS.observe(seconds)


def observe_bucket_pause() -> None:
    BUCKET_PAUSES.inc()


def _failure_reason(exc: BaseException) -> str:
    """A bounded name for an error: its Shoptet error class, snake_cased, else `other`."""
    name = type(exc).__name__
    if not isinstance(exc, errors.ShoptetAPIError) or not hasattr(errors, name):
        return OTHER
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name.removeprefix("Shoptet")).lower()


# --- Celery queue depth --------------------------------------------------------------------------

# Kombu's Redis transport keeps a queue as a list named after it, plus one list per priority step
# ("<queue>\x06\x16<step>") when messages carry a priority.
PRIORITY_SEPARATOR = "\x06\x16"
DEFAULT_PRIORITY_STEPS = (0, 3, 6, 9)


def celery_queue_names() -> list[str]:
    """The queues this deployment's workers consume: the default one and any declared."""
    from addon_project.celery import app

    names = [str(app.conf.task_default_queue or "celery")]
    for queue in app.conf.task_queues or ():
        name = getattr(queue, "name", None)
        if name and name not in names:
            names.append(str(name))
    return names


def _redis_lists(queue: str) -> list[str]:
    from addon_project.celery import app

    options = app.conf.broker_transport_options or {}
    steps = options.get("priority_steps", DEFAULT_PRIORITY_STEPS)
    separator = options.get("sep", PRIORITY_SEPARATOR)
    return [queue] + [f"{queue}{separator}{step}" for step in steps if step]


@functools.cache
def _broker(url: str) -> redis.Redis:
    if url == settings.REDIS_URL:
        return get_redis()
    return redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)


class CeleryQueueCollector:
    """`addon_celery_queue_length{queue}`: messages waiting in Redis, read at scrape time."""

    def collect(self) -> Iterable[Metric]:
        names = celery_queue_names()
        try:
            pipe = _broker(str(settings.CELERY_BROKER_URL)).pipeline(transaction=False)
            for name in names:
                for key in _redis_lists(name):
                    pipe.llen(key)
            lengths = iter(pipe.execute())
        except redis.RedisError as exc:
            # A scrape must still answer: the missing series (and Redis's own alerts) say enough.
            logger.warning("metrics: queue length unavailable: %s", type(exc).__name__)
            return []
        family = GaugeMetricFamily(
            "addon_celery_queue_length",
            "Celery messages waiting in the broker, by queue (all priority lists added).",
            labels=["queue"],
        )
        for name in names:
            family.add_metric(
                [name], sum(int(next(lengths)) for _ in _redis_lists(name))
            )
        return [family]


class _ProcessMetrics:
    """This process's default registry, for single-process (development) scrapes."""

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()


def scrape_registry() -> CollectorRegistry:
    """A fresh registry for one scrape: all processes' files, or this process, plus queue depth."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ProcessMetrics())
    registry.register(CeleryQueueCollector())
    return registry


# --- The view ------------------------------------------------------------------------------------


def _bearer_ok(request: HttpRequest, token: str) -> bool:
    scheme, _, given = str(request.headers.get("Authorization", "")).partition(" ")
    return (
        bool(token)
        and scheme.lower() == "bearer"
        and hmac.compare_digest(given.strip().encode(), token.encode())
    )


@never_cache
@require_safe
def metrics_view(request: HttpRequest) -> HttpResponse:
    """`GET /metrics`: Prometheus text for a bearer token or an allowed network; 404 when off."""
    token = str(settings.METRICS_TOKEN)
    networks = settings.METRICS_ALLOWED_NETWORKS
    if not token and not networks:
        raise Http404  # metrics are off: look like any unknown URL
    allowed_network = bool(networks) and ip_in_networks(client_ip(request), networks)
    if not allowed_network and not _bearer_ok(request, token):
        if not token:
            return HttpResponse("Forbidden\n", status=403, content_type="text/plain")
        response = HttpResponse("Unauthorized\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return HttpResponse(
        generate_latest(scrape_registry()), content_type=CONTENT_TYPE_LATEST
    )
