"""`/metrics`: access rules, the counters the platform moves, multiprocess sums and queue depth.

Counters live in the process's default registry for the whole test session, so tests compare a
scrape before and after the action. The exposition text is parsed with prometheus-client's own
parser, as Prometheus would read it.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families
from pytest_django.fixtures import Settings

from addon_project import metrics
from addon_project.celery import app as celery_app
from addon_project.redis_client import get_redis
from eshops.models import Eshop
from shoptet_api import provisioning, tokens, webhooks
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import ShoptetAPIError
from shoptet_api.models import WebhookEvent
from shoptet_emulator import ShoptetEmulator
from shoptet_emulator.server import PARTNER_OAUTH_PATH

TOKEN = "metrics-test-token-0123456789"
ROOT = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def metrics_on(settings: Settings) -> None:
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = []


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: Client) -> Samples:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    return parse(response.content.decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# --- Access --------------------------------------------------------------------------------------


def test_metrics_are_404_when_neither_token_nor_networks_are_set(
    client: Client, settings: Settings
) -> None:
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = []

    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 404
    assert b"shoptet_" not in response.content


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer wrong-token-0123456789",
        f"Basic {TOKEN}",
        TOKEN,
        f"Bearer {TOKEN}x",
    ],
)
def test_metrics_refuse_a_missing_or_wrong_token_with_401(
    client: Client, metrics_on: None, authorization: str | None
) -> None:
    extra: dict[str, Any] = (
        {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    )

    response = client.get("/metrics", **extra)

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"shoptet_" not in response.content
    assert TOKEN.encode() not in response.content


def test_metrics_answer_prometheus_text_for_the_token(
    client: Client, metrics_on: None
) -> None:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"bearer {TOKEN}")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    names = {
        family.name
        for family in text_string_to_metric_families(response.content.decode())
    }
    assert {"shoptet_api_calls", "addon_installs", "shoptet_token_mints"} <= names
    assert (
        "no-cache" in response["Cache-Control"]
        or "max-age=0" in response["Cache-Control"]
    )


def test_metrics_are_served_to_an_allowed_network_without_token(
    client: Client, settings: Settings
) -> None:
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("127.0.0.0/8")]

    allowed = client.get("/metrics")  # the test client comes from 127.0.0.1
    outside = client.get("/metrics", REMOTE_ADDR="203.0.113.7")

    assert allowed.status_code == 200
    assert "shoptet_api_calls" in {
        family.name
        for family in text_string_to_metric_families(allowed.content.decode())
    }
    assert outside.status_code == 403


def test_metrics_take_the_token_from_outside_the_allowed_networks(
    client: Client, settings: Settings
) -> None:
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("10.0.0.0/8")]

    without = client.get("/metrics")
    with_token = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert without.status_code == 401
    assert with_token.status_code == 200


def test_metrics_are_not_redirected_to_https(
    client: Client, metrics_on: None, settings: Settings
) -> None:
    settings.SECURE_SSL_REDIRECT = True

    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 200


def test_metrics_refuse_post(client: Client, metrics_on: None) -> None:
    response = client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")

    assert response.status_code == 405


# --- Counters moved by the platform --------------------------------------------------------------


@pytest.fixture
def installed(
    install: Callable[..., Eshop], settings: Settings, shoptet_settings: ShoptetEmulator
) -> Eshop:
    settings.SHOPTET_WEBHOOK_URL = "http://testserver/webhooks/shoptet/"
    eshop = install(name="Metriky s.r.o.")
    provisioning.complete_install(eshop)
    eshop.refresh_from_db()
    return eshop


@pytest.mark.django_db
def test_install_through_the_callback_moves_install_counters(
    client: Client, metrics_on: None, shoptet_settings: ShoptetEmulator
) -> None:
    shop = shoptet_settings.add_eshop(name="Nový obchod")
    before = scrape(client)

    response = client.get(
        "/oauth/install/", {"code": shoptet_settings.issue_install_code(shop.eshop_id)}
    )
    refused = client.get("/oauth/install/", {"code": ""})

    after = scrape(client)
    assert response.status_code == 200
    assert refused.status_code == 400
    for name, labels, delta in [
        ("addon_installs_total", {"kind": "new"}, 1),
        ("addon_install_requests_total", {"status": "200"}, 1),
        ("addon_install_requests_total", {"status": "400"}, 1),
    ]:
        assert value(after, name, **labels) - value(before, name, **labels) == delta


@pytest.mark.django_db
def test_reinstall_is_counted_as_reinstall(
    client: Client,
    metrics_on: None,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
) -> None:
    before = scrape(client)

    client.get(
        "/oauth/install/",
        {"code": shoptet_settings.issue_install_code(installed.eshop_id)},
    )

    after = scrape(client)
    assert (
        value(after, "addon_installs_total", kind="reinstall")
        - value(before, "addon_installs_total", kind="reinstall")
        == 1
    )
    assert value(after, "addon_installs_total", kind="new") == value(
        before, "addon_installs_total", kind="new"
    )


@pytest.mark.django_db
def test_webhook_receipt_and_processing_move_their_counters(
    client: Client,
    metrics_on: None,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
) -> None:
    event = "eshop:projectDomain"
    body, headers = shoptet_settings.webhook_request(installed.eshop_id, event, "1")
    signature = headers["Shoptet-Webhook-Signature"]
    before = scrape(client)

    def deliver(signature: str) -> int:
        return client.post(
            "/webhooks/shoptet/",
            data=body,
            content_type="application/json",
            HTTP_SHOPTET_WEBHOOK_SIGNATURE=signature,
        ).status_code

    assert deliver(signature) == 200
    assert deliver(signature) == 200  # Shoptet redelivers
    assert deliver("0" * 40) == 401
    webhooks.process_event(WebhookEvent.objects.get(eshop=installed).pk)

    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert (
        moved("shoptet_webhook_deliveries_total", event=event, outcome="accepted") == 1
    )
    assert (
        moved("shoptet_webhook_deliveries_total", event=event, outcome="duplicate") == 1
    )
    assert (
        moved("shoptet_webhook_deliveries_total", event=event, outcome="bad_signature")
        == 1
    )
    assert (
        moved("shoptet_webhook_processing_total", event=event, outcome="processed") == 1
    )
    assert moved("shoptet_webhook_handler_seconds_count", event=event) == 1


@pytest.mark.django_db
def test_unauthenticated_webhook_events_collapse_into_other(
    client: Client, metrics_on: None, installed: Eshop
) -> None:
    before = scrape(client)

    for name in ("made:up", "another:one"):
        client.post(
            "/webhooks/shoptet/",
            data=(
                f'{{"eshopId": {installed.eshop_id}, "event": "{name}", '
                '"eventCreated": "2026-01-08T15:13:39+0100", "eventInstance": "1"}'
            ),
            content_type="application/json",
        )
    client.post("/webhooks/shoptet/", data=b"not json", content_type="application/json")

    after = scrape(client)
    assert (
        value(
            after,
            "shoptet_webhook_deliveries_total",
            event="other",
            outcome="bad_signature",
        )
        - value(
            before,
            "shoptet_webhook_deliveries_total",
            event="other",
            outcome="bad_signature",
        )
        == 2
    )
    assert (
        value(
            after,
            "shoptet_webhook_deliveries_total",
            event="none",
            outcome="bad_request",
        )
        - value(
            before,
            "shoptet_webhook_deliveries_total",
            event="none",
            outcome="bad_request",
        )
        == 1
    )
    assert not any(
        dict(labels).get("event") in ("made:up", "another:one") for _n, labels in after
    )


@pytest.mark.django_db
def test_api_calls_tokens_429s_and_retries_move_their_counters(
    client: Client,
    metrics_on: None,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    settings: Settings,
) -> None:
    settings.SHOPTET_RETRY_AFTER_CAP = (
        0.0  # do not sleep through the emulator's Retry-After
    )
    before = scrape(client)

    shoptet_settings.fail_next(1, status=429, path_prefix="/api/eshop")
    with ShoptetClient(installed) as api:
        api.get("/api/eshop")
        api.get("/api/orders", params={"page": 1})

    after = scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert (
        moved("shoptet_api_calls_total", endpoint="GET /api/eshop", status="429") == 1
    )
    assert (
        moved("shoptet_api_calls_total", endpoint="GET /api/eshop", status="200") == 1
    )
    assert (
        moved("shoptet_api_calls_total", endpoint="GET /api/orders", status="200") == 1
    )
    assert moved("shoptet_api_call_seconds_count") == 3
    assert moved("shoptet_api_retries_total", reason="rate_limited") == 1
    # The install fixture's provisioning minted the first token; these calls reuse it.
    assert moved("shoptet_token_mints_total", trigger="request") == 0


@pytest.mark.django_db
def test_token_mint_and_failure_are_counted(
    client: Client,
    metrics_on: None,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
) -> None:
    tokens.forget_tokens(installed.eshop_id)
    before = scrape(client)

    with ShoptetClient(installed) as api:
        api.get("/api/eshop")
    tokens.forget_tokens(installed.eshop_id)
    shoptet_settings.fail_next(
        1, status=500, path_prefix=f"{PARTNER_OAUTH_PATH}getAccessToken"
    )
    with pytest.raises(Exception, match=r"\w"):
        tokens.renew_if_expiring(installed, within=float("inf"))

    after = scrape(client)
    assert (
        value(after, "shoptet_token_mints_total", trigger="request")
        - value(before, "shoptet_token_mints_total", trigger="request")
        == 1
    )
    failures_before = sum(
        v for (n, _l), v in before.items() if n == "shoptet_token_failures_total"
    )
    failures_after = sum(
        v for (n, _l), v in after.items() if n == "shoptet_token_failures_total"
    )
    assert failures_after - failures_before == 1


@pytest.mark.django_db
def test_no_label_names_an_eshop(
    client: Client,
    metrics_on: None,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
) -> None:
    with ShoptetClient(installed) as api:
        api.get("/api/eshop")
        with pytest.raises(ShoptetAPIError):
            api.get(f"/api/orders/{installed.eshop_id}", max_attempts=1)
    body, headers = shoptet_settings.webhook_request(
        installed.eshop_id, "eshop:projectDomain", "7"
    )
    client.post(
        "/webhooks/shoptet/",
        data=body,
        content_type="application/json",
        HTTP_SHOPTET_WEBHOOK_SIGNATURE=headers["Shoptet-Webhook-Signature"],
    )

    samples = scrape(client)

    shop_id = str(installed.eshop_id)
    label_names = {name for _n, labels in samples for name, _v in labels}
    label_values = [label_value for _n, labels in samples for _k, label_value in labels]
    assert not any("eshop" in name.lower() for name in label_names)
    assert not any(shop_id in label_value for label_value in label_values)
    assert TOKEN not in str(samples)


# --- Label values --------------------------------------------------------------------------------


def test_endpoint_values_are_templates_and_capped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "_endpoints_seen", set())
    monkeypatch.setattr(metrics, "MAX_ENDPOINTS", 2)

    assert metrics.endpoint_value("GET /api/orders/{id}") == "GET /api/orders/{id}"
    assert metrics.endpoint_value("GET /api/eshop") == "GET /api/eshop"
    assert metrics.endpoint_value("GET /api/products") == "other"  # over the cap
    assert (
        metrics.endpoint_value("GET /api/orders/{id}") == "GET /api/orders/{id}"
    )  # seen before
    assert metrics.endpoint_value("GET /api/ORDERS/Weird Code") == "other"
    assert metrics.endpoint_value("BREW /api/pot") == "other"


def test_failure_reasons_are_error_class_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from shoptet_api.errors import ShoptetMaxTokensReached, ShoptetTimeoutError

    assert metrics._failure_reason(ShoptetTimeoutError("slow")) == "timeout_error"
    assert (
        metrics._failure_reason(ShoptetMaxTokensReached("cap")) == "max_tokens_reached"
    )
    assert metrics._failure_reason(RuntimeError("x")) == "other"


# --- Multiprocess --------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import os, sys
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "addon_project.settings")
    import django
    django.setup()
    from addon_project import metrics
    metrics.API_CALLS.labels(endpoint="GET /api/eshop", status="200").inc(int(sys.argv[1]))
    metrics.WEBHOOK_HANDLER_SECONDS.labels(event="eshop:projectDomain").observe(0.2)
    print(os.getpid())
    """
)


def test_multiprocess_scrape_adds_up_every_process(
    client: Client, metrics_on: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        "DEBUG": "true",
        "REDIS_URL": django_settings.REDIS_URL,
    }
    pids = []
    for amount in ("3", "4"):
        child = subprocess.run(
            [sys.executable, "-c", CHILD, amount],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert child.returncode == 0, child.stderr
        pids.append(child.stdout.strip())
    assert len(set(pids)) == 2
    assert len(list(tmp_path.glob("*.db"))) >= 2  # one file per process and kind

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    samples = scrape(client)

    assert (
        value(
            samples, "shoptet_api_calls_total", endpoint="GET /api/eshop", status="200"
        )
        == 7
    )
    assert (
        value(
            samples,
            "shoptet_webhook_handler_seconds_count",
            event="eshop:projectDomain",
        )
        == 2
    )
    # Only the files count: this (non-multiprocess) test process's own values are not mixed in.
    assert not any(name.startswith("python_") for name, _labels in samples)


# --- Celery queue depth --------------------------------------------------------------------------


@pytest.fixture
def test_queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    queue = f"test-metrics-{uuid.uuid4().hex[:10]}"
    monkeypatch.setitem(celery_app.conf, "task_default_queue", queue)
    # send_task publishes even in eager mode; say so, to keep the warning out.
    monkeypatch.setitem(celery_app.conf, "task_always_eager", False)
    yield queue
    get_redis().delete(queue, *(f"{queue}\x06\x16{step}" for step in (3, 6, 9)))


def test_queue_depth_counts_waiting_messages_of_every_priority(
    client: Client, metrics_on: None, test_queue: str
) -> None:
    r = get_redis()
    assert value(scrape(client), "addon_celery_queue_length", queue=test_queue) == 0

    r.lpush(test_queue, "m1", "m2")
    r.lpush(f"{test_queue}\x06\x169", "m3")
    celery_app.send_task("shoptet_api.does_not_run", queue=test_queue)

    assert value(scrape(client), "addon_celery_queue_length", queue=test_queue) == 4


def test_scrape_still_answers_when_the_broker_is_down(
    client: Client, metrics_on: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    monkeypatch.setattr(metrics, "_broker", lambda url: dead)

    samples = scrape(client)

    assert not any(name == "addon_celery_queue_length" for name, _labels in samples)
    assert any(
        name == "shoptet_api_calls_total" or name.startswith("shoptet_")
        for name, _l in samples
    )
