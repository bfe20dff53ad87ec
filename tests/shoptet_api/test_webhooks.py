"""The webhook receiver and the inbox: verify the raw body, store once, answer fast, process later.

Deliveries are built by the Shoptet emulator (`webhook_request`: the body and the HMAC-SHA1 header
Shoptet would send) and POSTed through Django's test client; one test lets the emulator deliver over
real HTTP to a live server. Signatures are computed here with `hmac`/`hashlib`, never with the
production helper, so a wrong algorithm in the receiver cannot agree with itself.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import importlib
import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest import mock

import pytest
from django.conf import settings as django_settings
from django.db import connections, transaction
from django.test import Client
from django.utils import timezone
from pytest_django import DjangoCaptureOnCommitCallbacks
from pytest_django.fixtures import Settings
from pytest_django.live_server_helper import LiveServer

from eshops.models import Eshop, EshopTransition
from oauth.services import install_addon
from shoptet_api import provisioning, tasks, tokens, webhooks
from shoptet_api.client import ShoptetClient
from shoptet_api.models import WebhookEvent
from shoptet_api.types import MAX_JSON_DEPTH, load_json
from shoptet_emulator import ShoptetEmulator

pytestmark = pytest.mark.django_db

RECEIVER = "/webhooks/shoptet/"
WEBHOOK_URL = "http://testserver/webhooks/shoptet/"
SIGNATURE = "Shoptet-Webhook-Signature"
# Inside 185.184.254.0/24, where Shoptet's webhooks come from (reference §4.4).
SHOPTET_NETWORK_ADDRESS = "185.184.254.17"

Handler = Callable[[WebhookEvent], str]

ON_POSTGRES = django_settings.DATABASES["default"]["ENGINE"].endswith("postgresql")
# An event no handler is registered for (the sync registers order:* and job:finished).
UNHANDLED = "credit-note:create"


# --- Helpers -------------------------------------------------------------------------------------


@pytest.fixture
def installed(shoptet_settings: ShoptetEmulator, settings: Settings) -> Eshop:
    """An e-shop installed through the emulator, with its signature key and webhooks provisioned."""
    settings.SHOPTET_WEBHOOK_URL = WEBHOOK_URL
    shop = shoptet_settings.add_eshop(name="Zahradnictví U Lípy")
    eshop = install_addon(code=shoptet_settings.issue_install_code(shop.eshop_id))
    provisioning.complete_install(eshop)
    eshop.refresh_from_db()
    assert eshop.webhook_signature_key == shoptet_settings.signature_key_for(
        eshop.eshop_id
    )
    return eshop


def sign(body: bytes, key: str) -> str:
    """What Shoptet sends: lowercase hex HMAC-SHA1 of the raw body (reference §4.3)."""
    return hmac.new(key.encode(), body, hashlib.sha1).hexdigest()


def after_install(eshop: Eshop, minutes: int) -> dt.datetime:
    """An eventCreated `minutes` after the latest install, whole seconds like Shoptet's."""
    return eshop.last_installed_at.replace(microsecond=0) + dt.timedelta(
        minutes=minutes
    )


def signed(
    emulator: ShoptetEmulator,
    eshop: Eshop,
    event: str,
    instance: str = "2026000001",
    *,
    at: dt.datetime | None = None,
) -> tuple[bytes, str]:
    """The body and signature the emulator would deliver for one event."""
    body, headers = emulator.webhook_request(
        eshop.eshop_id, event, instance, event_created=at or after_install(eshop, 1)
    )
    return body, headers[SIGNATURE]


def payload(eshop_id: int, **fields: Any) -> dict[str, Any]:
    return {
        "eshopId": eshop_id,
        "event": "order:create",
        "eventCreated": "2026-01-08T15:13:39+0100",
        "eventInstance": "2026000001",
        **fields,
    }


def post(
    client: Client, body: bytes, signature: str | None = None, **extra: Any
) -> Any:
    if signature is not None:
        extra["HTTP_SHOPTET_WEBHOOK_SIGNATURE"] = signature
    return client.post(RECEIVER, data=body, content_type="application/json", **extra)


@pytest.fixture
def register_handler(monkeypatch: pytest.MonkeyPatch) -> Callable[[str, Handler], None]:
    """Register a handler with `webhook_handler` for one test; HANDLERS is restored afterwards."""

    def register(event: str, function: Handler) -> None:
        # setitem first records the original (present or not), so teardown restores exactly it.
        monkeypatch.setitem(webhooks.HANDLERS, event, function)
        monkeypatch.delitem(webhooks.HANDLERS, event)
        webhooks.webhook_handler(event)(function)

    return register


# --- Verification ----------------------------------------------------------------------------------


def test_a_correctly_signed_delivery_is_stored_and_acknowledged(
    client: Client,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    at = after_install(installed, 5)
    body, signature = signed(shoptet_settings, installed, "order:create", at=at)

    with django_capture_on_commit_callbacks() as callbacks:
        response = post(client, body, signature, HTTP_USER_AGENT="Shoptet")

    assert response.status_code == 200
    assert response.json() == {"status": "accepted"}
    row = WebhookEvent.objects.get()
    assert row.eshop_id == installed.pk
    assert (row.event, row.event_instance) == ("order:create", "2026000001")
    assert row.event_created == at
    assert row.raw_body.encode() == body
    assert row.headers[SIGNATURE] == signature
    assert row.headers["Content-Type"] == "application/json"
    assert row.headers["source"] == "127.0.0.1"
    assert row.verified_by == "key"
    assert row.status == WebhookEvent.Status.RECEIVED
    assert row.received_at is not None
    assert len(callbacks) == 1  # the processing task is enqueued after commit


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda body, key: sign(body + b" ", key), id="other-body"),
        pytest.param(lambda body, key: sign(body, key + "x"), id="other-key"),
        pytest.param(
            lambda body, key: hashlib.sha1(body).hexdigest(),  # noqa: S324 (a forgery)
            id="plain-sha1",
        ),
        pytest.param(
            lambda body, key: hmac.new(key.encode(), body, hashlib.sha256).hexdigest(),
            id="hmac-sha256",
        ),
        pytest.param(lambda body, key: sign(body, key)[:-1], id="truncated"),
        pytest.param(lambda body, key: "sha1=" + sign(body, key), id="prefixed"),
    ],
)
def test_a_wrong_signature_is_refused_and_nothing_is_stored(
    client: Client,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    forge: Callable[[bytes, str], str],
) -> None:
    body, _ = signed(shoptet_settings, installed, "order:create")
    key = shoptet_settings.signature_key_for(installed.eshop_id)
    assert key is not None

    with django_capture_on_commit_callbacks() as callbacks:
        response = post(client, body, forge(body, key))

    assert response.status_code == 401
    assert response.json() == {"error": "signature invalid"}
    assert WebhookEvent.objects.count() == 0
    assert callbacks == []


@pytest.mark.parametrize(
    "signature", [None, "", "   "], ids=["absent", "empty", "blank"]
)
def test_a_missing_signature_is_refused_and_nothing_is_stored(
    client: Client,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    signature: str | None,
) -> None:
    body, _ = signed(shoptet_settings, installed, "order:create")

    response = post(client, body, signature)

    assert response.status_code == 401
    assert response.json() == {"error": "signature missing"}
    assert WebhookEvent.objects.count() == 0


def test_an_uppercase_hex_signature_with_surrounding_space_is_accepted(
    client: Client, installed: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    body, signature = signed(shoptet_settings, installed, "order:create")

    response = post(client, body, f" {signature.upper()} ")

    assert response.status_code == 200
    assert WebhookEvent.objects.get().verified_by == "key"


def test_an_unknown_eshop_id_is_refused_with_404_and_nothing_is_stored(
    client: Client, installed: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    # Shoptet knows the shop and signs for it, but it never installed the addon here.
    stranger = shoptet_settings.add_eshop()
    shoptet_settings.renew_signature_key(stranger.eshop_id)
    body, headers = shoptet_settings.webhook_request(
        stranger.eshop_id, "order:create", "1"
    )

    response = post(client, body, headers[SIGNATURE])

    assert response.status_code == 404
    assert WebhookEvent.objects.count() == 0


def _without(field: str) -> Callable[[dict[str, Any]], bytes]:
    return lambda p: json.dumps({k: v for k, v in p.items() if k != field}).encode()


def _with(field: str, value: Any) -> Callable[[dict[str, Any]], bytes]:
    return lambda p: json.dumps({**p, field: value}).encode()


@pytest.mark.parametrize(
    "make_body",
    [
        pytest.param(lambda p: b"", id="empty"),
        pytest.param(lambda p: b"eshopId=1&event=order:create", id="form-encoded"),
        pytest.param(lambda p: json.dumps(p).encode()[:-3], id="truncated-json"),
        pytest.param(lambda p: b"\xff\xfe\xfa not utf-8", id="not-utf8"),
        pytest.param(lambda p: json.dumps([p]).encode(), id="array"),
        pytest.param(lambda p: b'"order:create"', id="string"),
        pytest.param(lambda p: b"null", id="null"),
        pytest.param(_without("eshopId"), id="no-eshopId"),
        pytest.param(_without("event"), id="no-event"),
        pytest.param(_without("eventInstance"), id="no-eventInstance"),
        pytest.param(_without("eventCreated"), id="no-eventCreated"),
        pytest.param(
            lambda p: _with("eshopId", str(p["eshopId"]))(p), id="eshopId-string"
        ),
        pytest.param(_with("eshopId", True), id="eshopId-bool"),
        pytest.param(_with("eshopId", 0), id="eshopId-zero"),
        pytest.param(_with("eshopId", -5), id="eshopId-negative"),
        pytest.param(_with("eshopId", 1.5), id="eshopId-float"),
        pytest.param(_with("event", ""), id="event-empty"),
        pytest.param(_with("event", "order:" + "x" * 60), id="event-too-long"),
        pytest.param(_with("event", 7), id="event-number"),
        pytest.param(_with("eventInstance", None), id="eventInstance-null"),
        pytest.param(_with("eventInstance", True), id="eventInstance-bool"),
        pytest.param(_with("eventInstance", {"code": "1"}), id="eventInstance-object"),
        pytest.param(_with("eventCreated", "yesterday"), id="eventCreated-text"),
        pytest.param(_with("eventCreated", ""), id="eventCreated-empty"),
        pytest.param(_with("eventCreated", 1546956819), id="eventCreated-number"),
        pytest.param(
            _with("eventCreated", "2019-01-08T15:13:39"), id="eventCreated-naive"
        ),
        pytest.param(
            _with("eventCreated", "2019-02-30T15:13:39+0100"),
            id="eventCreated-invalid-day",
        ),
    ],
)
def test_a_body_that_is_not_a_shoptet_webhook_is_refused_with_400(
    client: Client,
    installed: Eshop,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    make_body: Callable[[dict[str, Any]], bytes],
) -> None:
    body = make_body(payload(installed.eshop_id))
    assert installed.webhook_signature_key is not None

    with django_capture_on_commit_callbacks() as callbacks:
        # Correctly signed: the refusal is about the body, not about the signature.
        response = post(client, body, sign(body, installed.webhook_signature_key))

    assert response.status_code == 400
    assert "error" in response.json()
    assert WebhookEvent.objects.count() == 0
    assert callbacks == []


@pytest.mark.parametrize(("slack", "expected"), [(0, 200), (-1, 413)])
def test_a_body_over_the_size_limit_is_refused_with_413(
    client: Client,
    installed: Eshop,
    settings: Settings,
    slack: int,
    expected: int,
) -> None:
    body = json.dumps(payload(installed.eshop_id, eventInstance="x" * 400)).encode()
    settings.SHOPTET_WEBHOOK_MAX_BODY = len(body) + slack
    assert installed.webhook_signature_key is not None

    response = post(client, body, sign(body, installed.webhook_signature_key))

    assert response.status_code == expected
    assert WebhookEvent.objects.count() == (1 if expected == 200 else 0)


@pytest.mark.parametrize("method", ["get", "put", "delete"])
def test_only_post_is_allowed(client: Client, method: str) -> None:
    response = getattr(client, method)(RECEIVER)

    assert response.status_code == 405
    assert WebhookEvent.objects.count() == 0


@pytest.mark.parametrize(
    "signature", ["é" * 40, "Ã©" + "0" * 38], ids=["non-ascii", "latin-1-mojibake"]
)
def test_a_non_ascii_signature_header_is_refused_with_401(
    installed: Eshop, shoptet_settings: ShoptetEmulator, signature: str
) -> None:
    body, _ = signed(shoptet_settings, installed, "order:create")

    response = post(Client(raise_request_exception=False), body, signature)

    assert response.status_code == 401
    assert WebhookEvent.objects.count() == 0


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_a_signed_body_that_is_not_utf8_is_refused_with_400(
    installed: Eshop, encoding: str
) -> None:
    body = json.dumps(payload(installed.eshop_id)).encode(encoding)
    assert installed.webhook_signature_key is not None

    response = post(
        Client(raise_request_exception=False),
        body,
        sign(body, installed.webhook_signature_key),
    )

    assert response.status_code == 400
    assert WebhookEvent.objects.count() == 0


# --- The raw bytes are what is signed (prior art pain point 6) -----------------------------------


def test_the_signature_is_checked_on_the_exact_bytes_received(
    client: Client, installed: Eshop
) -> None:
    key = installed.webhook_signature_key
    assert key is not None
    # Odd spacing, a different key order and raw UTF-8: nothing a serialiser would reproduce.
    raw = (
        '{\n  "eventInstance" : "Žluťoučký kůň",\t"event":"order:create" ,\n'
        f'  "eventCreated": "2026-03-01T10:00:00+0100",  "eshopId":{installed.eshop_id}  }}\n'
    ).encode()
    escaped = json.dumps(
        json.loads(raw), ensure_ascii=True, indent=3, sort_keys=True
    ).encode()
    assert b"\\u017d" in escaped  # Ž as an escape: other bytes, the same JSON

    first = post(client, raw, sign(raw, key))
    second = post(client, escaped, sign(escaped, key))

    assert first.status_code == 200
    assert first.json() == {"status": "accepted"}
    # Verified against its own bytes too; and recognised as the same event (dedup on values).
    assert second.status_code == 200
    assert second.json() == {"status": "duplicate"}
    row = WebhookEvent.objects.get()
    assert row.raw_body == raw.decode()
    assert row.event_instance == "Žluťoučký kůň"


@pytest.mark.parametrize(
    "reserialise",
    [
        pytest.param(lambda data: json.dumps(data).encode(), id="default-spacing"),
        pytest.param(
            lambda data: json.dumps(
                data, separators=(",", ":"), ensure_ascii=False
            ).encode(),
            id="compact-raw-utf8",
        ),
        pytest.param(
            lambda data: json.dumps(data, ensure_ascii=False, sort_keys=True).encode(),
            id="sorted-keys",
        ),
    ],
)
def test_a_body_reserialised_after_signing_is_refused(
    client: Client,
    installed: Eshop,
    reserialise: Callable[[Any], bytes],
) -> None:
    key = installed.webhook_signature_key
    assert key is not None
    original = (
        f'{{"eshopId": {installed.eshop_id}, "event": "order:create", '
        '"eventInstance": "Žluťoučký kůň", "eventCreated": "2026-03-01T10:00:00+0100"}'
    ).encode()
    same_json = reserialise(json.loads(original))
    assert same_json != original
    assert json.loads(same_json) == json.loads(original)

    response = post(client, same_json, sign(original, key))

    assert response.status_code == 401
    assert WebhookEvent.objects.count() == 0


# --- Key rotation (prior art pain point 7) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("renewed_minutes_ago", "expected"),
    [(9, 200), (11, 401)],
    ids=["inside-window", "after-window"],
)
def test_the_previous_key_is_accepted_only_inside_the_rotation_window(
    client: Client,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    settings: Settings,
    renewed_minutes_ago: int,
    expected: int,
) -> None:
    settings.SHOPTET_WEBHOOK_KEY_ROTATION_WINDOW = 600.0
    old_key = installed.webhook_signature_key
    assert old_key is not None
    with ShoptetClient(installed) as api:
        provisioning.renew_signature_key(installed, client=api)
    new_key = shoptet_settings.signature_key_for(installed.eshop_id)
    assert new_key is not None
    assert new_key != old_key
    Eshop.objects.filter(pk=installed.pk).update(
        signature_key_renewed_at=timezone.now()
        - dt.timedelta(minutes=renewed_minutes_ago)
    )
    in_flight = json.dumps(payload(installed.eshop_id, eventInstance="old")).encode()
    fresh = json.dumps(payload(installed.eshop_id, eventInstance="new")).encode()

    late = post(client, in_flight, sign(in_flight, old_key))
    current = post(client, fresh, sign(fresh, new_key))

    assert late.status_code == expected
    assert current.status_code == 200
    verified = dict(WebhookEvent.objects.values_list("event_instance", "verified_by"))
    assert verified == (
        {"old": "previous-key", "new": "key"} if expected == 200 else {"new": "key"}
    )


def test_a_renewal_does_not_make_every_older_key_valid(
    client: Client, installed: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    first_key = installed.webhook_signature_key
    assert first_key is not None
    with ShoptetClient(installed) as api:
        provisioning.renew_signature_key(installed, client=api)
        provisioning.renew_signature_key(installed, client=api)
    body = json.dumps(payload(installed.eshop_id)).encode()

    response = post(client, body, sign(body, first_key))

    assert (
        response.status_code == 401
    )  # only the key just before the current one is kept


# --- Unsigned lifecycle events: the policy --------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "event", "num_proxies", "environ", "expected"),
    [
        pytest.param(
            "signed_or_network",
            "addon:suspend",
            0,
            {"REMOTE_ADDR": SHOPTET_NETWORK_ADDRESS},
            200,
            id="shoptet-network-accepted",
        ),
        pytest.param(
            "signed",
            "addon:suspend",
            0,
            {"REMOTE_ADDR": SHOPTET_NETWORK_ADDRESS},
            401,
            id="signed-policy-refuses",
        ),
        pytest.param(
            "signed_or_network",
            "addon:suspend",
            0,
            {"REMOTE_ADDR": "127.0.0.1"},
            401,
            id="other-network-refused",
        ),
        pytest.param(
            "signed_or_network",
            "addon:suspend",
            0,
            {
                "REMOTE_ADDR": "203.0.113.9",
                "HTTP_X_FORWARDED_FOR": SHOPTET_NETWORK_ADDRESS,
            },
            401,
            id="forged-forwarded-for-ignored",
        ),
        pytest.param(
            "signed_or_network",
            "addon:uninstall",
            1,
            {
                "REMOTE_ADDR": "10.0.0.2",
                "HTTP_X_FORWARDED_FOR": SHOPTET_NETWORK_ADDRESS,
            },
            200,
            id="behind-our-proxy-accepted",
        ),
        pytest.param(
            "signed_or_network",
            "addon:uninstall",
            1,
            {
                "REMOTE_ADDR": "10.0.0.2",
                "HTTP_X_FORWARDED_FOR": f"{SHOPTET_NETWORK_ADDRESS}, 203.0.113.9",
            },
            401,
            id="behind-our-proxy-forged-entry-ignored",
        ),
        pytest.param(
            "signed_or_network",
            "order:create",
            0,
            {"REMOTE_ADDR": SHOPTET_NETWORK_ADDRESS},
            401,
            id="regular-event-never-unsigned",
        ),
        pytest.param(
            "signed_or_network",
            "eshop:projectDomain",
            0,
            {"REMOTE_ADDR": SHOPTET_NETWORK_ADDRESS},
            401,
            id="domain-event-never-unsigned",
        ),
    ],
)
def test_unsigned_events_follow_the_lifecycle_policy(
    client: Client,
    installed: Eshop,
    settings: Settings,
    policy: str,
    event: str,
    num_proxies: int,
    environ: dict[str, str],
    expected: int,
) -> None:
    settings.SHOPTET_LIFECYCLE_WEBHOOK_POLICY = policy
    settings.NUM_PROXIES = num_proxies
    body = json.dumps(payload(installed.eshop_id, event=event)).encode()

    response = post(client, body, None, **environ)

    assert response.status_code == expected
    if expected == 200:
        assert WebhookEvent.objects.get().verified_by == "network"
    else:
        assert response.json() == {"error": "signature missing"}
        assert WebhookEvent.objects.count() == 0


@pytest.mark.parametrize("policy", ["signed", "signed_or_network"])
def test_a_signed_lifecycle_event_is_accepted_from_anywhere(
    client: Client,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    settings: Settings,
    policy: str,
) -> None:
    settings.SHOPTET_LIFECYCLE_WEBHOOK_POLICY = policy
    body, signature = signed(shoptet_settings, installed, "addon:suspend")

    response = post(client, body, signature, REMOTE_ADDR="198.51.100.4")

    assert response.status_code == 200
    assert WebhookEvent.objects.get().verified_by == "key"


# --- Duplicates and concurrency (prior art pain point 5) -------------------------------------------


def test_a_duplicate_delivery_is_acknowledged_and_processed_once(
    client: Client,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    body, signature = signed(
        shoptet_settings, installed, "addon:suspend", at=after_install(installed, 3)
    )

    with django_capture_on_commit_callbacks(execute=True):
        first = post(client, body, signature)
    with django_capture_on_commit_callbacks(execute=True) as again:
        second = post(client, body, signature)

    assert first.json() == {"status": "accepted"}
    assert second.status_code == 200
    assert second.json() == {"status": "duplicate"}
    assert again == []  # nothing enqueued for the redelivery
    row = WebhookEvent.objects.get()
    assert row.status == WebhookEvent.Status.PROCESSED
    assert row.attempts == 1
    assert (
        EshopTransition.objects.filter(
            eshop=installed, to_status=Eshop.Status.SUSPENDED
        ).count()
        == 1
    )
    # A task delivered twice by the broker finds the row settled and does nothing.
    assert webhooks.process_event(row.pk) is None
    row.refresh_from_db()
    assert row.attempts == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_deliveries_store_and_process_each_event_once(
    installed: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    deliveries = [
        signed(shoptet_settings, installed, "order:create", f"2026{index:06d}")
        for index in range(50)
    ]
    # Each event twice, the copies next to each other so they race.
    sends = [delivery for delivery in deliveries for _ in range(2)]

    def deliver(delivery: tuple[bytes, str]) -> tuple[int, str]:
        try:
            response = post(Client(), *delivery)
            return response.status_code, response.json().get("status", "")
        finally:
            connections.close_all()  # this thread's connection

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(deliver, sends))

    assert [status for status, _ in answers] == [200] * 100
    outcomes = [outcome for _, outcome in answers]
    assert outcomes.count("accepted") == 50
    assert outcomes.count("duplicate") == 50
    rows = list(WebhookEvent.objects.all())
    assert len(rows) == 50
    assert {row.event_instance for row in rows} == {
        f"2026{index:06d}" for index in range(50)
    }
    # Processed after commit (eager Celery), never twice. That every row is processed at all is
    # not asserted here: see test_an_event_is_processed_while_another_for_the_same_eshop_is_stored.
    assert {row.attempts for row in rows} <= {0, 1}


def _inbox_row(eshop: Eshop, event: str, instance: str) -> WebhookEvent:
    return WebhookEvent.objects.create(
        eshop=eshop,
        event=event,
        event_instance=instance,
        event_created=timezone.now(),
        dedup_key=WebhookEvent.make_dedup_key(
            eshop_id=eshop.eshop_id,
            event=event,
            event_instance=instance,
            event_created="2026-01-08T15:13:39+0100",
        ),
        raw_body="{}",
        verified_by="key",
    )


@pytest.mark.skipif(
    not ON_POSTGRES, reason="row locks: SQLite locks the whole database instead"
)
@pytest.mark.parametrize("busy_with", ["another-event", "transition"])
@pytest.mark.django_db(transaction=True)
def test_an_event_is_processed_while_its_eshop_is_busy(
    installed: Eshop,
    register_handler: Callable[[str, Handler], None],
    busy_with: str,
) -> None:
    holding, release = threading.Event(), threading.Event()

    def slow(event: WebhookEvent) -> str:
        holding.set()
        release.wait(timeout=10)
        return "done"

    register_handler("order:paid", slow)
    other_row = _inbox_row(installed, "order:paid", "slow-one")
    row = _inbox_row(installed, UNHANDLED, "quick-one")

    def other_worker() -> None:
        try:
            if busy_with == "another-event":
                webhooks.process_event(other_row.pk)
            else:
                with transaction.atomic():
                    Eshop.objects.select_for_update().get(
                        pk=installed.pk
                    )  # as transition()
                    slow(other_row)
        finally:
            connections.close_all()

    other = threading.Thread(target=other_worker)
    other.start()
    try:
        assert holding.wait(timeout=10)
        webhooks.process_event(row.pk)
    finally:
        release.set()
        other.join()

    row.refresh_from_db()
    assert (row.status, row.attempts) == (WebhookEvent.Status.IGNORED, 1)


def wait_until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 30  # a bound on waiting, not a performance threshold
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("real_worker")
def test_a_delivery_is_processed_by_a_real_worker(
    shoptet_settings: ShoptetEmulator, settings: Settings
) -> None:
    settings.SHOPTET_WEBHOOK_URL = WEBHOOK_URL
    shop = shoptet_settings.add_eshop()
    install_addon(code=shoptet_settings.issue_install_code(shop.eshop_id))
    # The install committed and published post_install: the worker provisions the key.
    assert wait_until(
        lambda: Eshop.objects.filter(
            eshop_id=shop.eshop_id, setup_completed_at__isnull=False
        ).exists()
    )
    eshop = Eshop.objects.get(eshop_id=shop.eshop_id)
    body, signature = signed(shoptet_settings, eshop, "addon:suspend")

    response = post(Client(), body, signature)  # commits; on_commit publishes to Redis

    assert response.status_code == 200
    # Settled, not merely claimed: a loaded machine can be read between the claim and the record.
    unsettled = [WebhookEvent.Status.RECEIVED, WebhookEvent.Status.PROCESSING]
    assert wait_until(
        lambda: not WebhookEvent.objects.filter(status__in=unsettled).exists()
    )
    row = WebhookEvent.objects.get()
    assert (row.status, row.attempts) == (WebhookEvent.Status.PROCESSED, 1)
    assert Eshop.objects.get(pk=eshop.pk).status == Eshop.Status.SUSPENDED


# --- Answer fast, work later (prior art pain point 13) ---------------------------------------------


def test_the_receiver_answers_without_doing_the_handlers_work(
    client: Client,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    shoptet_settings.get_eshop(installed.eshop_id).url = "https://novy-obchod.cz/"
    body, signature = signed(shoptet_settings, installed, "eshop:projectDomain")
    requests_before = len(shoptet_settings.stats.requests)

    with django_capture_on_commit_callbacks() as callbacks:
        response = post(client, body, signature)

    assert response.status_code == 200
    assert len(shoptet_settings.stats.requests) == requests_before  # no API call inline
    row = WebhookEvent.objects.get()
    assert row.status == WebhookEvent.Status.RECEIVED
    assert Eshop.objects.get(pk=installed.pk).url != "https://novy-obchod.cz/"

    (enqueue,) = callbacks
    enqueue()  # what happens after commit: the Celery task (eager here)

    row.refresh_from_db()
    assert row.status == WebhookEvent.Status.PROCESSED
    assert Eshop.objects.get(pk=installed.pk).url == "https://novy-obchod.cz/"


# --- Processing: handlers, retries, dead letters, replay --------------------------------------------


def test_an_event_without_a_handler_is_ignored(
    client: Client,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    assert UNHANDLED not in webhooks.HANDLERS
    body, signature = signed(shoptet_settings, installed, UNHANDLED)

    with django_capture_on_commit_callbacks(execute=True):
        post(client, body, signature)

    row = WebhookEvent.objects.get()
    assert row.status == WebhookEvent.Status.IGNORED
    assert row.result == "no handler for this event"
    assert row.processed_at is not None
    assert row.attempts == 1


def test_a_registered_handler_runs_and_its_result_is_recorded(
    client: Client,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    register_handler: Callable[[str, Handler], None],
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    seen: list[tuple[str, str]] = []

    def on_order(event: WebhookEvent) -> str:
        seen.append((event.event_instance, event.eshop.name))
        return f"order {event.event_instance} noted"

    register_handler("order:create", on_order)
    body, signature = signed(shoptet_settings, installed, "order:create", "2026000042")

    with django_capture_on_commit_callbacks(execute=True):
        post(client, body, signature)

    assert seen == [("2026000042", installed.name)]
    row = WebhookEvent.objects.get()
    assert row.status == WebhookEvent.Status.PROCESSED
    assert row.result == "order 2026000042 noted"
    assert row.last_error == ""


def test_a_handler_cannot_be_registered_twice_for_one_event() -> None:
    with pytest.raises(ValueError, match="already registered"):
        webhooks.webhook_handler("addon:suspend")(lambda event: "")


def test_a_failing_handler_retries_with_backoff_then_becomes_a_dead_letter(
    client: Client,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    settings: Settings,
    register_handler: Callable[[str, Handler], None],
) -> None:
    settings.SHOPTET_WEBHOOK_MAX_ATTEMPTS = 3
    calls: list[int] = []

    def broken(event: WebhookEvent) -> str:
        calls.append(event.pk)
        raise RuntimeError("warehouse API down")

    register_handler("order:create", broken)
    body, signature = signed(shoptet_settings, installed, "order:create")
    post(
        client, body, signature
    )  # on_commit callbacks are not run: nothing processed yet
    row = WebhookEvent.objects.get()

    before = timezone.now()
    first_delay = webhooks.process_event(row.pk)
    after = timezone.now()

    row.refresh_from_db()
    assert first_delay == 30.0
    assert row.status == WebhookEvent.Status.FAILED
    assert row.attempts == 1
    assert row.last_error == "RuntimeError: warehouse API down"
    assert row.next_attempt_at is not None
    assert (
        before + dt.timedelta(seconds=30)
        <= row.next_attempt_at
        <= after + dt.timedelta(seconds=30)
    )
    assert row.processed_at is None

    # An early duplicate of the retry task changes nothing and burns no attempt.
    assert webhooks.process_event(row.pk) is None
    assert WebhookEvent.objects.get(pk=row.pk).attempts == 1

    def due_now() -> None:
        WebhookEvent.objects.filter(pk=row.pk).update(
            next_attempt_at=timezone.now() - dt.timedelta(seconds=1)
        )

    due_now()
    assert webhooks.process_event(row.pk) == 120.0
    due_now()
    assert webhooks.process_event(row.pk) is None  # third attempt: the last one

    row.refresh_from_db()
    assert row.status == WebhookEvent.Status.DEAD
    assert row.attempts == 3
    assert list(WebhookEvent.objects.dead()) == [row]
    assert webhooks.process_event(row.pk) is None  # a dead letter is not retried
    assert len(calls) == 3


def test_the_task_schedules_the_retry_of_a_failed_handler(
    client: Client,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    register_handler: Callable[[str, Handler], None],
) -> None:
    def broken(event: WebhookEvent) -> str:
        raise RuntimeError("boom")

    register_handler("order:create", broken)
    body, signature = signed(shoptet_settings, installed, "order:create")
    post(client, body, signature)
    row = WebhookEvent.objects.get()

    with mock.patch.object(tasks.process_webhook, "apply_async") as schedule:
        tasks.process_webhook.apply(args=(row.pk,))

    schedule.assert_called_once_with((row.pk,), countdown=30.0)
    row.refresh_from_db()
    assert (row.status, row.attempts) == (WebhookEvent.Status.FAILED, 1)


def test_replay_puts_a_dead_letter_back_and_it_is_processed(
    client: Client,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    settings: Settings,
    register_handler: Callable[[str, Handler], None],
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    settings.SHOPTET_WEBHOOK_MAX_ATTEMPTS = 1
    healthy = False

    def flaky(event: WebhookEvent) -> str:
        if not healthy:
            raise RuntimeError("downstream outage")
        return "synced"

    register_handler("order:create", flaky)
    for instance in ("dead-one", "fine-one"):
        body, signature = signed(shoptet_settings, installed, "order:create", instance)
        post(client, body, signature)
    dead = WebhookEvent.objects.get(event_instance="dead-one")
    fine = WebhookEvent.objects.get(event_instance="fine-one")
    webhooks.process_event(dead.pk)
    healthy = True
    webhooks.process_event(fine.pk)
    dead.refresh_from_db()
    assert dead.status == WebhookEvent.Status.DEAD

    with django_capture_on_commit_callbacks() as callbacks:
        replayed = webhooks.replay(WebhookEvent.objects.all())

    assert replayed == 1  # the processed row is left alone
    dead.refresh_from_db()
    assert (dead.status, dead.attempts, dead.next_attempt_at) == (
        WebhookEvent.Status.RECEIVED,
        0,
        None,
    )
    assert len(callbacks) == 1
    callbacks[0]()

    dead.refresh_from_db()
    assert dead.status == WebhookEvent.Status.PROCESSED
    assert dead.result == "synced"
    assert dead.last_error == ""
    assert dead.attempts == 1
    fine.refresh_from_db()
    assert (fine.status, fine.attempts) == (WebhookEvent.Status.PROCESSED, 1)


def test_redeliver_picks_up_events_whose_task_was_lost(
    client: Client, installed: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    assert UNHANDLED not in webhooks.HANDLERS
    for instance in ("lost", "recent", "failed-overdue", "failed-waiting"):
        body, signature = signed(shoptet_settings, installed, UNHANDLED, instance)
        post(
            client, body, signature
        )  # on_commit is never run: as if the broker were down
    now = timezone.now()
    WebhookEvent.objects.filter(event_instance="lost").update(
        received_at=now - dt.timedelta(minutes=3)
    )
    WebhookEvent.objects.filter(event_instance="failed-overdue").update(
        status=WebhookEvent.Status.FAILED,
        attempts=1,
        next_attempt_at=now - dt.timedelta(minutes=5),
    )
    WebhookEvent.objects.filter(event_instance="failed-waiting").update(
        status=WebhookEvent.Status.FAILED,
        attempts=1,
        next_attempt_at=now + dt.timedelta(minutes=5),
    )

    assert tasks.redeliver_webhooks() == 2

    statuses = dict(WebhookEvent.objects.values_list("event_instance", "status"))
    assert statuses == {
        "lost": WebhookEvent.Status.IGNORED,
        "failed-overdue": WebhookEvent.Status.IGNORED,
        "recent": WebhookEvent.Status.RECEIVED,
        "failed-waiting": WebhookEvent.Status.FAILED,
    }


# --- eshop:projectDomain -----------------------------------------------------------------------------


def test_a_project_domain_webhook_updates_the_tenant_url(
    client: Client,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    shop = shoptet_settings.get_eshop(installed.eshop_id)
    shop.url = "https://www.zahradnictvi-u-lipy.cz/"
    shop.name = "Zahradnictví U Lípy s.r.o."
    body, signature = signed(shoptet_settings, installed, "eshop:projectDomain")

    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, body, signature)

    assert response.status_code == 200
    stored = Eshop.objects.get(pk=installed.pk)
    assert stored.url == "https://www.zahradnictvi-u-lipy.cz/"
    assert stored.name == "Zahradnictví U Lípy s.r.o."
    row = WebhookEvent.objects.get()
    assert row.status == WebhookEvent.Status.PROCESSED
    assert row.result == "url https://www.zahradnictvi-u-lipy.cz/"


@pytest.mark.django_db(transaction=True)
def test_a_webhook_the_emulator_delivers_over_http_is_verified_and_processed(
    live_server: LiveServer, shoptet_settings: ShoptetEmulator, settings: Settings
) -> None:
    settings.SHOPTET_WEBHOOK_URL = f"{live_server.url}/webhooks/shoptet/"
    settings.SYNC_ENABLED = False  # only SHOPTET_WEBHOOK_EVENTS are registered
    shop = shoptet_settings.add_eshop()
    # Committed install: post_install runs after commit (eager) and registers our URL.
    install_addon(code=shoptet_settings.issue_install_code(shop.eshop_id))
    assert [hook.url for hook in shoptet_settings.webhooks_of(shop.eshop_id)] == [
        settings.SHOPTET_WEBHOOK_URL
    ]
    shop.url = "https://obchod-na-novem-miste.cz/"

    status = shoptet_settings.deliver_webhook(
        shop.eshop_id, "eshop:projectDomain", str(shop.eshop_id)
    )

    assert status == 200
    row = WebhookEvent.objects.get()
    assert row.verified_by == "key"
    assert row.status == WebhookEvent.Status.PROCESSED
    assert Eshop.objects.get(eshop_id=shop.eshop_id).url == shop.url


# --- Logs --------------------------------------------------------------------------------------------


def test_no_secret_appears_in_logs(
    caplog: pytest.LogCaptureFixture,
    client: Client,
    shoptet_settings: ShoptetEmulator,
    settings: Settings,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings.SHOPTET_WEBHOOK_URL = WEBHOOK_URL
    shop = shoptet_settings.add_eshop()
    eshop = install_addon(code=shoptet_settings.issue_install_code(shop.eshop_id))
    provisioning.complete_install(eshop)
    eshop.refresh_from_db()
    shop.url = "https://jinde.cz/"
    body, signature = signed(shoptet_settings, eshop, "eshop:projectDomain")
    lifecycle_body, lifecycle_signature = signed(
        shoptet_settings, eshop, "addon:suspend"
    )

    refused = post(
        client, body + b" ", signature
    )  # a real signature, refused for this body
    refused_lifecycle = post(client, lifecycle_body, lifecycle_signature + "0")
    with django_capture_on_commit_callbacks(execute=True):
        accepted = post(client, body, signature)
        duplicate = post(client, body, signature)

    assert (refused.status_code, refused_lifecycle.status_code) == (401, 401)
    assert (accepted.status_code, duplicate.status_code) == (200, 200)
    assert (
        Eshop.objects.get(pk=eshop.pk).url == "https://jinde.cz/"
    )  # processed, API used
    secrets = {
        "OAuth token": shoptet_settings.oauth_token_for(shop.eshop_id),
        "signature key": shoptet_settings.signature_key_for(shop.eshop_id),
        "signature header": signature,
        "lifecycle signature header": lifecycle_signature,
        **{
            f"API token {n}": token
            for n, token in enumerate(shop.api_tokens)  # every API token minted
        },
    }
    assert all(secrets.values())
    assert len(secrets) > 4
    logged = caplog.text + "".join(
        repr(record.args) + str(record.exc_info) for record in caplog.records
    )
    assert "webhook accepted" in logged  # the capture saw the receiver's own logging
    for name, secret in secrets.items():
        assert secret is not None
        assert secret not in logged, f"the {name} appears in the logs"


def test_a_handler_that_finds_the_addon_suspended_suspends_the_tenant_and_settles(
    client: Client, installed: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    tokens.clear_process_cache()
    tokens.forget_tokens(
        installed.eshop_id
    )  # the next API call must ask getAccessToken
    shoptet_settings.set_addon_state(installed.eshop_id, "suspended")
    body, signature = signed(shoptet_settings, installed, "eshop:projectDomain")
    post(client, body, signature)
    row = WebhookEvent.objects.get()

    assert webhooks.process_event(row.pk) is None

    row.refresh_from_db()
    assert row.status == WebhookEvent.Status.IGNORED
    assert row.result.startswith("skipped:")
    # The status change made inside the failed handler survived its rollback.
    assert Eshop.objects.get(pk=installed.pk).status == Eshop.Status.SUSPENDED


@pytest.mark.parametrize(
    ("addon_state", "expected"),
    [("active", Eshop.Status.ACTIVE), ("not_installed", Eshop.Status.UNINSTALLED)],
)
def test_an_unsigned_uninstall_is_applied_only_when_shoptet_confirms_it(
    client: Client,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    addon_state: str,
    expected: str,
) -> None:
    # The source network is shared by every partner's addon: it proves Shoptet sent it, not
    # which addon it is about. getAccessToken is asked before an irreversible move.
    shoptet_settings.set_addon_state(installed.eshop_id, addon_state)  # type: ignore[arg-type]
    created = after_install(installed, 5).strftime("%Y-%m-%dT%H:%M:%S%z")
    body = json.dumps(
        payload(installed.eshop_id, event="addon:uninstall", eventCreated=created)
    ).encode()
    response = post(client, body, REMOTE_ADDR=SHOPTET_NETWORK_ADDRESS)
    row = WebhookEvent.objects.get()

    webhooks.process_event(row.pk)

    assert response.status_code == 200
    assert row.verified_by == "network"
    assert Eshop.objects.get(pk=installed.pk).status == expected


# --- Hostile input: dates, offsets, nesting (issue #9) ----------------------------------------------


def _signed_body(eshop: Eshop, **fields: Any) -> tuple[bytes, str]:
    body = json.dumps(payload(eshop.eshop_id, **fields)).encode()
    assert eshop.webhook_signature_key is not None
    return body, sign(body, eshop.webhook_signature_key)


def _iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S%z")


@pytest.mark.parametrize(
    "created",
    [
        pytest.param("0001-01-01T00:00:00+0100", id="year-1-becomes-BC-in-UTC"),
        pytest.param("0001-01-01T00:00:00+0000", id="year-1"),
        pytest.param("1999-12-31T23:59:59+0000", id="before-2000"),
        pytest.param("2099-01-08T15:13:39+0100", id="year-2099"),
        pytest.param("9999-12-31T23:59:59-1400", id="year-9999"),
        pytest.param(
            lambda: _iso(timezone.now() + dt.timedelta(days=1, minutes=5)),
            id="more-than-a-day-ahead",
        ),
        pytest.param("2026-01-08T15:13:39+2359", id="offset-+2359"),
        pytest.param("2026-01-08T15:13:39-2359", id="offset--2359"),
        pytest.param("2026-01-08T15:13:39+1401", id="offset-+1401"),
        pytest.param("2026-01-08T15:13:39+01:00:30", id="offset-with-seconds"),
    ],
)
def test_an_event_created_outside_a_sane_window_is_refused_with_400(
    client: Client, installed: Eshop, created: str | Callable[[], str]
) -> None:
    value = created() if callable(created) else created
    body, signature = _signed_body(installed, eventCreated=value)

    response = post(client, body, signature)

    assert response.status_code == 400
    assert "eventCreated" in response.json()["error"]
    assert WebhookEvent.objects.count() == 0


@pytest.mark.parametrize(
    "created",
    [
        pytest.param("2000-01-01T00:00:00+0000", id="first-accepted-instant"),
        pytest.param("2026-01-08T15:13:39+1400", id="offset-+1400"),
        pytest.param("2026-01-08T15:13:39-1400", id="offset--1400"),
        pytest.param(
            lambda: _iso(timezone.now() + dt.timedelta(hours=23)), id="a-clock-ahead"
        ),
    ],
)
def test_an_event_created_inside_the_window_is_accepted(
    client: Client, installed: Eshop, created: str | Callable[[], str]
) -> None:
    value = created() if callable(created) else created
    body, signature = _signed_body(installed, eventCreated=value)

    response = post(client, body, signature)

    assert response.status_code == 200
    row = WebhookEvent.objects.get()
    assert row.event_created == dt.datetime.fromisoformat(value)


@pytest.mark.parametrize("signed_right", [True, False])
@pytest.mark.parametrize(
    "make_body",
    [
        pytest.param(
            lambda p: (
                json.dumps({**p, "x": "@"})
                .encode()
                .replace(b'"@"', b"[" * 20_000 + b"]" * 20_000)
            ),
            id="deep-inside-a-webhook",
        ),
        pytest.param(lambda p: b"[" * 20_000 + b"]" * 20_000, id="deep-array"),
        pytest.param(
            lambda p: b'{"a":' * 10_000 + b"1" + b"}" * 10_000, id="deep-object"
        ),
        pytest.param(lambda p: b"[" * 30_000, id="deep-and-unclosed"),
    ],
)
def test_deeply_nested_json_is_refused_with_400(
    installed: Eshop,
    make_body: Callable[[dict[str, Any]], bytes],
    signed_right: bool,
) -> None:
    body = make_body(payload(installed.eshop_id))
    assert installed.webhook_signature_key is not None
    signature = (
        sign(body, installed.webhook_signature_key) if signed_right else "0" * 40
    )

    response = post(Client(raise_request_exception=False), body, signature)

    assert response.status_code == 400
    assert WebhookEvent.objects.count() == 0


def test_the_receiver_parses_with_the_shared_depth_limited_parser_at_its_own_limit(
    installed: Eshop,
) -> None:
    # One level deeper than a webhook may nest, but far from what the API client allows.
    deep = "[" * webhooks.MAX_JSON_DEPTH + "]" * webhooks.MAX_JSON_DEPTH
    body = json.dumps({**payload(installed.eshop_id), "x": "@"}).encode()
    body = body.replace(b'"@"', deep.encode())
    assert installed.webhook_signature_key is not None

    with mock.patch.object(
        webhooks, "load_json", autospec=True, side_effect=load_json
    ) as parse:
        response = post(Client(), body, sign(body, installed.webhook_signature_key))

    assert response.status_code == 400
    assert response.json() == {"error": "body is nested too deeply"}
    assert parse.call_args.kwargs == {"max_depth": webhooks.MAX_JSON_DEPTH}
    assert (
        webhooks.MAX_JSON_DEPTH < MAX_JSON_DEPTH
    )  # the client's own limit would accept it
    assert WebhookEvent.objects.count() == 0


def _corrupt_event_created(row: WebhookEvent) -> None:
    """Store an eventCreated Python cannot read back, as an unvalidated year-1 delivery did."""
    value = (
        "0001-01-01 00:00:00+01" if ON_POSTGRES else "2026-13-45 10:00:00"
    )  # PostgreSQL: 1 BC
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "UPDATE shoptet_api_webhookevent SET event_created = %s WHERE id = %s",
            [value, row.pk],
        )
    with pytest.raises(Exception):  # noqa: B017, PT011 (psycopg and SQLite differ)
        WebhookEvent.objects.get(pk=row.pk)


def test_a_row_that_cannot_be_loaded_counts_its_attempts_and_becomes_a_dead_letter(
    installed: Eshop, settings: Settings
) -> None:
    settings.SHOPTET_WEBHOOK_MAX_ATTEMPTS = 3
    row = _inbox_row(installed, "order:create", "poison")
    _corrupt_event_created(row)
    delays = []

    for _ in range(3):
        delays.append(webhooks.process_event(row.pk))
        WebhookEvent.objects.filter(pk=row.pk).update(
            next_attempt_at=timezone.now() - dt.timedelta(seconds=1)
        )

    assert delays == [30.0, 120.0, None]
    status, attempts, error = WebhookEvent.objects.filter(pk=row.pk).values_list(
        "status", "attempts", "last_error"
    )[0]
    assert (status, attempts) == (WebhookEvent.Status.DEAD, 3)
    assert error  # what went wrong is kept for the operator
    assert webhooks.process_event(row.pk) is None  # settled: not claimed again
    assert tasks.redeliver_webhooks() == 0
    # The operator can delete it (the admin's delete loads nothing it cannot read).
    WebhookEvent.objects.filter(pk=row.pk).delete()


# --- Claim, run, record (issue #9) -------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_handler_runs_outside_any_transaction_with_its_row_claimed(
    installed: Eshop, register_handler: Callable[[str, Handler], None]
) -> None:
    seen: dict[str, Any] = {}

    def handler(event: WebhookEvent) -> str:
        seen["in_transaction"] = connections["default"].in_atomic_block
        claimed = WebhookEvent.objects.get(pk=event.pk)
        seen["claim"] = (claimed.status, claimed.attempts)
        assert claimed.claimed_until is not None
        seen["lease_left"] = (claimed.claimed_until - timezone.now()).total_seconds()
        if ON_POSTGRES:
            # Another connection can lock the row at once: nobody holds it while we work.
            def lock_elsewhere() -> None:
                try:
                    with transaction.atomic():
                        WebhookEvent.objects.select_for_update(nowait=True).get(
                            pk=event.pk
                        )
                    seen["lockable"] = True
                finally:
                    connections.close_all()

            other = threading.Thread(target=lock_elsewhere)
            other.start()
            other.join()
        return "done"

    register_handler("order:create", handler)
    row = _inbox_row(installed, "order:create", "claimed")

    assert webhooks.process_event(row.pk) is None

    assert seen["in_transaction"] is False
    assert seen["claim"] == (WebhookEvent.Status.PROCESSING, 1)
    assert seen["lease_left"] > 0
    if ON_POSTGRES:
        assert seen["lockable"] is True
    row.refresh_from_db()
    assert (row.status, row.attempts, row.claimed_until) == (
        WebhookEvent.Status.PROCESSED,
        1,
        None,
    )


def test_a_row_claimed_by_a_live_worker_is_skipped(
    installed: Eshop, register_handler: Callable[[str, Handler], None]
) -> None:
    calls: list[int] = []

    def handler(event: WebhookEvent) -> str:
        calls.append(event.pk)
        return "ran"

    register_handler("order:create", handler)
    row = _inbox_row(installed, "order:create", "busy")
    WebhookEvent.objects.filter(pk=row.pk).update(
        status=WebhookEvent.Status.PROCESSING,
        attempts=1,
        claimed_until=timezone.now() + dt.timedelta(minutes=5),
    )

    assert webhooks.process_event(row.pk) is None
    assert tasks.redeliver_webhooks() == 0

    assert calls == []
    assert WebhookEvent.objects.get(pk=row.pk).attempts == 1


def test_a_crashed_workers_claim_expires_and_the_sweep_runs_the_row_again(
    installed: Eshop, register_handler: Callable[[str, Handler], None]
) -> None:
    register_handler("order:create", lambda event: "done at last")
    row = _inbox_row(installed, "order:create", "orphan")
    WebhookEvent.objects.filter(pk=row.pk).update(
        status=WebhookEvent.Status.PROCESSING,
        attempts=1,
        claimed_until=timezone.now() - dt.timedelta(seconds=1),
    )

    assert tasks.redeliver_webhooks() == 1  # eager: processed right away

    row.refresh_from_db()
    assert (row.status, row.attempts, row.result) == (
        WebhookEvent.Status.PROCESSED,
        2,
        "done at last",
    )


def test_an_outcome_is_not_recorded_when_the_claim_was_taken_over(
    installed: Eshop, register_handler: Callable[[str, Handler], None]
) -> None:
    def slow(event: WebhookEvent) -> str:
        # Our lease ran out meanwhile and another worker claimed the row (attempt 2).
        WebhookEvent.objects.filter(pk=event.pk).update(
            attempts=2, claimed_until=timezone.now() + dt.timedelta(minutes=5)
        )
        raise RuntimeError("too late to matter")

    register_handler("order:create", slow)
    row = _inbox_row(installed, "order:create", "overtaken")

    assert webhooks.process_event(row.pk) is None

    row.refresh_from_db()
    assert (row.status, row.attempts, row.last_error) == (
        WebhookEvent.Status.PROCESSING,
        2,
        "",
    )


def test_a_retry_due_after_the_longest_countdown_is_left_to_the_sweep(
    installed: Eshop,
    settings: Settings,
    register_handler: Callable[[str, Handler], None],
) -> None:
    settings.SHOPTET_WEBHOOK_MAX_ATTEMPTS = 10

    def broken(event: WebhookEvent) -> str:
        raise RuntimeError("still down")

    register_handler("order:create", broken)
    row = _inbox_row(installed, "order:create", "patient")
    WebhookEvent.objects.filter(pk=row.pk).update(attempts=3)  # the next wait is 32 min

    with mock.patch.object(tasks.process_webhook, "apply_async") as schedule:
        tasks.process_webhook.apply(args=(row.pk,))

    schedule.assert_not_called()  # a 32-minute countdown would outlive the broker
    row.refresh_from_db()
    assert (row.status, row.attempts) == (WebhookEvent.Status.FAILED, 4)
    assert row.next_attempt_at is not None
    assert row.next_attempt_at > timezone.now() + dt.timedelta(minutes=31)


# --- Lifecycle ordering (issue #9) -------------------------------------------------------------------


def test_a_reinstall_resets_the_lifecycle_ordering(
    client: Client,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    # A suspend dated 2099 was applied before dates were checked: the mark is far ahead.
    Eshop.objects.filter(pk=installed.pk).update(
        lifecycle_event_at=dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
    )
    reinstalled = install_addon(
        code=shoptet_settings.issue_install_code(installed.eshop_id)
    )
    body, signature = signed(
        shoptet_settings,
        reinstalled,
        "addon:uninstall",
        at=after_install(reinstalled, 1),
    )

    with django_capture_on_commit_callbacks(execute=True):
        post(client, body, signature)

    eshop = Eshop.objects.get(pk=installed.pk)
    assert eshop.status == Eshop.Status.UNINSTALLED
    assert eshop.oauth_access_token is None  # the uninstall wiped the secrets


def test_the_lifecycle_ordering_never_moves_past_now_plus_the_allowed_skew(
    installed: Eshop,
) -> None:
    far = timezone.now() + dt.timedelta(days=365 * 70)

    installed.transition(
        Eshop.Status.SUSPENDED, reason="test", source="webhook", occurred_at=far
    )

    eshop = Eshop.objects.get(pk=installed.pk)
    assert eshop.lifecycle_event_at is not None
    assert eshop.lifecycle_event_at <= timezone.now() + webhooks.EVENT_CREATED_MAX_AHEAD
    # A genuine event dated after the clamped mark still applies.
    assert eshop.transition(
        Eshop.Status.ACTIVE,
        reason="test",
        source="webhook",
        occurred_at=timezone.now() + dt.timedelta(days=1, minutes=1),
    )


@pytest.mark.skipif(
    not ON_POSTGRES, reason="the year-1 poison row is PostgreSQL's (BC timestamps)"
)
def test_the_migration_turns_an_unreadable_row_into_a_readable_dead_letter(
    installed: Eshop,
) -> None:
    from django.apps import apps

    migration = importlib.import_module(
        "shoptet_api.migrations.0002_webhookevent_claim"
    )
    poison = _inbox_row(installed, "order:create", "poison")
    healthy = _inbox_row(installed, "order:create", "healthy")
    _corrupt_event_created(poison)

    migration.repair_unreadable_dates(apps, None)

    repaired = WebhookEvent.objects.get(pk=poison.pk)  # readable again
    assert repaired.status == WebhookEvent.Status.DEAD
    assert repaired.event_created == repaired.received_at
    assert "before 2000-01-01" in repaired.last_error
    assert (
        WebhookEvent.objects.get(pk=healthy.pk).status == WebhookEvent.Status.RECEIVED
    )
