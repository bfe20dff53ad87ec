"""The emulator's HTTP face: a threaded stdlib server and ``ShoptetEmulator``.

One process plays three Shoptet hosts, told apart by path:

* the partner e-shop's ``/action/ApiOAuthServer/`` (install code exchange,
  ``getAccessToken``),
* ``api.myshoptet.com``'s ``/api/...`` (envelope, rights, limits, pagination),
* each customer e-shop's ``/action/OAuthServer/`` for settings-page admin login,
  served at ``/shop/<eshopId>/action/OAuthServer/`` (see ``data.customer_oauth_url``),
  and its ``/api-results/`` files (snapshot job results) at
  ``/shop/<eshopId>/api-results/...``: the e-shop's ``url`` is ``/shop/<eshopId>/``.

Rate limits and the cost model of a request are described on ``EmulatorState``.

``/_emulator/...`` is a small control API for scripts in another process. This
module deliberately imports nothing from Django.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import re
import secrets
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from shoptet_emulator import data, snapshots
from shoptet_emulator.catalog import Catalog
from shoptet_emulator.snapshots import Job, Resource
from shoptet_emulator.state import (
    EmulatedEshop,
    EmulatorState,
    FaultRule,
    InFlight,
    mask_token,
    shoptet_datetime,
)

logger = logging.getLogger("shoptet_emulator")

PARTNER_OAUTH_PATH = "/action/ApiOAuthServer/"
CONTROL_PREFIX = "/_emulator/"
MAX_BODY_BYTES = 10 * 1024 * 1024
JSON_TYPE = "application/json; charset=utf-8"
ORDERS_PER_PAGE = (50, 50)  # (default, max) for /api/orders, from the spec
PRODUCTS_PER_PAGE = (20, 1000)
# From each endpoint's itemsPerPage: orders "default 20, max 1000", products "default
# and max 1000".
ORDER_CHANGES_PER_PAGE = (20, 1000)
PRODUCT_CHANGES_PER_PAGE = (1000, 1000)
CHANGES_HISTORY_DAYS = 30
SNAPSHOT_FILTER_MAX = 50
# A job's result on the shop's own host: /shop/<eshopId>/api-results/<jobId>-<suffix>.json
RESULT_PATH = re.compile(r"/shop/(\d+)/api-results/([a-z0-9]+-[a-z0-9]+\.json)")
WEBHOOKS_PER_PAGE = (20, 500)
WEBHOOK_URL_MAX = 2000
# Registering both events of a pair answers 409 (OpenAPI "Webhooks").
EXCLUSIVE_EVENTS = (
    frozenset({"order:update", "order:cancel"}),
    frozenset({"customer:update", "customer:disableOrders"}),
    frozenset({"customer:update", "customer:enableOrders"}),
)

# Default bodies for fail_next() on the API, by status.
_API_FAULTS: dict[int, tuple[str, str]] = {
    400: ("invalid-request-data", "Request data are invalid."),
    401: ("expired-token", "Token is expired. Please ask for new one."),
    404: ("not-found", "Requested resource was not found."),
    # UNCERTAIN: the generic lock's errorCode; the Ruby gem names it URL-locked.
    423: (
        "url-locked",
        "This URL is being processed by another request. Please retry later.",
    ),
    429: (
        "too-many-requests",
        "Too many requests. Please retry after the Retry-After date.",
    ),
    500: ("unknown-error", "Unknown error occurred. Please try again later."),
    503: (
        "system-maintenance",
        "System maintenance is in progress. Please try again later.",
    ),
}
# Default bodies for fail_next() on the OAuth servers, by status.
_OAUTH_FAULTS: dict[int, str] = {
    400: "invalid_request",
    401: "Unauthorized",
    403: "addon_suspended",
    404: "addon_not_installed",
    429: "maximum_tokens_reached",
    503: "temporarily_unavailable",
}


def uuid7() -> str:
    """A time-ordered UUIDv7 string, the shape of Shoptet's ``metadata.requestId``."""
    millis = time.time_ns() // 1_000_000
    value = (millis & ((1 << 48) - 1)) << 80 | int.from_bytes(
        secrets.token_bytes(10), "big"
    )
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return str(uuid.UUID(int=value))


def http_date_in(seconds: float) -> str:
    """An HTTP date at least ``seconds`` (and 1 s) from now.

    HTTP dates have whole seconds; rounding the moment up keeps a client that
    waits until the date from coming back a fraction of a second too early.
    """
    moment = datetime.now(UTC) + timedelta(seconds=max(seconds, 1.0))
    if moment.microsecond:
        moment = moment.replace(microsecond=0) + timedelta(seconds=1)
    return format_datetime(moment, usegmt=True)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def bearer(self) -> str | None:
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return value.strip() or None


@dataclass
class Reply:
    status: int
    body: Any = None  # dict/list -> JSON; str/bytes -> sent as is
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = JSON_TYPE
    route: str | None = None  # "METHOD /template" of the API route that answered
    custom: bool = False  # a body a test asked for: sent verbatim, never validated
    trickle: float = 0.0  # > 0: send the whole answer one byte every this many seconds
    items: int = 0  # items returned (the bucket charges for them)
    stream: Iterator[bytes] | None = None  # a body sent as it is generated

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode()
        return json.dumps(self.body).encode()


def envelope(data_: Any) -> dict[str, Any]:
    return {"data": data_, "errors": None, "metadata": {"requestId": ""}}


def api_error(
    status: int,
    code: str,
    message: str,
    instance: str = "unknown",
    *,
    headers: dict[str, str] | None = None,
) -> Reply:
    body = {
        "data": None,
        "errors": [{"errorCode": code, "message": message, "instance": instance}],
        "metadata": {"requestId": ""},
    }
    return Reply(status, body, headers or {})


def oauth_error(status: int, error: str, description: str | None = None) -> Reply:
    body = (
        {"error": error}
        if description is None
        else {"error": error, "error_description": description}
    )
    return Reply(status, body, {"Cache-Control": "no-store"})


def _parse_fields(request: Request) -> dict[str, str] | None:
    """Token-endpoint fields from a JSON or form-urlencoded body; None if malformed.

    The official sample and SDK send JSON; the C# sample and the Ruby gem send a
    form. UNCERTAIN: the 2019 multipart variant is not supported here.
    """
    content_type = request.headers.get_content_type()
    raw = request.body.strip()
    if content_type == "application/json" or raw.startswith(b"{"):
        try:
            parsed = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(parsed, dict):
            return None
        fields: dict[str, str] = {}
        for key, value in parsed.items():
            if isinstance(value, bool) or not isinstance(value, str | int):
                return None
            fields[str(key)] = str(value)
        return fields
    if content_type in {"application/x-www-form-urlencoded", "text/plain"}:
        try:
            pairs = parse_qs(
                raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw)
            )
        except (UnicodeDecodeError, ValueError):
            return None
        return {key: values[0] for key, values in pairs.items()}
    return None


def _json_body(request: Request) -> Any:
    try:
        return json.loads(request.body)
    except ValueError:
        return None


Handler = Callable[[Request, EmulatedEshop, dict[str, str]], Reply]


@dataclass(frozen=True)
class _Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler

    @property
    def key(self) -> str:
        return f"{self.method} {self.template}"


class ShoptetEmulator(EmulatorState):
    """A real HTTP Shoptet (OAuth servers + API) on a loopback port.

    ``start()`` runs it in a daemon thread; use it as a context manager or call
    ``stop()``. All knobs and counters come from ``EmulatorState``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        client_id: str = "emulator-client-id",
        client_secret: str | None = "emulator-client-secret",  # noqa: S107 - emulator default
        redirect_uri: str | None = None,
        token_lifetime: int = 1800,
        install_code_lifetime: float = 300.0,
        validate_responses: bool = False,
    ) -> None:
        super().__init__(
            client_id=client_id,
            client_secret=client_secret or None,
            redirect_uri=redirect_uri or None,
            token_lifetime=token_lifetime,
            install_code_lifetime=install_code_lifetime,
        )
        self.host = host
        self.port = port
        # Check every API answer against the official schema (tests turn this on).
        self.validate_responses = validate_responses
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._routes = self._api_routes()
        self._timers: list[threading.Timer] = []
        self._results: tempfile.TemporaryDirectory[str] | None = None
        self._timers_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> ShoptetEmulator:
        """Bind and serve in a daemon thread; port 0 picks a free port."""
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name=f"shoptet-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        logger.info("Shoptet emulator listening on %s", self.base_url)
        return self

    def reset(self) -> None:
        """Forget everything, and cancel snapshot jobs still due to finish."""
        self._cancel_timers()
        super().reset()

    def reset_results(self) -> None:
        """Remove the directory of written snapshot results."""
        with self._timers_lock:
            results, self._results = self._results, None
        if results is not None:
            results.cleanup()

    def _cancel_timers(self) -> None:
        with self._timers_lock:
            timers, self._timers = self._timers, []
        for timer in timers:
            timer.cancel()

    def stop(self) -> None:
        """Stop serving, close every open connection, remove written results."""
        self._cancel_timers()
        self.reset_results()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ShoptetEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def oauth_url(self) -> str:
        """What ``SHOPTET_OAUTH_URL`` is set to (``token`` / ``getAccessToken`` hang off it)."""
        return self.base_url + PARTNER_OAUTH_PATH

    @property
    def api_url(self) -> str:
        """What ``SHOPTET_API_URL`` is set to; API paths are ``/api/...``."""
        return self.base_url

    def shop_url(self, eshop_id: int) -> str:
        """The e-shop's own web host in the emulator: ``http://127.0.0.1:<port>/shop/<id>/``.

        New e-shops get it as their ``url`` once the server is listening (install
        answer, ``/api/eshop``), and snapshot results are served under it, like the
        real ``https://<eshop-domain>/api-results/...``.
        """
        return f"{self.base_url}/shop/{eshop_id}/"

    def _default_shop_url(self, eshop_id: int) -> str:
        if self._server is None:
            return super()._default_shop_url(eshop_id)
        return self.shop_url(eshop_id)

    def customer_oauth_url(self, eshop_id: int) -> str:
        """The e-shop's own OAuthServer base, as ``/api/eshop`` ``urls[oauth]`` says."""
        return data.customer_oauth_url(self.base_url, eshop_id)

    @property
    def endpoints(self) -> list[str]:
        """The emulated API routes as ``"METHOD /template"`` (what ``deny_endpoint`` takes)."""
        return [route.key for route in self._routes]

    def install_url(self, code: str) -> str | None:
        """The addon's install callback URL with ``?code=`` (None without redirect_uri)."""
        if self.redirect_uri is None:
            return None
        separator = "&" if "?" in self.redirect_uri else "?"
        return f"{self.redirect_uri}{separator}{urlencode({'code': code})}"

    # -- webhooks out -----------------------------------------------------------

    def _notify(self, eshop_id: int, event: str, instance: str) -> None:
        """Deliver an event a knob caused, if registered and ``auto_webhooks`` is on."""
        if not self.auto_webhooks:
            return
        if not any(hook.event == event for hook in self.webhooks_of(eshop_id)):
            return
        self.deliver_webhook(eshop_id, event, instance)

    def webhook_request(
        self,
        eshop_id: int,
        event: str,
        event_instance: str,
        *,
        event_created: datetime | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers Shoptet would POST for one event.

        Signed with HMAC-SHA1 of the raw body (``Shoptet-Webhook-Signature``) when
        the e-shop has a signature key. UNCERTAIN whether ``addon:*`` system events
        are signed, and with which key; here they are treated like the rest.
        """
        payload = {
            "eshopId": eshop_id,
            "event": event,
            "eventCreated": shoptet_datetime(event_created),
            "eventInstance": event_instance,
        }
        body = json.dumps(payload, separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "Shoptet-Emulator"}
        key = self.signature_key_for(eshop_id)
        if key is not None:
            headers["Shoptet-Webhook-Signature"] = hmac.new(
                key.encode(), body, hashlib.sha1
            ).hexdigest()
        return body, headers

    def deliver_webhook(
        self,
        eshop_id: int,
        event: str,
        event_instance: str,
        *,
        url: str | None = None,
        timeout: float = 4.0,
    ) -> int | None:
        """POST one signed event to ``url`` or the registered webhook; its status.

        None means no answer (refused, timed out). Shoptet gives receivers 4 s.
        """
        if url is None:
            hooks = [hook for hook in self.webhooks_of(eshop_id) if hook.event == event]
            if not hooks:
                msg = f"e-shop {eshop_id} has no webhook registered for {event}"
                raise LookupError(msg)
            url = hooks[0].url
        body, headers = self.webhook_request(eshop_id, event, event_instance)
        self.record_webhook_delivery(eshop_id)
        status = _post(url, body, headers, timeout=timeout)
        self.record_webhook_result(eshop_id, event, event_instance, status)
        return status

    # -- request handling -------------------------------------------------------

    def handle(self, request: Request) -> Reply | None:
        """Answer one request; None means drop the connection without answering."""
        path = request.path
        if path.startswith(CONTROL_PREFIX):
            return self._control(request)
        fault = self.take_fault(path)
        is_api = path.startswith("/api/")
        token = request.headers.get("Shoptet-Access-Token") if is_api else None
        ticket = self.enter_request(token)
        try:
            if is_api:
                self.wait_for_gathering()
            delay = self.latency_for(path)
            if delay > 0:
                time.sleep(delay)  # outside the state lock: concurrent clients overlap
            if fault is not None and fault.kind == "drop":
                return None
            if fault is not None and fault.kind == "trickle":
                # The usual answer, only sent slowly (see _Handler._send).
                reply = self._answer(request, token, ticket, is_api=is_api)
                reply.trickle = fault.interval
            elif fault is not None:
                reply = self._fault_reply(fault, request, token=token, is_api=is_api)
            else:
                reply = self._answer(request, token, ticket, is_api=is_api)
        finally:
            self.leave_request(ticket)
        if is_api:
            self._finish_api(reply, request, ticket.eshop_id)
        return reply

    def _answer(
        self, request: Request, token: str | None, ticket: InFlight, *, is_api: bool
    ) -> Reply:
        if ticket.over_limit:
            # Shoptet enforces this in nginx (limit_conn per_token 3 -> 429). The real
            # body is probably nginx's HTML page; we answer an envelope, so clients must
            # not depend on the body of a 429 anyway.
            return api_error(
                429,
                "too-many-requests",
                "Too many concurrent connections for this access token.",
                headers={"Retry-After": http_date_in(1)},
            )
        if is_api:
            return self._api(request, token)
        result = RESULT_PATH.fullmatch(request.path)
        if result is not None and request.method == "GET":
            return self._job_result(int(result.group(1)), result.group(2))
        return self._oauth(request)

    def _finish_api(self, reply: Reply, request: Request, eshop_id: int | None) -> None:
        request_id = uuid7()
        reply.headers.setdefault("X-Request-ID", request_id)
        reply.headers.setdefault(
            "X-RateLimit-Bucket-Filling", self.bucket_filling(eshop_id)
        )
        body = reply.body
        if reply.custom:
            return
        if isinstance(body, dict) and isinstance(body.get("metadata"), dict):
            body["metadata"]["requestId"] = reply.headers["X-Request-ID"]
        if self.validate_responses and isinstance(body, dict):
            self._validate(reply, request)

    def _validate(self, reply: Reply, request: Request) -> None:
        from jsonschema import ValidationError

        from shoptet_emulator.schemas import validate_response

        template = reply.route.partition(" ")[2] if reply.route else request.path
        try:
            validate_response(
                reply.body, path=template, method=request.method, status=reply.status
            )
        except ValidationError as exc:
            logger.error("emulator answer breaks the official schema: %s", exc.message)
            reply.status = 500
            reply.body = {
                "data": None,
                "errors": [
                    {
                        "errorCode": "emulator-schema-violation",
                        "message": f"Emulator answer breaks the official schema: {exc.message}",
                        "instance": template,
                    }
                ],
                "metadata": {"requestId": reply.headers["X-Request-ID"]},
            }

    def _fault_reply(
        self, fault: FaultRule, request: Request, *, token: str | None, is_api: bool
    ) -> Reply:
        status = fault.status
        headers: dict[str, str] = {}
        retry_after = fault.retry_after
        if retry_after is None and status == 429:
            retry_after = 1.0
        if retry_after is not None:
            headers["Retry-After"] = http_date_in(retry_after)
        if fault.body is not None:
            return Reply(status, fault.body, headers, custom=True)
        if is_api:
            if status == 403:
                return _no_rights(token or "", headers)
            code, message = _API_FAULTS.get(status, _API_FAULTS[500])
            return api_error(status, code, message, headers=headers)
        error = _OAUTH_FAULTS.get(status, "server_error")
        if status == 401 and request.path.endswith("/token"):
            error = "invalid_client"
        reply = oauth_error(status, error)
        reply.headers.update(headers)
        return reply

    # -- partner ApiOAuthServer and customer OAuthServer -------------------------

    def _oauth(self, request: Request) -> Reply:
        path = request.path
        if path == PARTNER_OAUTH_PATH + "token" and request.method == "POST":
            return self._exchange_install_code(request)
        # UNCERTAIN: POST works too (adbros/shoptet-sdk uses it); the docs say GET.
        if path == PARTNER_OAUTH_PATH + "getAccessToken" and request.method in {
            "GET",
            "POST",
        }:
            return self._get_access_token(request)
        match = re.fullmatch(
            r"/shop/(\d+)/action/OAuthServer/(authorize|token|resource)", path
        )
        if match is not None:
            try:
                shop = self.get_eshop(int(match.group(1)))
            except KeyError:
                return oauth_error(404, "not_found", "Unknown e-shop.")
            action = match.group(2)
            if action == "authorize" and request.method == "GET":
                return self._authorize(request, shop)
            if action == "token" and request.method == "POST":
                return self._exchange_login_code(request, shop)
            if action == "resource" and request.method in {"GET", "POST"}:
                return self._basic_eshop(request, shop)
        return Reply(404, {"error": "not_found", "error_description": "Unknown URL."})

    def _check_client(self, fields: dict[str, str]) -> Reply | None:
        secret_ok = self.client_secret is None or hmac.compare_digest(
            fields.get("client_secret", "").encode(), self.client_secret.encode()
        )
        if fields.get("client_id") != self.client_id or not secret_ok:
            return oauth_error(401, "invalid_client", "Client authentication failed.")
        return None

    def _token_request_error(
        self, fields: dict[str, str] | None, scope: str
    ) -> Reply | None:
        if fields is None:
            return oauth_error(
                400, "invalid_request", "The body is not valid JSON or form data."
            )
        required = ["client_id", "code", "grant_type", "redirect_uri", "scope"]
        if self.client_secret is not None:
            required.append("client_secret")
        missing = [name for name in required if not fields.get(name)]
        if missing:
            return oauth_error(
                400, "invalid_request", f"Missing parameter: {', '.join(missing)}."
            )
        client_error = self._check_client(fields)
        if client_error is not None:
            return client_error
        if fields["grant_type"] != "authorization_code":
            return oauth_error(400, "unsupported_grant_type", "Use authorization_code.")
        if fields["scope"] != scope:
            return oauth_error(400, "invalid_scope", f"Scope must be {scope}.")
        return None

    def _exchange_install_code(self, request: Request) -> Reply:
        reply = self._install_token(request)
        if reply.status != 200:
            self.record_failed_exchange()
        return reply

    def _install_token(self, request: Request) -> Reply:
        # UNCERTAIN: exact error values; these are the RFC 6749 ones (reference §1.2).
        fields = _parse_fields(request)
        error = self._token_request_error(fields, "api")
        if error is not None or fields is None:
            return error or oauth_error(400, "invalid_request")
        # The code is spent as soon as an authenticated client presents it, even if a
        # later check fails: a second attempt always gets invalid_grant.
        eshop_id = self.consume_install_code(fields["code"])
        if eshop_id is None:
            return oauth_error(
                400, "invalid_grant", "The code is invalid, expired or already used."
            )
        if (
            self.redirect_uri is not None
            and fields["redirect_uri"] != self.redirect_uri
        ):
            return oauth_error(400, "invalid_grant", "redirect_uri does not match.")
        shop, token = self.complete_install(eshop_id)
        logger.info("install code exchanged for eshop %s", eshop_id)
        return Reply(
            200,
            {
                "access_token": token,
                "expires_in": None,
                "token_type": "Bearer",
                "scope": "api",
                "eshopId": shop.eshop_id,
                "eshopUrl": shop.url,
                "contactEmail": shop.contact_email,
                "trial": shop.trial,
            },
            {"Cache-Control": "no-store"},
        )

    def _get_access_token(self, request: Request) -> Reply:
        minted = self.mint_api_token(request.bearer())
        if minted.token is not None:
            logger.debug(
                "API token %s issued for eshop %s",
                mask_token(minted.token),
                minted.eshop_id,
            )
            return Reply(
                200,
                {"access_token": minted.token, "expires_in": minted.expires_in},
                {"Cache-Control": "no-store"},
            )
        # Statuses: 401 and 429 come from the official SDK's test fixtures; the statuses
        # of addon_suspended / addon_not_installed are UNCERTAIN (only the strings are known).
        status = {
            "Unauthorized": 401,
            "maximum_tokens_reached": 429,
            "addon_suspended": 403,
            "addon_not_installed": 404,
        }[minted.error or "Unauthorized"]
        return Reply(status, {"error": minted.error}, {"Cache-Control": "no-store"})

    def _authorize(self, request: Request, shop: EmulatedEshop) -> Reply:
        """Full admin-login flow: the admin is "logged in", so redirect straight back."""
        redirect_uri = request.param("redirect_uri")
        if request.param("client_id") != self.client_id:
            return oauth_error(400, "invalid_client", "Unknown client_id.")
        if (
            request.param("response_type") != "code"
            or request.param("scope") != "basic_eshop"
        ):
            return oauth_error(
                400, "invalid_request", "Use response_type=code&scope=basic_eshop."
            )
        if not redirect_uri:
            return oauth_error(400, "invalid_request", "Missing redirect_uri.")
        code = self.issue_login_code(shop.eshop_id, redirect_uri=redirect_uri)
        query = {"code": code}
        state = request.param("state")
        if state is not None:
            query["state"] = state
        separator = "&" if "?" in redirect_uri else "?"
        location = f"{redirect_uri}{separator}{urlencode(query)}"
        return Reply(302, b"", {"Location": location}, content_type="text/plain")

    def _exchange_login_code(self, request: Request, shop: EmulatedEshop) -> Reply:
        fields = _parse_fields(request)
        error = self._token_request_error(fields, "basic_eshop")
        if error is not None or fields is None:
            return error or oauth_error(400, "invalid_request")
        token = self.exchange_login_code(
            shop.eshop_id, fields["code"], fields["redirect_uri"]
        )
        if token is None:
            return oauth_error(
                400, "invalid_grant", "The code is invalid, expired or already used."
            )
        return Reply(
            200,
            {
                "access_token": token,
                "expires_in": 3600,
                "token_type": "Bearer",
                "scope": "basic_eshop",
            },
            {"Cache-Control": "no-store"},
        )

    def _basic_eshop(self, request: Request, shop: EmulatedEshop) -> Reply:
        method = request.param("method") or (_parse_fields(request) or {}).get("method")
        if method != "getBasicEshop":
            return oauth_error(400, "invalid_request", "Unknown method.")
        identity = self.basic_eshop(shop.eshop_id, request.bearer())
        if identity is None:
            # UNCERTAIN: the real error body; clients only check for success.
            return oauth_error(
                401, "invalid_token", "The access token is invalid or expired."
            )
        return Reply(200, {"success": True, "data": identity})

    # -- the API ----------------------------------------------------------------

    def _api_routes(self) -> list[_Route]:
        table: list[tuple[str, str, Handler]] = [
            ("GET", "/api/eshop", self._eshop_info),
            ("GET", "/api/orders", self._orders),
            ("GET", "/api/orders/changes", self._order_changes),
            ("GET", "/api/orders/snapshot", self._order_snapshot),
            ("GET", "/api/orders/{code}", self._order_detail),
            ("GET", "/api/products", self._products),
            ("GET", "/api/products/changes", self._product_changes),
            ("GET", "/api/products/snapshot", self._product_snapshot),
            ("GET", "/api/system/jobs/{jobId}", self._job_detail),
            ("GET", "/api/products/{guid}", self._product_detail),
            ("POST", "/api/webhooks/renew-signature-key", self._renew_signature_key),
            ("GET", "/api/webhooks", self._list_webhooks),
            ("POST", "/api/webhooks", self._register_webhooks),
            ("GET", "/api/webhooks/{id}", self._webhook_detail),
            ("PATCH", "/api/webhooks/{id}", self._update_webhook),
            ("DELETE", "/api/webhooks/{id}", self._delete_webhook),
        ]
        routes = []
        for method, template, handler in table:
            pattern = (
                re.escape(template)
                .replace(r"\{id\}", r"(?P<id>\d+)")
                .replace(r"\{jobId\}", r"(?P<jobId>[^/]+)")
                .replace(r"\{code\}", r"(?P<code>[^/]+)")
                .replace(r"\{guid\}", r"(?P<guid>[^/]+)")
            )
            routes.append(_Route(method, template, re.compile(pattern), handler))
        return routes

    def _api(self, request: Request, token: str | None) -> Reply:
        found: tuple[_Route, dict[str, str]] | None = None
        for route in self._routes:
            match = route.pattern.fullmatch(request.path)
            if match is not None and route.method == request.method:
                found = (route, match.groupdict())
                break
        auth = self.authenticate(token, found[0].key if found else None)
        if auth.error is not None or auth.eshop is None:
            reply = _auth_error(auth.error, token)
        elif found is None:
            # UNCERTAIN: the errorCode for an unknown endpoint (checked after the token).
            return api_error(
                404,
                "endpoint-not-found",
                f"Endpoint {request.method} {request.path} not found.",
            )
        else:
            route, params = found
            reply = self._charged(route, request, auth.eshop, params)
        reply.route = found[0].key if found else None
        return reply

    def _charged(
        self,
        route: _Route,
        request: Request,
        shop: EmulatedEshop,
        params: dict[str, str],
    ) -> Reply:
        """Run ``route`` if the e-shop's leaky bucket has room, then pour its cost in.

        The cost model (Shoptet does not publish one) is in ``EmulatorState``'s
        docstring: ``request_cost`` per request, one more drop per ``items_per_drop``
        items returned, ``snapshot_cost`` for starting a snapshot job.
        """
        bucket = self.admit(shop.eshop_id, route.key)
        if not bucket.admitted:
            # UNCERTAIN: the errorCode; the status and both headers are documented.
            return api_error(
                429,
                "too-many-requests",
                "Rate limit exceeded. Please retry after the Retry-After date.",
                headers={
                    "Retry-After": http_date_in(bucket.retry_after or 1.0),
                    "X-RateLimit-Bucket-Filling": bucket.filling,
                },
            )
        reply = route.handler(request, shop, params)
        reply.headers["X-RateLimit-Bucket-Filling"] = self.pour(
            shop.eshop_id, self.request_price(route.template, reply)
        )
        return reply

    def _eshop_info(
        self, request: Request, shop: EmulatedEshop, _: dict[str, str]
    ) -> Reply:
        include = {
            part.strip().lower() for part in (request.param("include") or "").split(",")
        }
        return Reply(
            200,
            envelope(data.eshop_info(shop, base_url=self.base_url, include=include)),
        )

    def _orders(
        self, request: Request, shop: EmulatedEshop, _: dict[str, str]
    ) -> Reply:
        catalog = shop.orders
        page = _paginate(request, self.live_total(catalog), ORDERS_PER_PAGE)
        if isinstance(page, Reply):
            return page
        first, count, paginator = page
        numbers = self.newest_numbers(catalog, first, count)
        orders = [data.order_list_item(o) for o in self.order_details(shop, numbers)]
        return _items_reply({"orders": orders, "paginator": paginator}, len(orders))

    def _products(
        self, request: Request, shop: EmulatedEshop, _: dict[str, str]
    ) -> Reply:
        catalog = shop.products
        page = _paginate(request, self.live_total(catalog), PRODUCTS_PER_PAGE)
        if isinstance(page, Reply):
            return page
        first, count, paginator = page
        numbers = self.newest_numbers(catalog, first, count)
        products = [
            data.product_list_item(p) for p in self.product_details(shop, numbers)
        ]
        return _items_reply(
            {"products": products, "paginator": paginator}, len(products)
        )

    def _order_detail(
        self, _r: Request, shop: EmulatedEshop, params: dict[str, str]
    ) -> Reply:
        code = params["code"]
        number = data.order_number(code)
        found = self.order_details(shop, [number]) if number is not None else []
        if not found:
            # UNCERTAIN: the spec documents only 200 here; the code follows
            # "<entity>-not-found" (reference §3.3).
            return api_error(
                404, "order-not-found", f'Order with code "{code}" not found.', code
            )
        return _items_reply({"order": found[0]}, 1)

    def _product_detail(
        self, _r: Request, shop: EmulatedEshop, params: dict[str, str]
    ) -> Reply:
        guid = params["guid"]
        number = data.product_number(shop.eshop_id, guid)
        found = self.product_details(shop, [number]) if number is not None else []
        if not found:
            return api_error(
                404,
                "product-not-found",
                f'Product with guid "{guid}" not found.',
                guid,
            )
        # The spec's product detail puts the product itself in ``data``.
        return _items_reply(found[0], 1)

    def _order_changes(
        self, request: Request, shop: EmulatedEshop, _: dict[str, str]
    ) -> Reply:
        return self._changes(
            request, shop.orders, "code", data.order_code, ORDER_CHANGES_PER_PAGE
        )

    def _product_changes(
        self, request: Request, shop: EmulatedEshop, _: dict[str, str]
    ) -> Reply:
        eshop_id = shop.eshop_id
        return self._changes(
            request,
            shop.products,
            "guid",
            lambda number: data.product_guid(eshop_id, number),
            PRODUCT_CHANGES_PER_PAGE,
        )

    def _changes(
        self,
        request: Request,
        catalog: Catalog,
        key: str,
        identify: Callable[[int], str],
        limits: tuple[int, int],
    ) -> Reply:
        """``/changes?from=``: each item's latest change since ``from``, oldest first.

        A ``from`` older than the 30 days of guaranteed history answers 400
        ``invalid-parameter``: Shoptet documents no error for it (it just drops old
        entries), and a silent gap would hide the client's bug.
        """
        raw = request.param("from")
        if not raw:
            return api_error(
                400,
                "missing-parameter",
                'Missing value for parameter "from".',
                "from",
            )
        since = _parse_from(raw)
        if since is None:
            # Typically a "+" sent unencoded: the query string turns it into a space.
            return api_error(
                400,
                "invalid-parameter",
                f'Invalid "from" parameter "{raw[:40]}": expected a date-time '
                "like 2018-01-01T01:01:01+0200 (encode the + as %2B).",
                "from",
            )
        if since < time.time() - CHANGES_HISTORY_DAYS * 86400:
            return api_error(
                400,
                "invalid-parameter",
                f'Invalid "from" parameter: the change history is kept for '
                f"{CHANGES_HISTORY_DAYS} days only.",
                "from",
            )
        change_type = request.param("changeType")
        if change_type not in {None, "edit", "delete"}:
            return api_error(
                400,
                "invalid-parameter",
                'Invalid "changeType" parameter: use edit or delete.',
                "changeType",
            )
        entries = self.change_log(catalog, since, change_type)
        page = _paginate(request, len(entries), limits)
        if isinstance(page, Reply):
            return page
        first, count, paginator = page
        changes = [
            {
                key: identify(number),
                "changeTime": data.prague_datetime(moment),
                "changeType": kind,
            }
            for moment, number, kind in entries[first : first + count]
        ]
        return _items_reply({"changes": changes, "paginator": paginator}, count)

    # -- snapshot jobs ------------------------------------------------------------

    def _order_snapshot(
        self, request: Request, shop: EmulatedEshop, _: dict[str, str]
    ) -> Reply:
        return self._snapshot(request, shop, "orders", "orderCodes", data.order_number)

    def _product_snapshot(
        self, request: Request, shop: EmulatedEshop, _: dict[str, str]
    ) -> Reply:
        eshop_id = shop.eshop_id
        return self._snapshot(
            request,
            shop,
            "products",
            "productGuids",
            lambda guid: data.product_number(eshop_id, guid),
        )

    def _snapshot(
        self,
        request: Request,
        shop: EmulatedEshop,
        resource: Resource,
        filter_name: str,
        number_of: Callable[[str], int | None],
    ) -> Reply:
        """Queue a snapshot job: 202 ``{"jobId"}``; 403 without ``job:finished``.

        Supports the ``orderCodes`` / ``productGuids`` filter (at most 50), and
        ``changeTimeFrom`` / ``creationTimeFrom``; other filters are ignored.
        """
        since: dict[str, float | None] = {}
        for name in ("changeTimeFrom", "creationTimeFrom"):
            value = request.param(name)
            since[name] = _parse_from(value) if value else None
            if value and since[name] is None:
                return api_error(
                    400,
                    "invalid-parameter",
                    f'Invalid "{name}" parameter: expected a date-time like '
                    "2017-12-12T22:08:01+0100 (encode the + as %2B).",
                    name,
                )
        raw = request.param(filter_name)
        only: list[int] | None = None
        if raw is not None:
            wanted = [part for part in raw.split(",") if part]
            if not wanted:
                return api_error(
                    400,
                    "missing-parameter",
                    f'Missing value for parameter "{filter_name}".',
                    filter_name,
                )
            if len(wanted) > SNAPSHOT_FILTER_MAX:
                return api_error(
                    400,
                    "invalid-parameter",
                    f'Invalid "{filter_name}" parameter. Expected max. '
                    f"{SNAPSHOT_FILTER_MAX} elements, but {len(wanted)} given.",
                    filter_name,
                )
            only = [n for n in map(number_of, wanted) if n is not None]
        if not any(h.event == "job:finished" for h in self.webhooks_of(shop.eshop_id)):
            # UNCERTAIN: the errorCode; the 403 and "job won't be queued" are documented.
            return api_error(
                403,
                "job-finished-webhook-not-registered",
                "Webhook job:finished must be registered to run asynchronous requests.",
                "webhook",
            )
        job = self.start_job(
            shop.eshop_id,
            resource,
            only,
            changed_since=since["changeTimeFrom"],
            created_since=since["creationTimeFrom"],
        )
        if job.outcome != "never":
            self._schedule(job.job_id, self.job_latency)
        return Reply(202, envelope({"jobId": job.job_id}))

    def _schedule(self, job_id: str, delay: float) -> None:
        # Never before the 202 is out: a job:finished must not overtake its jobId.
        timer = threading.Timer(max(delay, 0.05), self._run_job, (job_id,))
        timer.daemon = True
        with self._timers_lock:
            self._timers = [t for t in self._timers if t.is_alive()] + [timer]
        timer.start()

    def _run_job(self, job_id: str) -> None:
        """The job "runs": measure its result, mark it done, send ``job:finished``."""
        try:
            job = self.job(job_id)
            if job is None:
                return
            length = path = None
            if job.outcome == "complete" and self.result_content_length:
                path, length = snapshots.write(
                    job, self.get_eshop(job.eshop_id), self._results_dir()
                )
            finished = self.finish_job(job_id, length, path)
            if finished is not None:
                self._notify(finished.eshop_id, "job:finished", job_id)
        except Exception:
            logger.exception("emulated job %s failed to finish", job_id)

    def _results_dir(self) -> str:
        with self._timers_lock:
            if self._results is None:
                self._results = tempfile.TemporaryDirectory(prefix="shoptet-emulator-")
            return self._results.name

    def _job_detail(
        self, _r: Request, shop: EmulatedEshop, params: dict[str, str]
    ) -> Reply:
        job_id = params["jobId"]
        job, refused = self.poll_job(shop.eshop_id, job_id)
        if job is None:
            return api_error(
                404, "job-not-found", f'Job with ID "{job_id}" not found.', job_id
            )
        if refused:
            return api_error(
                403,
                "job-detail-try-counter-exceeded-limit",
                "You have exceeded the limit of job detail request for unprocessed "
                f'job "{job_id}". Please wait for job:finished event after job is '
                "completed!",
                job_id,
            )
        return Reply(200, envelope({"job": self._job_json(job, shop)}))

    def _job_json(self, job: Job, shop: EmulatedEshop) -> dict[str, Any]:
        done = job.completed
        result_url = None
        if job.status in {"completed", "expired"}:
            result_url = f"{shop.url.rstrip('/')}/api-results/{job.file_name}"
        return {
            "jobId": job.job_id,
            "endpoint": job.endpoint,
            "creationTime": data.prague_datetime(job.created),
            "completionTime": data.prague_datetime(done) if done else None,
            "duration": f"{done - job.created:.3f}" if done else None,
            "status": job.status,
            "resultUrl": result_url,
            "validUntil": (
                data.prague_datetime(job.valid_until) if job.valid_until else None
            ),
            "log": job.log,
            "language": None,
        }

    def _job_result(self, eshop_id: int, file_name: str) -> Reply:
        """A job's result file on the shop's own host, streamed (see snapshots.py)."""
        job = self.job_for_result(eshop_id, file_name)
        if job is None:
            return Reply(404, b"Not Found", content_type="text/plain")
        shop = self.get_eshop(eshop_id)
        headers = {}
        if job.content_length is not None:
            headers["Content-Length"] = str(job.content_length)
        reply = Reply(200, b"", headers, content_type="application/octet-stream")
        reply.stream = (
            snapshots.read(job.path) if job.path else snapshots.body(job, shop)
        )
        return reply

    def _renew_signature_key(
        self, _r: Request, shop: EmulatedEshop, _: dict[str, str]
    ) -> Reply:
        return Reply(
            200, envelope({"signatureKey": self.renew_signature_key(shop.eshop_id)})
        )

    def _list_webhooks(
        self, request: Request, shop: EmulatedEshop, _: dict[str, str]
    ) -> Reply:
        hooks = self.webhooks_of(shop.eshop_id)
        page = _paginate(request, len(hooks), WEBHOOKS_PER_PAGE)
        if isinstance(page, Reply):
            return page
        first, count, paginator = page
        items = [hook.as_json() for hook in hooks[first : first + count]]
        return Reply(200, envelope({"webhooks": items, "paginator": paginator}))

    def _register_webhooks(
        self, request: Request, shop: EmulatedEshop, _: dict[str, str]
    ) -> Reply:
        body = _json_body(request)
        items = body.get("data") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items or len(items) > 50:
            return api_error(
                422,
                "invalid-request-data",
                'Expected {"data": [1 to 50 webhooks]}.',
                "payload",
            )
        known = {hook.event for hook in self.webhooks_of(shop.eshop_id)}
        wanted: list[tuple[str, str, str | None]] = []
        for index, item in enumerate(items):
            problem = _webhook_problem(item, known | {event for event, _, _ in wanted})
            if problem is not None:
                status, code, message = problem
                return api_error(status, code, message, f"data[{index}]")
            wanted.append((item["event"], item["url"], item.get("sendPayload")))
        # UNCERTAIN: whether Shoptet registers the valid items of a partly bad request;
        # the emulator is all-or-nothing.
        created = []
        for event, url, send_payload in wanted:
            hook = self.add_webhook(shop.eshop_id, event, url, send_payload)
            if hook is not None:
                created.append(hook.as_json())
        return Reply(201, envelope({"webhooks": created}))

    def _webhook_detail(
        self, _r: Request, shop: EmulatedEshop, params: dict[str, str]
    ) -> Reply:
        webhook_id = int(params["id"])
        for hook in self.webhooks_of(shop.eshop_id):
            if hook.id == webhook_id:
                return Reply(200, envelope({"webhook": hook.as_json()}))
        return _webhook_not_found(params["id"])

    def _update_webhook(
        self, request: Request, shop: EmulatedEshop, params: dict[str, str]
    ) -> Reply:
        body = _json_body(request)
        changes = body.get("data") if isinstance(body, dict) else None
        if (
            not isinstance(changes, dict)
            or not changes
            or set(changes) - {"url", "sendPayload"}
            or ("url" in changes and _url_problem(changes["url"]))
            or changes.get("sendPayload", None) not in {None, "full"}
        ):
            return api_error(
                422,
                "invalid-request-data",
                'Expected {"data": {"url"?, "sendPayload"?}}.',
                "payload",
            )
        if not self.update_webhook(shop.eshop_id, int(params["id"]), changes):
            return _webhook_not_found(params["id"])
        return Reply(200, envelope(None))

    def _delete_webhook(
        self, _r: Request, shop: EmulatedEshop, params: dict[str, str]
    ) -> Reply:
        if not self.delete_webhook(shop.eshop_id, int(params["id"])):
            return _webhook_not_found(params["id"])
        return Reply(200, envelope(None))

    # -- control API for other processes ----------------------------------------

    def _control(self, request: Request) -> Reply:
        """``/_emulator/`` endpoints for scripts in another process (JSON in and out).

        * ``POST install`` ``{"eshopId"?: int, "callback"?: bool}`` -> ``{"code",
          "eshopId", "installUrl"}``; with ``callback`` the emulator also GETs the
          addon's install URL like Shoptet does and adds ``callbackStatus``.
        * ``GET stats`` -> the counters (no tokens in them).
        * ``POST reset`` -> forget everything.
        * ``POST orders`` ``{"eshopId", "count"}`` -> seed orders.
        * ``POST products`` ``{"eshopId", "count"}`` -> seed products.
        * ``POST login-code`` ``{"eshopId"}`` -> a settings-page ``#OAUTH_CODE#``.
        * ``POST webhook`` ``{"eshopId", "event", "eventInstance", "url"?}`` ->
          deliver one signed webhook; ``{"status"}`` is the receiver's answer.
        * ``GET open-settings?eshopId=&lang=&url=`` -> a redirect to the addon's settings
          URL with a fresh ``#OAUTH_CODE#``, as the Shoptet admin opens it (a link that
          keeps working, unlike a printed single-use code).
        """
        action = request.path.removeprefix(CONTROL_PREFIX).rstrip("/")
        if request.method == "GET" and action == "stats":
            return Reply(200, {**self.stats_snapshot(), "eshops": len(self.eshops)})
        if request.method == "GET" and action == "open-settings":
            return self._control_open_settings(request)
        if request.method != "POST":
            return Reply(404, {"error": "unknown control endpoint"})
        body = _json_body(request) if request.body.strip() else {}
        if not isinstance(body, dict):
            return Reply(400, {"error": "expected a JSON object"})
        eshop_id = body.get("eshopId")
        if eshop_id is not None and (
            isinstance(eshop_id, bool) or not isinstance(eshop_id, int)
        ):
            return Reply(400, {"error": "eshopId must be an integer"})
        if action == "reset":
            self.reset()
            return Reply(200, {})
        if action == "install":
            return self._control_install(
                eshop_id, callback=body.get("callback") is True
            )
        if eshop_id is None or not self.has_eshop(eshop_id):
            return Reply(400, {"error": "eshopId of a known e-shop is required"})
        if action == "orders":
            count = body.get("count", 0)
            if not isinstance(count, int) or count < 0:
                return Reply(400, {"error": "count must be a non-negative integer"})
            self.add_orders(eshop_id, count)
            return Reply(
                200,
                {"eshopId": eshop_id, "orders": self.get_eshop(eshop_id).order_count},
            )
        if action == "products":
            count = body.get("count", 0)
            if not isinstance(count, int) or count < 0:
                return Reply(400, {"error": "count must be a non-negative integer"})
            guids = self.add_products(eshop_id, count)
            return Reply(200, {"eshopId": eshop_id, "added": len(guids)})
        if action == "login-code":
            code = self.issue_login_code(eshop_id)
            return Reply(200, {"eshopId": eshop_id, "code": code})
        if action == "webhook":
            return self._control_webhook(eshop_id, body)
        return Reply(404, {"error": "unknown control endpoint"})

    def _control_open_settings(self, request: Request) -> Reply:
        raw_id, url = request.param("eshopId") or "", request.param("url") or ""
        if not raw_id.isdigit() or not self.has_eshop(int(raw_id)):
            return Reply(400, {"error": "eshopId of a known e-shop is required"})
        if not url.startswith(("http://", "https://")):
            return Reply(400, {"error": "url (the addon's settings page) is required"})
        query = {
            "eshopId": raw_id,
            "lang": request.param("lang") or "cs",
            "code": self.issue_login_code(int(raw_id)),
        }
        separator = "&" if "?" in url else "?"
        return Reply(
            302,
            b"",
            {"Location": f"{url}{separator}{urlencode(query)}"},
            content_type="text/plain",
        )

    def _control_install(self, eshop_id: int | None, *, callback: bool) -> Reply:
        shop = self.add_eshop(eshop_id)
        code = self.issue_install_code(shop.eshop_id)
        answer: dict[str, Any] = {
            "code": code,
            "eshopId": shop.eshop_id,
            "installUrl": self.install_url(code),
        }
        if callback:
            url = self.install_url(code)
            if url is None:
                return Reply(400, {"error": "the emulator has no redirect_uri to call"})
            # Shoptet calls the install URL with GET and gives it 5 seconds.
            answer["callbackStatus"] = _get(url, timeout=5.0)
        return Reply(200, answer)

    def _control_webhook(self, eshop_id: int, body: dict[str, Any]) -> Reply:
        event, instance, url = (
            body.get("event"),
            body.get("eventInstance"),
            body.get("url"),
        )
        if not isinstance(event, str) or not isinstance(instance, str):
            return Reply(
                400, {"error": "event and eventInstance (strings) are required"}
            )
        if url is not None and not isinstance(url, str):
            return Reply(400, {"error": "url must be a string"})
        try:
            status = self.deliver_webhook(eshop_id, event, instance, url=url)
        except LookupError as exc:
            return Reply(400, {"error": str(exc)})
        return Reply(200, {"eshopId": eshop_id, "event": event, "status": status})


def _auth_error(error: str | None, token: str | None) -> Reply:
    if error == "missing":
        message = "Missing access token. Please add `Shoptet-Access-Token` header to your request."
        return api_error(401, "missing-access-token", message)
    if error == "expired":
        return api_error(
            401, "expired-token", "Token is expired. Please ask for new one."
        )
    if error == "not-approved":
        # Seen in the Ruby gem; the status is UNCERTAIN.
        return api_error(401, "invalid-token", "Addon installation is not approved.")
    if error == "no-rights":
        return _no_rights(token or "", {})
    return api_error(401, "invalid-token", "Invalid access token")


def _no_rights(token: str, headers: dict[str, str]) -> Reply:
    message = f'Your access token "{mask_token(token)}" has no defined rights for this resource.'
    return api_error(
        403, "invalid-token-no-rights", message, "access-token", headers=headers
    )


def _webhook_not_found(webhook_id: str) -> Reply:
    return api_error(
        404,
        "webhook-not-found",
        f'Webhook with id "{webhook_id}" not found.',
        webhook_id,
    )


def _url_problem(url: Any) -> bool:
    # Shoptet also allows only ports 80, 8080, 443 and 8443; the emulator accepts any
    # port so it can deliver to test servers on random loopback ports.
    if not isinstance(url, str) or not url or len(url) > WEBHOOK_URL_MAX:
        return True
    parts = urlsplit(url)
    return parts.scheme not in {"http", "https"} or not parts.netloc


def _webhook_problem(item: Any, taken: set[str]) -> tuple[int, str, str] | None:
    from shoptet_emulator.schemas import webhook_events

    if not isinstance(item, dict) or set(item) - {"event", "url", "sendPayload"}:
        return (
            422,
            "invalid-request-data",
            "Each webhook needs event and url only (and sendPayload).",
        )
    event = item.get("event")
    if not isinstance(event, str) or event not in webhook_events():
        return 422, "invalid-request-data", f"Unknown webhook event {event!r}."
    if event.startswith("addon:"):
        # System webhooks are configured in the partner admin, not through the API.
        return (
            422,
            "invalid-request-data",
            f"Event {event} cannot be registered through the API.",
        )
    if _url_problem(item.get("url")):
        return (
            422,
            "invalid-request-data",
            "url must be an http(s) URL of at most 2000 characters.",
        )
    if item.get("sendPayload") not in {None, "full"}:
        return 422, "invalid-request-data", 'sendPayload must be "full" or null.'
    if event in taken:
        # UNCERTAIN: the errorCode; status and message are from the spec.
        return 422, "webhook-already-exists", "Webhook already exists for this event"
    for pair in EXCLUSIVE_EVENTS:
        if event in pair and (pair - {event}) & taken:
            other = next(iter(pair - {event}))
            # UNCERTAIN: the errorCode; the 409 is from the spec.
            return (
                409,
                "webhook-conflict",
                f"Event {event} cannot be registered together with {other}.",
            )
    return None


def _items_reply(body: dict[str, Any], items: int) -> Reply:
    reply = Reply(200, envelope(body))
    reply.items = items
    return reply


def _parse_from(raw: str) -> float | None:
    """``from`` of ``/changes`` as epoch seconds; ``+0200`` and ``+02:00`` both work."""
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


def _paginate(
    request: Request, total: int, limits: tuple[int, int]
) -> tuple[int, int, dict[str, int]] | Reply:
    """(first index, item count, paginator) for ``page``/``itemsPerPage``, or an error.

    ``itemsPerPage`` above the maximum is silently capped (OpenAPI "Paging").
    UNCERTAIN: the answer for a page past the end; the Ruby gem expects
    ``page-not-found`` with "max page is" in the message, the status is a guess.
    """
    default, maximum = limits
    values: dict[str, int] = {}
    for name, fallback in (("page", 1), ("itemsPerPage", default)):
        raw = request.param(name)
        try:
            values[name] = fallback if raw in {None, ""} else int(raw or "")
        except ValueError:
            values[name] = 0
        if values[name] < 1:
            return api_error(
                400, "invalid-parameter", f'Invalid "{name}" parameter.', name
            )
    page, per_page = values["page"], min(values["itemsPerPage"], maximum)
    page_count = -(-total // per_page)
    if page > max(page_count, 1):
        return api_error(
            404,
            "page-not-found",
            f'Page "{page}" not found, max page is {max(page_count, 1)}.',
            "page",
        )
    first = (page - 1) * per_page
    count = max(0, min(per_page, total - first))
    paginator = {
        "totalCount": total,
        "page": page,
        "pageCount": page_count,
        "itemsOnPage": count,
        "itemsPerPage": per_page,
    }
    return first, count, paginator


def _post(
    url: str, body: bytes, headers: dict[str, str], *, timeout: float
) -> int | None:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    return _open(request, timeout=timeout)


def _get(url: str, *, timeout: float) -> int | None:
    return _open(urllib.request.Request(url, method="GET"), timeout=timeout)  # noqa: S310


def _open(request: urllib.request.Request, *, timeout: float) -> int | None:
    if urlsplit(request.full_url).scheme not in {"http", "https"}:
        return None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: ShoptetEmulator) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        with self._connections_lock:
            self._connections.add(connection)
        return connection, address

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints tracebacks to stderr; a client hanging up is routine.
        # It calls this from its except block, so sys.exc_info() is the failure.
        logger.debug("connection from %s ended: %r", client_address, sys.exc_info()[1])

    def close_connections(self) -> None:
        """Unblock handler threads parked on idle keep-alive connections."""
        with self._connections_lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so requests.Session pools connections
    server_version = "ShoptetEmulator/1.0"
    disable_nagle_algorithm = True  # headers and body go out as separate writes
    timeout = 300  # idle keep-alive connections are closed after this many seconds
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        emulator = self.server.emulator
        parts = urlsplit(self.path)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            status = 400 if length < 0 else 413
            emulator.record_answer(self.command, parts.path, status)
            self._send(Reply(status, {"error": "bad Content-Length"}))
            return
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers=self.headers,
            body=body,
        )
        try:
            reply = emulator.handle(request)
        except Exception:
            logger.exception("emulator failed on %s %s", self.command, parts.path)
            reply = api_error(
                500, "emulator-error", "The emulator crashed; see its log."
            )
        if reply is None:
            logger.debug("%s %s -> dropped", self.command, parts.path)
            self.close_connection = True
            emulator.record_answer(self.command, parts.path, 0)
            return
        # Count before sending, so a client that reads the counters right after the
        # answer arrives always sees it.
        emulator.record_answer(self.command, parts.path, reply.status)
        self._send(reply)
        logger.debug("%s %s -> %s", self.command, parts.path, reply.status)

    def _send(self, reply: Reply) -> None:
        if reply.stream is not None and reply.trickle > 0:
            self._send_trickling(reply, b"", reply.stream)
            return
        if reply.stream is not None:
            self._send_stream(reply, reply.stream)
            return
        payload = reply.encoded()
        if reply.trickle > 0:
            self._send_trickling(reply, payload)
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True

    def _send_stream(self, reply: Reply, chunks: Iterator[bytes]) -> None:
        """Send a generated body: with its known Content-Length, else chunked."""
        sized = "Content-Length" in reply.headers
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            if not sized:
                self.send_header("Transfer-Encoding", "chunked")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            for chunk in chunks:
                if not chunk:
                    continue
                if sized:
                    self.wfile.write(chunk)
                else:
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            if not sized:
                self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True
            logger.debug("streamed answer ended by the client")

    def _send_trickling(
        self, reply: Reply, payload: bytes, stream: Iterator[bytes] | None = None
    ) -> None:
        """The whole answer, one byte at a time, until it is sent or the client hangs up.

        A streamed answer (a snapshot result) keeps its own Content-Length, if it has one;
        without one, the body ends when the connection closes."""
        self.close_connection = True
        head = [f"HTTP/1.1 {reply.status} {self.responses.get(reply.status, ('',))[0]}"]
        head.append(f"Content-Type: {reply.content_type}")
        if stream is None:
            head.append(f"Content-Length: {len(payload)}")
        head.extend(f"{name}: {value}" for name, value in reply.headers.items())
        pieces = itertools.chain(
            [("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload],
            stream or (),
        )
        first = True
        try:
            for piece in pieces:
                for index in range(len(piece)):
                    if not first:
                        time.sleep(reply.trickle)
                    first = False
                    self.wfile.write(piece[index : index + 1])
                    self.wfile.flush()
        except OSError:
            logger.debug("trickled answer ended by the client")

    def log_message(self, format: str, *args: Any) -> None:
        # The stdlib logs the full request line, query string included; stay quiet.
        return

    def log_error(self, format: str, *args: Any) -> None:
        logger.debug("emulator connection error: " + format, *args)  # noqa: G003
