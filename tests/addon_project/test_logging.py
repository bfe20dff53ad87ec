"""Log lines an operator can query: one line per event, request ids carried from web to task,
the tenant and Shoptet's requestId where known, nothing secret, nothing printed twice."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone
from django.utils.log import configure_logging
from pytest_django.fixtures import Settings

from addon_project import celery as celery_module
from addon_project import logging_context
from addon_project.background import in_background
from addon_project.celery import app as celery_app
from eshops.models import Eshop
from shoptet_api import webhooks
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import ShoptetForbidden, ShoptetServerError
from shoptet_api.models import WebhookEvent
from shoptet_emulator import ShoptetEmulator

ROOT = Path(__file__).resolve().parents[2]
RECEIVER = "/webhooks/shoptet/"
SIGNATURE_KEY = "test-signature-key-0123456789"
EVENT = "test:logged"
test_logger = logging.getLogger("tests.logging")

Lines = Callable[[], list[str]]


# --- Helpers -------------------------------------------------------------------------------------


def _logger_states() -> list[tuple[logging.Logger, dict[str, Any]]]:
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.root.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    return [
        (
            logger,
            {
                "handlers": list(logger.handlers),
                "filters": list(logger.filters),
                "level": logger.level,
                "propagate": logger.propagate,
                "disabled": logger.disabled,
            },
        )
        for logger in loggers
    ]


@pytest.fixture
def configure(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[str], Lines]]:
    """Configure logging the way Django does at start-up (its defaults, then settings.LOGGING with
    the given format) onto the captured stderr; returns a reader of the lines printed since.
    Everything is put back afterwards."""
    saved = _logger_states()

    def apply(log_format: str) -> Lines:
        variant: dict[str, Any] = copy.deepcopy(django_settings.LOGGING)
        variant["handlers"]["console"]["formatter"] = log_format
        configure_logging(django_settings.LOGGING_CONFIG, variant)
        capsys.readouterr()
        return lambda: [line for line in capsys.readouterr().err.splitlines() if line]

    yield apply
    for logger, state in saved:
        logger.handlers[:] = state["handlers"]
        logger.filters[:] = state["filters"]
        logger.setLevel(state["level"])
        logger.propagate = state["propagate"]
        logger.disabled = state["disabled"]


def parsed(lines: list[str]) -> list[dict[str, Any]]:
    """Every line is one JSON object (json.loads fails the test otherwise)."""
    return [json.loads(line) for line in lines]


def signed_delivery(eshop: Eshop, event: str = EVENT) -> tuple[bytes, str]:
    body = json.dumps(
        {
            "eshopId": eshop.eshop_id,
            "event": event,
            # After the install (an older lifecycle event is stale), inside the accepted window.
            "eventCreated": (timezone.now() + dt.timedelta(minutes=1)).strftime(
                "%Y-%m-%dT%H:%M:%S%z"
            ),
            "eventInstance": "2030000001",
        }
    ).encode()
    return body, hmac.new(SIGNATURE_KEY.encode(), body, hashlib.sha1).hexdigest()


def deliver(client: Client, body: bytes, signature: str) -> Any:
    return client.post(
        RECEIVER,
        data=body,
        content_type="application/json",
        HTTP_SHOPTET_WEBHOOK_SIGNATURE=signature,
    )


@pytest.fixture
def logging_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    """A webhook handler for EVENT that logs one line (from whichever process runs it)."""

    def handle(event: WebhookEvent) -> str:
        test_logger.info("handled webhook %s", event.pk)
        return "logged"

    monkeypatch.setitem(webhooks.HANDLERS, EVENT, handle)


def wait_until(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 30  # a bound on waiting, not a performance threshold
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


# --- X-Request-ID ----------------------------------------------------------------------------------


def test_every_answer_carries_a_fresh_request_id(client: Client) -> None:
    first, second = client.get("/healthz"), client.get("/healthz")

    ids = [first.headers["X-Request-ID"], second.headers["X-Request-ID"]]
    assert all(len(value) == 32 and int(value, 16) >= 0 for value in ids)
    assert ids[0] != ids[1]


def test_a_well_formed_incoming_request_id_is_kept(client: Client) -> None:
    response = client.get("/healthz", HTTP_X_REQUEST_ID="lb-7f3a.9c2e_41")

    assert response.headers["X-Request-ID"] == "lb-7f3a.9c2e_41"


@pytest.mark.parametrize(
    "incoming",
    [
        "short",
        "x" * 65,
        "abcdefgh\nFAKE log line",
        'abcdefgh" "level": "ERROR',
        "abcd efgh ijkl",
        "ěščřžýáíé-unicode",
    ],
)
def test_a_malformed_incoming_request_id_is_replaced(
    client: Client, incoming: str
) -> None:
    response = client.get("/healthz", HTTP_X_REQUEST_ID=incoming)

    replaced = response.headers["X-Request-ID"]
    assert replaced != incoming
    assert len(replaced) == 32
    assert int(replaced, 16) >= 0


def test_the_https_redirect_carries_a_request_id(
    client: Client, settings: Settings
) -> None:
    settings.SECURE_SSL_REDIRECT = True

    response = client.get("/admin/")

    assert response.status_code == 301
    assert len(response.headers["X-Request-ID"]) == 32


# --- Lines of a request ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_request_logs_json_lines_with_the_answers_request_id_and_eshop_id(
    client: Client, configure: Callable[[str], Lines]
) -> None:
    lines = configure("json")

    response = client.post(
        RECEIVER,
        data=json.dumps(
            {
                "eshopId": 424242,
                "event": "order:create",
                "eventCreated": "2030-01-08T15:13:39+0100",
                "eventInstance": "1",
            }
        ),
        content_type="application/json",
    )

    assert response.status_code == 404
    records = parsed(lines())
    assert [(r["logger"], r["level"]) for r in records] == [
        ("shoptet_api.webhooks", "WARNING"),
        ("django.request", "WARNING"),
    ]
    assert {r["request_id"] for r in records} == {response.headers["X-Request-ID"]}
    assert {r["eshop_id"] for r in records} == {424242}
    assert all("timestamp" in r and "task" not in r for r in records)
    # The context ends with the request: nothing later carries its id.
    test_logger.warning("after the request")
    assert "request_id" not in parsed(lines())[0]


@pytest.mark.parametrize("log_format", ["json", "plain"])
def test_a_refused_webhook_is_logged_once(
    client: Client,
    configure: Callable[[str], Lines],
    eshop_factory: Callable[..., Eshop],
    settings: Settings,
    log_format: str,
) -> None:
    # Django's own console handler on the `django` logger is active only in DEBUG: it printed
    # this line a second time, unformatted.
    settings.DEBUG = True
    eshop = eshop_factory(webhook_signature_key=SIGNATURE_KEY)
    body, _signature = signed_delivery(eshop)
    lines = configure(log_format)

    response = deliver(client, body, "0" * 40)

    assert response.status_code == 401
    printed = lines()
    assert sum("Unauthorized: /webhooks/shoptet/" in line for line in printed) == 1
    assert sum("webhook refused (401)" in line for line in printed) == 1
    if log_format == "json":
        assert len(parsed(printed)) == len(printed)
    else:
        request_id = response.headers["X-Request-ID"]
        assert all(
            line.endswith(f"[req={request_id} eshop={eshop.eshop_id}]")
            for line in printed
        )


def test_plain_lines_name_only_the_context_that_is_set(
    configure: Callable[[str], Lines],
) -> None:
    lines = configure("plain")

    test_logger.warning("no context")
    with logging_context.bound(request_id="req-0001", task="shoptet_api.x"):
        test_logger.warning("in a task")

    outside, inside = lines()
    assert outside.endswith("WARNING tests.logging no context")
    assert inside.endswith("in a task [req=req-0001 task=shoptet_api.x]")


def test_an_unknown_context_field_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="eshop"):
        logging_context.bind(eshop=1)


# --- Secrets ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_json_lines_carry_no_install_code(
    client: Client, configure: Callable[[str], Lines]
) -> None:
    code = (
        "SECRETCODE" + "x" * 600
    )  # too long: refused with 400, logged by django.request
    lines = configure("json")

    response = client.get("/oauth/install/", {"code": code})
    # runserver's access line, as django.server logs it (with its socket as `request`).
    logging.getLogger("django.server").info(
        '"%s" %s %s',
        f"GET /oauth/install/?code={code} HTTP/1.1",
        400,
        0,
        extra={"request": object(), "server_time": "now"},
    )
    try:
        raise ValueError(f"fetching /oauth/install/?code={code} failed")
    except ValueError:
        test_logger.exception("install crashed")

    assert response.status_code == 400
    printed = lines()
    records = parsed(printed)
    assert len(records) == 3
    assert not any("SECRETCODE" in line for line in printed)
    assert all("request" not in record for record in records)
    assert "code=[redacted]" in records[1]["message"]
    assert "code=[redacted]" in records[2]["exc_info"]


def test_celery_failure_lines_carry_the_traceback_once_and_redacted(
    configure: Callable[[str], Lines],
) -> None:
    lines = configure("json")

    try:
        raise ValueError("GET /oauth/install/?code=SECRETCODE")
    except ValueError:
        # What celery.app.trace logs for a failed task: the traceback again inside `data`.
        logging.getLogger("celery.app.trace").exception(
            "Task failed",
            extra={"data": {"args": "('/x?code=SECRETCODE',)", "traceback": "again"}},
        )

    (record,) = parsed(lines())
    assert list(record["data"]) == ["args"]
    assert record["data"]["args"].startswith("('/x?code=[redacted]")
    assert "code=[redacted]" in record["exc_info"]


def test_gunicorn_lines_go_through_our_handler_once(
    configure: Callable[[str], Lines],
) -> None:
    # Gunicorn gives its loggers a handler of their own and stops them propagating.
    access = logging.getLogger("gunicorn.access")
    access.addHandler(logging.StreamHandler(sys.stderr))
    access.propagate = False
    lines = configure("json")

    access.info('127.0.0.1 "GET /healthz HTTP/1.1" 200')

    (record,) = parsed(lines())
    assert record["logger"] == "gunicorn.access"


# --- Tasks -----------------------------------------------------------------------------------------


def test_the_publish_signal_carries_the_current_request_id() -> None:
    inside: dict[str, Any] = {}
    outside: dict[str, Any] = {}

    with logging_context.bound(request_id="req-from-web-1"):
        celery_module._publish_request_id(headers=inside)
    celery_module._publish_request_id(headers=outside)

    assert inside == {celery_module.REQUEST_ID_HEADER: "req-from-web-1"}
    assert outside == {}


def test_work_in_background_keeps_the_callers_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(celery_app.conf, "task_always_eager", False)
    seen: list[object] = []
    done = threading.Event()

    def work() -> None:
        seen.append(logging_context.current().get("request_id"))
        done.set()

    with logging_context.bound(request_id="req-background"):
        in_background(work)

    assert done.wait(10)
    assert seen == ["req-background"]


@pytest.mark.django_db(
    transaction=True
)  # on_commit runs inside the request, as in production
def test_a_task_queued_by_a_request_logs_its_request_id(
    client: Client,
    configure: Callable[[str], Lines],
    eshop_factory: Callable[..., Eshop],
    logging_handler: None,
) -> None:
    eshop = eshop_factory(webhook_signature_key=SIGNATURE_KEY)
    body, signature = signed_delivery(eshop)
    lines = configure("json")

    response = deliver(
        client, body, signature
    )  # eager: the task runs inline, at commit

    assert response.status_code == 200
    handled = [r for r in parsed(lines()) if r["message"].startswith("handled")]
    assert len(handled) == 1
    assert handled[0]["request_id"] == response.headers["X-Request-ID"]
    assert handled[0]["task"] == "shoptet_api.process_webhooks"
    assert handled[0]["eshop_id"] == eshop.eshop_id
    assert handled[0]["task_id"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("real_worker")
def test_a_real_worker_logs_the_request_id_of_the_delivery(
    configure: Callable[[str], Lines],
    eshop_factory: Callable[..., Eshop],
    logging_handler: None,
) -> None:
    eshop = eshop_factory(webhook_signature_key=SIGNATURE_KEY)
    body, signature = signed_delivery(eshop)
    lines = configure("json")  # after the worker started: it set up logging of its own

    # Published from a background thread to Redis, consumed by the worker thread.
    response = deliver(Client(), body, signature)

    assert response.status_code == 200
    assert wait_until(
        lambda: WebhookEvent.objects.filter(
            status=WebhookEvent.Status.PROCESSED
        ).exists()
    )
    handled = [r for r in parsed(lines()) if r["message"].startswith("handled")]
    assert len(handled) == 1
    assert handled[0]["request_id"] == response.headers["X-Request-ID"]
    assert handled[0]["task"] == "shoptet_api.process_webhooks"
    assert handled[0]["eshop_id"] == eshop.eshop_id


def test_a_task_queued_by_no_request_gets_an_id_of_its_own() -> None:
    seen: list[object] = []

    @celery_app.task(name="tests.logging.record_context")
    def record_context() -> None:
        seen.append(dict(logging_context.current()))

    record_context.delay()

    assert len(seen) == 1
    context: Any = seen[0]
    assert len(context["request_id"]) == 32
    assert context["task"] == "tests.logging.record_context"
    assert logging_context.current() == {}


def test_a_task_inherits_a_valid_carried_id_and_replaces_a_forged_one() -> None:
    seen: list[object] = []

    @celery_app.task(name="tests.logging.record_request_id")
    def record_request_id() -> None:
        seen.append(logging_context.current_request_id())

    for carried in ("req-carried-01", "forged\nline"):
        record_request_id.apply(headers={celery_module.REQUEST_ID_HEADER: carried})

    assert seen[0] == "req-carried-01"
    assert seen[1] != "forged\nline"
    assert len(str(seen[1])) == 32


def test_celery_logs_through_our_configuration(
    configure: Callable[[str], Lines],
) -> None:
    lines = configure("json")
    logging.getLogger().handlers.clear()

    celery_module._use_django_logging(loglevel=logging.WARNING)
    test_logger.info("below the worker's level")
    logging.getLogger("celery.app.trace").warning("from celery")

    root = logging.getLogger()
    assert root.level == logging.WARNING
    assert [type(f).__name__ for f in root.handlers[0].filters] == [
        "ContextFilter",
        "RedactQuerySecrets",
    ]
    assert [r["message"] for r in parsed(lines())] == ["from celery"]


# --- Shoptet's requestId -------------------------------------------------------------------------


@pytest.mark.django_db
def test_an_api_error_line_carries_shoptets_request_id_and_the_eshop(
    install: Callable[..., Eshop],
    shoptet_settings: ShoptetEmulator,
    configure: Callable[[str], Lines],
) -> None:
    eshop = install()
    shoptet_settings.fail_next(1, 500, path_prefix="/api/eshop")
    lines = configure("json")

    with ShoptetClient(eshop) as client, pytest.raises(ShoptetServerError) as caught:
        client.get("/api/eshop", max_attempts=1)

    assert caught.value.request_id
    gave_up = [r for r in parsed(lines()) if "giving up" in r["message"]]
    assert len(gave_up) == 1
    assert gave_up[0]["shoptet_request_id"] == caught.value.request_id
    assert gave_up[0]["eshop_id"] == eshop.eshop_id
    # The client's tenant labels its own lines only, not the caller's later ones.
    assert "eshop_id" not in logging_context.current()


@pytest.mark.django_db
def test_a_missing_rights_line_carries_shoptets_request_id(
    install: Callable[..., Eshop],
    shoptet_settings: ShoptetEmulator,
    configure: Callable[[str], Lines],
) -> None:
    eshop = install()
    shoptet_settings.deny_endpoint(eshop.eshop_id, "GET /api/orders")
    lines = configure("json")

    with ShoptetClient(eshop) as client, pytest.raises(ShoptetForbidden) as caught:
        client.get("/api/orders")

    no_rights = [r for r in parsed(lines()) if "no rights" in r["message"]]
    assert len(no_rights) == 1
    assert no_rights[0]["shoptet_request_id"] == caught.value.request_id


# --- Configuration -------------------------------------------------------------------------------


def _log_format(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LOG_", "DEBUG", "SECRET_KEY", "FIELD_"))
    }
    return subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "--no-imports",
            "-c",
            "from django.conf import settings; print(settings.LOG_FORMAT)",
        ],
        cwd=ROOT,
        env={
            **base,
            "SECRET_KEY": "x" * 50,
            "FIELD_ENCRYPTION_KEYS": "9t5cLEbJ1Zp1y0h6cuy3pKB5Qm9YQ3s6cU7j0t3yD1o=",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DEBUG": "true"}, "plain"),
        ({"DEBUG": "false"}, "json"),
        ({"DEBUG": "true", "LOG_FORMAT": "JSON"}, "json"),
        ({"DEBUG": "false", "LOG_FORMAT": "plain"}, "plain"),
        ({"DEBUG": "false", "LOG_FORMAT": ""}, "json"),
    ],
)
def test_log_format_defaults_to_plain_only_in_development(
    env: dict[str, str], expected: str
) -> None:
    result = _log_format(env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_an_unknown_log_format_is_refused_naming_the_variable() -> None:
    result = _log_format({"DEBUG": "true", "LOG_FORMAT": "xml"})

    assert result.returncode != 0
    assert "LOG_FORMAT must be 'json' or 'plain', not 'xml'" in result.stderr
