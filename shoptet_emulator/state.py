"""The emulator's memory: e-shops, codes, tokens, fault knobs and counters.

Everything here is plain Python guarded by one lock, with no HTTP in it, so the
server module stays a thin translation layer and tests can reason about state
directly. Time for expiries and the leaky bucket is ``time.monotonic()``; only
answers that show a date (``Retry-After``, ``created``) use the wall clock.
"""

from __future__ import annotations

import contextlib
import copy
import math
import secrets
import string
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shoptet_emulator import data
from shoptet_emulator.catalog import Catalog, frozen
from shoptet_emulator.data import shoptet_datetime
from shoptet_emulator.snapshots import BadLine, Job, JobOutcome, Resource

__all__ = ["EmulatedEshop", "EmulatorState", "shoptet_datetime"]

AddonState = Literal["active", "suspended", "not_installed"]
FaultKind = Literal["fail", "drop", "lock", "trickle"]

FIRST_ESHOP_ID = 100001
INSTALL_CODE_LENGTH = 255  # "a 255 character long string" (OpenAPI "For Addons")
OAUTH_TOKEN_LENGTH = 255  # "about 255 chars" (official install sample)
REQUEST_LOG_LIMIT = 5000
# Expired API tokens are remembered this long so the API can still say
# "expired-token" (not "invalid-token") for them; then they are forgotten.
EXPIRED_TOKEN_MEMORY = 3600.0
LOGIN_CODE_LIFETIME = 300.0
LOGIN_TOKEN_LIFETIME = 3600

_TOKEN_ALPHABET = string.ascii_lowercase + string.digits


def random_token(length: int, alphabet: str = _TOKEN_ALPHABET) -> str:
    """Return a random string from ``secrets`` (never ``random``)."""
    return "".join(secrets.choice(alphabet) for _ in range(length))


def urlsafe_token(length: int) -> str:
    """Return a URL-safe random string of exactly ``length`` characters."""
    return secrets.token_urlsafe(length)[:length]


def mask_token(token: str) -> str:
    """Show a token the way Shoptet's 403 message does (``afd..123``), never whole."""
    if len(token) <= 8:
        return "..."
    return f"{token[:3]}..{token[-3:]}"


@dataclass
class Webhook:
    """One webhook registration of one installation."""

    id: int
    event: str
    url: str
    created: str
    updated: str | None = None
    send_payload: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.event,
            "url": self.url,
            "created": self.created,
            "updated": self.updated,
            "sendPayload": self.send_payload,
        }


@dataclass
class EmulatedEshop:
    """A customer e-shop with the addon (possibly) installed."""

    eshop_id: int
    url: str
    contact_email: str
    name: str
    trial: bool = False
    addon_state: AddonState = "not_installed"
    denied_endpoints: set[str] = field(default_factory=set)
    webhooks: dict[int, Webhook] = field(default_factory=dict)
    oauth_token: str | None = field(default=None, repr=False)
    signature_key: str | None = field(default=None, repr=False)
    # token -> monotonic expiry, for the API tokens minted from the current OAuth token
    api_tokens: dict[str, float] = field(default_factory=dict, repr=False)
    bucket_level: float = field(default=0.0, repr=False)
    bucket_time: float = field(default=0.0, repr=False)
    orders: Catalog = field(default_factory=Catalog, repr=False)
    products: Catalog = field(default_factory=Catalog, repr=False)

    @property
    def order_count(self) -> int:
        """Orders the shop has now (deleted ones excluded)."""
        return self.orders.live_count


@dataclass
class EmulatorStats:
    """What the emulator saw. Read it directly in tests, or ``snapshot()`` it."""

    token_exchanges: int = 0
    failed_exchanges: int = 0
    access_token_requests: Counter[int] = field(default_factory=Counter)
    api_tokens_issued: Counter[int] = field(default_factory=Counter)
    max_valid_tokens_seen: Counter[int] = field(default_factory=Counter)
    cap_rejections: Counter[int] = field(default_factory=Counter)
    api_requests: Counter[int] = field(default_factory=Counter)
    # Peak number of requests in flight at once, keyed by API token and by eshop id.
    # It counts requests the emulator refused for concurrency too, so a client that
    # overshoots the limit shows up here as a peak above it.
    peak_concurrency: Counter[str | int] = field(default_factory=Counter)
    concurrency_rejections: Counter[int] = field(default_factory=Counter)
    bucket_rejections: Counter[int] = field(default_factory=Counter)
    webhook_deliveries: Counter[int] = field(default_factory=Counter)
    # (eshop id, "METHOD /template") -> requests that reached the route's bucket check
    endpoint_requests: Counter[tuple[int, str]] = field(default_factory=Counter)
    drops: Counter[int] = field(default_factory=Counter)  # drops poured, per e-shop
    snapshot_jobs: Counter[int] = field(default_factory=Counter)
    job_polls: Counter[int] = field(default_factory=Counter)
    result_downloads: Counter[int] = field(default_factory=Counter)
    # (eshop id, event, eventInstance, receiver's status or None) per delivery
    webhook_log: list[tuple[int, str, str, int | None]] = field(default_factory=list)
    status_counts: Counter[tuple[str, int]] = field(default_factory=Counter)
    # (method, path, status); status 0 means the emulator dropped the connection.
    requests: list[tuple[str, str, int]] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        """Return a JSON-friendly copy (dict keys become strings)."""
        return {
            "tokenExchanges": self.token_exchanges,
            "failedExchanges": self.failed_exchanges,
            "accessTokenRequests": _keyed(self.access_token_requests),
            "apiTokensIssued": _keyed(self.api_tokens_issued),
            "maxValidTokensSeen": _keyed(self.max_valid_tokens_seen),
            "capRejections": _keyed(self.cap_rejections),
            "apiRequests": _keyed(self.api_requests),
            # Tokens are secrets: the JSON view keeps only the per-eshop peaks.
            "peakConcurrency": {
                str(key): value
                for key, value in self.peak_concurrency.items()
                if isinstance(key, int)
            },
            "concurrencyRejections": _keyed(self.concurrency_rejections),
            "bucketRejections": _keyed(self.bucket_rejections),
            "webhookDeliveries": _keyed(self.webhook_deliveries),
            "endpointRequests": {
                f"{eshop_id} {route}": count
                for (eshop_id, route), count in self.endpoint_requests.items()
            },
            "drops": {str(key): value for key, value in self.drops.items()},
            # Every 429 the API answered an e-shop: full bucket or a 4th connection.
            "tooManyRequests": _keyed(
                self.bucket_rejections + self.concurrency_rejections
            ),
            "snapshotJobs": _keyed(self.snapshot_jobs),
            "jobPolls": _keyed(self.job_polls),
            "resultDownloads": _keyed(self.result_downloads),
            "statusCounts": {
                f"{path} {status}": count
                for (path, status), count in self.status_counts.items()
            },
            "requestCount": sum(self.status_counts.values()),
        }


def _keyed(counter: Counter[int]) -> dict[str, int]:
    return {str(key): value for key, value in counter.items()}


@dataclass
class FaultRule:
    """One armed fault knob: the next ``remaining`` matching requests misbehave."""

    kind: FaultKind
    remaining: int
    path_prefix: str
    status: int = 500
    body: Any = None
    retry_after: float | None = None
    interval: float = 0.0  # "trickle": seconds between two bytes of the answer


@dataclass(frozen=True)
class InFlight:
    """A request being served; handed back to ``leave_request``."""

    token: str | None
    eshop_id: int | None
    over_limit: bool


@dataclass(frozen=True)
class BucketResult:
    admitted: bool
    filling: str
    retry_after: float | None = None


@dataclass(frozen=True)
class Minted:
    """Outcome of ``getAccessToken``: a token, or the OAuth error to answer."""

    eshop_id: int | None
    token: str | None = None
    expires_in: int = 0
    error: str | None = None


@dataclass(frozen=True)
class ApiAuth:
    """Outcome of checking ``Shoptet-Access-Token``."""

    eshop: EmulatedEshop | None
    error: Literal["missing", "invalid", "expired", "not-approved", "no-rights"] | None


@dataclass
class _LoginCode:
    eshop_id: int
    expires_at: float
    redirect_uri: str | None
    user_email: str
    user_name: str


@dataclass
class _LoginToken:
    eshop_id: int
    expires_at: float
    user_email: str
    user_name: str


class EmulatorState:
    """All mutable emulator state and knobs, thread-safe behind one lock.

    Knobs that are plain numbers (``token_lifetime``, ``max_valid_tokens``,
    ``bucket_capacity``, ...) are ordinary attributes: a single assignment is
    atomic, and every reader takes them under the lock.

    Rate limits, as Shoptet enforces them (reference §3.4):

    * at most ``max_connections_per_token`` (3) requests in flight per API token;
      the 4th gets 429 at once (nginx ``limit_conn``);
    * a leaky bucket per e-shop of ``bucket_capacity`` (200) drops draining at
      ``bucket_leak_per_second`` (10). A request is admitted while the bucket is
      not full and priced *after* it ran, so it may overfill the bucket; a request
      that finds it full gets 429 with ``Retry-After`` (an HTTP date) and costs
      nothing. Every API answer carries ``X-RateLimit-Bucket-Filling: n/200``.

    Shoptet does not publish what a request costs. The emulator's model:
    ``request_cost`` (1) drop per request, plus one drop for every full
    ``items_per_drop`` (50) items it returned (a page of 50 orders costs 2, of
    1,000 changes 21; a detail costs 1), and ``snapshot_cost`` (5) for starting a
    snapshot job. Downloading a job's result from the shop's own host is free:
    it is not an API call. ``EmulatorStats`` counts requests per endpoint, drops
    poured, 429s, snapshot jobs started and job polls per e-shop.
    """

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str | None,
        redirect_uri: str | None,
        token_lifetime: int = 1800,
        install_code_lifetime: float = 300.0,
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self._defaults = {
            "token_lifetime": token_lifetime,
            "install_code_lifetime": install_code_lifetime,
        }
        self._lock = threading.Lock()
        self._clear()

    # -- lifecycle --------------------------------------------------------------

    def _clear(self) -> None:
        self.token_lifetime: int = int(self._defaults["token_lifetime"])
        self.install_code_lifetime: float = float(
            self._defaults["install_code_lifetime"]
        )
        self.max_valid_tokens = 5
        self.bucket_capacity = 200
        self.bucket_leak_per_second = 10.0
        # The cost model (see the class docstring).
        self.request_cost = 1
        self.items_per_drop = 50
        self.snapshot_cost = 5
        self.max_connections_per_token = 3
        # Knobs that change orders/products deliver order:* webhooks when registered.
        self.auto_webhooks = True
        # How /changes shows a creation: "edit" as documented, or "add" (the schema
        # lists it too; clients must treat both as upserts).
        self.creation_change_type: Literal["add", "edit"] = "edit"
        # Snapshot jobs (read when a job starts; see snapshots.py).
        self.job_latency = 0.0  # seconds until a job finishes
        self.job_outcome: JobOutcome = "complete"  # or "fail", or "never" (no webhook)
        self.job_timeout = 3 * 3600.0  # an unfinished job is marked failed after this
        self.max_job_polls = 10  # the 11th detail request of an unfinished job is 403
        self.result_gzip = True
        self.result_bad_line: BadLine | None = None
        self.result_bad_line_at = 1  # 0-based line the bad line replaces
        self.result_validity = 24 * 3600.0
        self.result_content_length = True  # False: chunked, no Content-Length
        self._jobs: dict[str, Job] = {}
        self.stats = EmulatorStats()
        self._eshops: dict[int, EmulatedEshop] = {}
        self._next_eshop_id = FIRST_ESHOP_ID
        self._next_webhook_id = 1
        self._install_codes: dict[str, tuple[int, float]] = {}
        self._oauth_tokens: dict[str, int] = {}
        # every API token ever minted -> (eshop id, monotonic expiry); see EXPIRED_TOKEN_MEMORY
        self._api_tokens: dict[str, tuple[int, float]] = {}
        self._last_sweep = time.monotonic()
        self._login_codes: dict[str, _LoginCode] = {}
        self._login_tokens: dict[str, _LoginToken] = {}
        self._faults: list[FaultRule] = []
        self._latency: dict[str, float] = {}
        self._inflight: Counter[str | int] = Counter()
        self._gathering: threading.Barrier | None = None

    def reset(self) -> None:
        """Forget every e-shop, code, token, knob and counter."""
        with self._lock:
            self._drop_results()
            self._clear()

    # -- knobs ------------------------------------------------------------------

    @property
    def latency(self) -> float:
        """Seconds added to every answer (the ``/`` prefix of ``set_latency``)."""
        with self._lock:
            return self._latency.get("/", 0.0)

    @latency.setter
    def latency(self, seconds: float) -> None:
        self.set_latency(seconds)

    def set_latency(self, seconds: float, path_prefix: str = "/") -> None:
        """Delay answers under ``path_prefix``; the longest matching prefix wins."""
        with self._lock:
            if seconds > 0:
                self._latency[path_prefix] = float(seconds)
            else:
                self._latency.pop(path_prefix, None)

    def latency_for(self, path: str) -> float:
        with self._lock:
            matches = [prefix for prefix in self._latency if path.startswith(prefix)]
            return self._latency[max(matches, key=len)] if matches else 0.0

    def gather_api_requests(self, count: int, timeout: float = 5.0) -> None:
        """Hold the next ``count`` API requests until all of them are in flight.

        Tests of the connection limit use it so their requests overlap on a loaded
        machine, where a fixed latency cannot promise that.
        """
        with self._lock:
            self._gathering = threading.Barrier(
                count, action=self._end_gathering, timeout=timeout
            )

    def _end_gathering(self) -> None:
        with self._lock:
            self._gathering = None

    def wait_for_gathering(self) -> None:
        with self._lock:
            barrier = self._gathering
        if barrier is None:
            return
        try:
            barrier.wait()
        except threading.BrokenBarrierError:  # fewer came: answer them anyway
            self._end_gathering()

    def fail_next(
        self,
        count: int,
        status: int = 500,
        body: Any = None,
        path_prefix: str = "/",
        *,
        retry_after: float | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with ``status``.

        ``body`` may be a dict (sent as JSON), a str or bytes (sent as is), or
        None for a realistic default: a Shoptet envelope on ``/api/``, an OAuth
        error on the OAuth servers. ``retry_after`` (seconds) adds a
        ``Retry-After`` date; 429 answers get one second by default.
        """
        self._arm(FaultRule("fail", count, path_prefix, status, body, retry_after))

    def drop_next(self, count: int, path_prefix: str = "/") -> None:
        """Close the socket without answering the next ``count`` matching requests."""
        self._arm(FaultRule("drop", count, path_prefix))

    def trickle_next(self, count: int, interval: float, path_prefix: str = "/") -> None:
        """Send the next ``count`` matching answers (status line, headers and body) one byte
        every ``interval`` seconds, as a slow or hostile server would: each read gets a byte in
        time, so only a wall-clock deadline on the client side ends the call."""
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._arm(FaultRule("trickle", count, path_prefix, interval=float(interval)))

    def lock_next(self, count: int, path_prefix: str = "/api/") -> None:
        """Answer the next ``count`` matching API requests with 423 Locked."""
        self._arm(FaultRule("lock", count, path_prefix, status=423))

    def _arm(self, rule: FaultRule) -> None:
        if rule.remaining <= 0:
            return
        with self._lock:
            self._faults.append(rule)

    def take_fault(self, path: str) -> FaultRule | None:
        """Consume one armed fault matching ``path`` (oldest first)."""
        with self._lock:
            for rule in self._faults:
                if path.startswith(rule.path_prefix):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self._faults.remove(rule)
                    return copy.copy(rule)
        return None

    # -- e-shops ----------------------------------------------------------------

    def add_eshop(
        self,
        eshop_id: int | None = None,
        url: str | None = None,
        contact_email: str | None = None,
        *,
        name: str | None = None,
        trial: bool = False,
    ) -> EmulatedEshop:
        """Create (or return the existing) e-shop; ids count up from 100001."""
        with self._lock:
            return self._add_eshop(eshop_id, url, contact_email, name=name, trial=trial)

    def _add_eshop(
        self,
        eshop_id: int | None,
        url: str | None,
        contact_email: str | None,
        *,
        name: str | None = None,
        trial: bool = False,
    ) -> EmulatedEshop:
        if eshop_id is None:
            while self._next_eshop_id in self._eshops:
                self._next_eshop_id += 1
            eshop_id = self._next_eshop_id
            self._next_eshop_id += 1
        existing = self._eshops.get(eshop_id)
        if existing is not None:
            return existing
        shop = EmulatedEshop(
            eshop_id=eshop_id,
            url=url or self._default_shop_url(eshop_id),
            contact_email=contact_email or f"owner-{eshop_id}@example.com",
            name=name or f"Emulated shop {eshop_id}",
            trial=trial,
        )
        self._eshops[eshop_id] = shop
        return shop

    def _default_shop_url(self, eshop_id: int) -> str:
        """Where an e-shop lives when a test gives no URL (the server serves it)."""
        return f"https://shop-{eshop_id}.myshoptet.com/"

    def get_eshop(self, eshop_id: int) -> EmulatedEshop:
        """Return the e-shop; ``KeyError`` when the emulator does not know it."""
        with self._lock:
            return self._eshops[eshop_id]

    def has_eshop(self, eshop_id: int) -> bool:
        with self._lock:
            return eshop_id in self._eshops

    @property
    def eshops(self) -> list[EmulatedEshop]:
        with self._lock:
            return list(self._eshops.values())

    def set_addon_state(self, eshop_id: int, state: AddonState) -> None:
        """Suspend, uninstall or reactivate the addon on one e-shop.

        Uninstalling revokes the e-shop's API tokens (they answer ``invalid-token``);
        suspending keeps them but the API refuses them until reactivated.
        """
        with self._lock:
            shop = self._eshops[eshop_id]
            shop.addon_state = state
            if state == "not_installed":
                self._drop_api_tokens(shop)

    def deny_endpoint(self, eshop_id: int, endpoint: str) -> None:
        """Make ``"GET /api/orders"`` (a route as ``METHOD /template``) answer 403."""
        with self._lock:
            self._eshops[eshop_id].denied_endpoints.add(_route_key(endpoint))

    def allow_endpoint(self, eshop_id: int, endpoint: str) -> None:
        with self._lock:
            self._eshops[eshop_id].denied_endpoints.discard(_route_key(endpoint))

    # -- orders, products and their changes (sync) ---------------------------------

    def add_orders(
        self,
        eshop_id: int,
        count: int,
        *,
        history_days: float = 0.0,
        notify: bool = False,
    ) -> list[str]:
        """Seed ``count`` more orders; their codes, oldest first.

        Orders are built on demand from their number (``catalog.py``), so a shop
        with 100,000 orders costs a few hundred bytes until a knob edits one. They
        are created now, or spread evenly over the last ``history_days`` (older
        than 30 days: out of ``/changes``). ``notify`` delivers ``order:create``
        for each when the shop registered it. A negative ``count`` deletes the
        newest orders instead (their codes are returned).
        """
        if count < 0:
            with self._lock:
                shop = self._eshops[eshop_id]
                doomed = [
                    data.order_code(shop.orders.newest(offset))
                    for offset in range(min(-count, shop.orders.live_count))
                ]
            for code in doomed:
                self.delete_order(eshop_id, code)
            return doomed
        with self._lock:
            shop = self._eshops[eshop_id]
            numbers = (
                shop.orders.add(count, time.time(), history_days * 86400)
                if count
                else range(0)
            )
        codes = [data.order_code(number) for number in numbers]
        if notify:
            for code in codes:
                self._notify(eshop_id, "order:create", code)
        return codes

    def add_products(
        self, eshop_id: int, count: int, *, history_days: float = 0.0
    ) -> list[str]:
        """Seed ``count`` more products (built on demand like orders); their guids."""
        if count < 0:
            raise ValueError("count must not be negative")
        with self._lock:
            shop = self._eshops[eshop_id]
            numbers = (
                shop.products.add(count, time.time(), history_days * 86400)
                if count
                else range(0)
            )
        return [data.product_guid(eshop_id, number) for number in numbers]

    def edit_order(self, eshop_id: int, code: str, **fields: Any) -> str:
        """Change an order's top-level fields (``status``, ``paid``, ``price``, ...).

        Records an ``edit`` for ``/api/orders/changes`` and delivers ``order:update``
        when registered. Returns the change time. ``KeyError`` for an unknown or
        deleted order, ``ValueError`` for a field the order does not have.
        """
        unknown = set(fields) - data.ORDER_EDITABLE
        if unknown:
            raise ValueError(f"orders have no editable field(s) {sorted(unknown)}")
        with self._lock:
            catalog = self._eshops[eshop_id].orders
            number = self._live_number(catalog, data.order_number(code), code)
            moment = catalog.edit(number, copy.deepcopy(fields), time.time())
        self._notify(eshop_id, "order:update", code)
        return data.prague_datetime(moment)

    def delete_order(self, eshop_id: int, code: str) -> str:
        """Delete an order: its detail answers 404, ``/changes`` says ``delete``."""
        with self._lock:
            catalog = self._eshops[eshop_id].orders
            number = self._live_number(catalog, data.order_number(code), code)
            moment = catalog.delete(number, time.time())
        self._notify(eshop_id, "order:delete", code)
        return data.prague_datetime(moment)

    def edit_product(self, eshop_id: int, guid: str, **fields: Any) -> str:
        """Change a product's fields (``name``, ``visibility``, ...); like ``edit_order``."""
        unknown = set(fields) - data.PRODUCT_EDITABLE
        if unknown:
            raise ValueError(f"products have no editable field(s) {sorted(unknown)}")
        with self._lock:
            catalog = self._eshops[eshop_id].products
            number = self._live_number(
                catalog, data.product_number(eshop_id, guid), guid
            )
            moment = catalog.edit(number, copy.deepcopy(fields), time.time())
        return data.prague_datetime(moment)

    def delete_product(self, eshop_id: int, guid: str) -> str:
        with self._lock:
            catalog = self._eshops[eshop_id].products
            number = self._live_number(
                catalog, data.product_number(eshop_id, guid), guid
            )
            moment = catalog.delete(number, time.time())
        return data.prague_datetime(moment)

    @staticmethod
    def _live_number(catalog: Catalog, number: int | None, key: str) -> int:
        if number is None or not catalog.is_live(number):
            raise KeyError(f"no such item: {key}")
        return number

    def _notify(self, eshop_id: int, event: str, instance: str) -> None:
        """A knob changed something Shoptet would announce; the server delivers it."""

    def order_details(
        self, shop: EmulatedEshop, numbers: list[int]
    ) -> list[dict[str, Any]]:
        """Detail-shaped orders for ``numbers`` (live ones only), in that order."""
        return self._details(shop, shop.orders, data.order_detail, numbers)

    def product_details(
        self, shop: EmulatedEshop, numbers: list[int]
    ) -> list[dict[str, Any]]:
        return self._details(shop, shop.products, data.product_detail, numbers)

    def _details(
        self,
        shop: EmulatedEshop,
        catalog: Catalog,
        detail: Callable[..., dict[str, Any]],
        numbers: list[int],
    ) -> list[dict[str, Any]]:
        with self._lock:
            return [
                detail(
                    shop,
                    number,
                    created=catalog.created(number),
                    changed=catalog.changed(number),
                    overlay=catalog.overlay.get(number),
                )
                for number in numbers
                if catalog.is_live(number)
            ]

    def newest_numbers(self, catalog: Catalog, first: int, count: int) -> list[int]:
        """Live item numbers ``first .. first + count - 1``, newest first."""
        with self._lock:
            if not catalog.deleted:
                top = catalog.count - first
                return list(range(top, max(top - count, 0), -1))
            return [catalog.newest(offset) for offset in range(first, first + count)]

    def live_total(self, catalog: Catalog) -> int:
        with self._lock:
            return catalog.live_count

    def change_log(
        self, catalog: Catalog, since: float, change_type: str | None
    ) -> list[tuple[float, int, str]]:
        """Latest change per item at or after ``since``, oldest first."""
        with self._lock:
            entries: list[tuple[float, int, str]] = list(catalog.log_since(since))
            creation = self.creation_change_type
        if change_type is not None:
            # Creation counts as an edit (OpenAPI "/changes").
            wanted = {"edit": {"add", "edit"}, "delete": {"delete"}}[change_type]
            entries = [entry for entry in entries if entry[2] in wanted]
        if creation != "add":
            entries = [
                (moment, number, creation if kind == "add" else kind)
                for moment, number, kind in entries
            ]
        return entries

    # -- snapshot jobs ----------------------------------------------------------

    def start_job(
        self,
        eshop_id: int,
        resource: Resource,
        only: list[int] | None,
        *,
        changed_since: float | None = None,
        created_since: float | None = None,
    ) -> Job:
        """Queue a snapshot of the shop's ``resource`` (optionally only some items)."""
        with self._lock:
            shop = self._eshops[eshop_id]
            catalog = shop.orders if resource == "orders" else shop.products
            while True:
                job_id = random_token(7)
                if job_id not in self._jobs:
                    break
            job = Job(
                job_id=job_id,
                eshop_id=eshop_id,
                resource=resource,
                endpoint=f"/api/{resource}/snapshot",
                items=frozen(catalog),
                only=only,
                created=time.time(),
                created_monotonic=time.monotonic(),
                outcome=self.job_outcome,
                gzip=self.result_gzip,
                bad_line=self.result_bad_line,
                bad_line_at=self.result_bad_line_at,
                validity=self.result_validity,
                suffix=random_token(7),
                changed_since=changed_since,
                created_since=created_since,
            )
            self._jobs[job_id] = job
            self.stats.snapshot_jobs[eshop_id] += 1
            return job

    def finish_job(
        self, job_id: str, content_length: int | None, path: str | None = None
    ) -> Job | None:
        """Mark a job done as its outcome says; None if it is gone (reset)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status != "pending":
                if path is not None:
                    _remove(path)
                return None
            job.path = path
            now = time.time()
            job.completed = now
            if job.outcome == "fail":
                job.status = "failed"
                job.log = "Job failed (emulated)."
            else:
                job.status = "completed"
                job.valid_until = now + job.validity
                job.content_length = content_length
            return copy.copy(job)

    def job_of(self, eshop_id: int, job_id: str) -> Job | None:
        """The shop's job (a copy, status brought up to date), None if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.eshop_id != eshop_id:
                return None
            self._age_job(job)
            return copy.copy(job)

    def poll_job(self, eshop_id: int, job_id: str) -> tuple[Job | None, bool]:
        """Count one job-detail request: (the job, whether the poll is refused)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.eshop_id != eshop_id:
                return None, False
            self._age_job(job)
            self.stats.job_polls[eshop_id] += 1
            if job.status != "pending":
                return copy.copy(job), False
            job.polls += 1
            return copy.copy(job), job.polls > self.max_job_polls

    def _age_job(self, job: Job) -> None:
        now = time.time()
        if (
            job.status == "pending"
            and time.monotonic() - job.created_monotonic >= self.job_timeout
        ):
            # Shoptet marks a job that hit an internal error failed after 3 hours,
            # and sends no job:finished for it.
            job.status = "failed"
            job.completed = now
            job.log = "Job was marked as failed after timeout."
        expired = job.valid_until is not None and job.valid_until <= now
        if job.status == "completed" and expired:
            job.status = "expired"
            if job.path is not None:
                _remove(job.path)
                job.path = None

    def expire_job_result(self, job_id: str) -> None:
        """Make a finished job's result expired now (its URL answers 404)."""
        with self._lock:
            job = self._jobs[job_id]
            job.valid_until = time.time() - 1
            self._age_job(job)

    def _drop_results(self) -> None:
        """Remove every written result file (on reset and stop)."""
        for job in self._jobs.values():
            if job.path is not None:
                _remove(job.path)
                job.path = None

    def job_for_result(self, eshop_id: int, file_name: str) -> Job | None:
        """The completed, unexpired job whose result file this is."""
        job_id = file_name.partition("-")[0]
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.eshop_id != eshop_id or job.file_name != file_name:
                return None
            self._age_job(job)
            if job.status != "completed":
                return None
            self.stats.result_downloads[eshop_id] += 1
            return copy.copy(job)

    def job(self, job_id: str) -> Job | None:
        """Any shop's job by id (a copy), None if unknown."""
        with self._lock:
            job = self._jobs.get(job_id)
            return copy.copy(job) if job is not None else None

    @property
    def jobs(self) -> list[Job]:
        with self._lock:
            return [copy.copy(job) for job in self._jobs.values()]

    # -- install (partner ApiOAuthServer) -----------------------------------------

    def issue_install_code(self, eshop_id: int | None = None) -> str:
        """Simulate Shoptet installing the addon: a fresh single-use 255-char code.

        An unknown ``eshop_id`` (or None) adds the e-shop first.
        """
        code = urlsafe_token(INSTALL_CODE_LENGTH)
        with self._lock:
            shop = self._add_eshop(eshop_id, None, None)
            self._install_codes[code] = (
                shop.eshop_id,
                time.monotonic() + self.install_code_lifetime,
            )
        return code

    def consume_install_code(self, code: str) -> int | None:
        """Take a code out of circulation; its e-shop id, or None if unknown/expired."""
        with self._lock:
            entry = self._install_codes.pop(code, None)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def complete_install(self, eshop_id: int) -> tuple[EmulatedEshop, str]:
        """Issue the installation's OAuth token; a reinstall replaces the old one."""
        token = urlsafe_token(OAUTH_TOKEN_LENGTH)
        with self._lock:
            shop = self._eshops[eshop_id]
            if shop.oauth_token is not None:
                self._oauth_tokens.pop(shop.oauth_token, None)
            # UNCERTAIN: whether a reinstall voids API tokens minted from the old OAuth
            # token. The 5-token cap is per OAuth token, so we start the new one clean.
            self._drop_api_tokens(shop)
            shop.oauth_token = token
            shop.addon_state = "active"
            self._oauth_tokens[token] = eshop_id
            self.stats.token_exchanges += 1
        return shop, token

    def record_failed_exchange(self) -> None:
        with self._lock:
            self.stats.failed_exchanges += 1

    def oauth_token_for(self, eshop_id: int) -> str | None:
        """The OAuth token the most recent successful exchange issued."""
        with self._lock:
            shop = self._eshops.get(eshop_id)
            return shop.oauth_token if shop else None

    def revoke_oauth_token(self, eshop_id: int) -> None:
        """Make ``getAccessToken`` answer 401 for the e-shop's current OAuth token."""
        with self._lock:
            shop = self._eshops[eshop_id]
            if shop.oauth_token is not None:
                self._oauth_tokens.pop(shop.oauth_token, None)

    # -- API access tokens ------------------------------------------------------

    def mint_api_token(self, oauth_token: str | None) -> Minted:
        """``getAccessToken``: a new API token unless refused (cap, state, auth)."""
        now = time.monotonic()
        with self._lock:
            eshop_id = self._oauth_tokens.get(oauth_token) if oauth_token else None
            if eshop_id is None:
                return Minted(None, error="Unauthorized")
            shop = self._eshops[eshop_id]
            self.stats.access_token_requests[eshop_id] += 1
            if shop.addon_state == "suspended":
                return Minted(eshop_id, error="addon_suspended")
            if shop.addon_state == "not_installed":
                return Minted(eshop_id, error="addon_not_installed")
            self._prune_api_tokens(shop, now)
            if len(shop.api_tokens) >= self.max_valid_tokens:
                self.stats.cap_rejections[eshop_id] += 1
                return Minted(eshop_id, error="maximum_tokens_reached")
            # Current docs: 38 to 60 characters, e.g. "123456-a-fltqc2nn...".
            token = f"{eshop_id}-a-{random_token(40)}"
            expires_at = now + self.token_lifetime
            shop.api_tokens[token] = expires_at
            self._api_tokens[token] = (eshop_id, expires_at)
            self.stats.api_tokens_issued[eshop_id] += 1
            seen = self.stats.max_valid_tokens_seen
            seen[eshop_id] = max(seen[eshop_id], len(shop.api_tokens))
            return Minted(eshop_id, token=token, expires_in=self.token_lifetime)

    def valid_api_tokens(self, eshop_id: int) -> int:
        """How many of the e-shop's API tokens are unexpired right now."""
        with self._lock:
            shop = self._eshops[eshop_id]
            self._prune_api_tokens(shop, time.monotonic())
            return len(shop.api_tokens)

    def expire_api_tokens(self, eshop_id: int) -> None:
        """Every API token issued for the e-shop expires now."""
        now = time.monotonic()
        with self._lock:
            shop = self._eshops[eshop_id]
            for token in shop.api_tokens:
                self._api_tokens[token] = (eshop_id, now)
            shop.api_tokens.clear()

    def _prune_api_tokens(self, shop: EmulatedEshop, now: float) -> None:
        for token, expires_at in list(shop.api_tokens.items()):
            if expires_at <= now:
                del shop.api_tokens[token]
        # The global index is swept at most once a minute: it can hold 50,000 tokens.
        if now - self._last_sweep < 60.0:
            return
        self._last_sweep = now
        forget = now - EXPIRED_TOKEN_MEMORY
        for token, (_, expires_at) in list(self._api_tokens.items()):
            if expires_at <= forget:
                del self._api_tokens[token]

    def _drop_api_tokens(self, shop: EmulatedEshop) -> None:
        for token in shop.api_tokens:
            self._api_tokens.pop(token, None)
        shop.api_tokens.clear()

    def authenticate(self, token: str | None, route: str | None) -> ApiAuth:
        """Check ``Shoptet-Access-Token`` for one call to ``route`` (``METHOD /tmpl``)."""
        if not token:
            return ApiAuth(None, "missing")
        with self._lock:
            entry = self._api_tokens.get(token)
            if entry is None:
                return ApiAuth(None, "invalid")
            eshop_id, expires_at = entry
            shop = self._eshops[eshop_id]
            if expires_at <= time.monotonic():
                return ApiAuth(shop, "expired")
            if shop.addon_state != "active":
                return ApiAuth(shop, "not-approved")
            if route is not None and route in shop.denied_endpoints:
                return ApiAuth(shop, "no-rights")
            return ApiAuth(shop, None)

    # -- connection limit and leaky bucket --------------------------------------

    def enter_request(self, token: str | None) -> InFlight:
        """Count a request in flight (per token, like nginx ``limit_conn``)."""
        if not token:
            return InFlight(None, None, over_limit=False)
        with self._lock:
            entry = self._api_tokens.get(token)
            eshop_id = entry[0] if entry else None
            self._inflight[token] += 1
            now_token = self._inflight[token]
            peaks = self.stats.peak_concurrency
            peaks[token] = max(peaks[token], now_token)
            if eshop_id is not None:
                self.stats.api_requests[eshop_id] += 1
                self._inflight[eshop_id] += 1
                peaks[eshop_id] = max(peaks[eshop_id], self._inflight[eshop_id])
            over = now_token > self.max_connections_per_token
            if over and eshop_id is not None:
                self.stats.concurrency_rejections[eshop_id] += 1
            return InFlight(token, eshop_id, over_limit=over)

    def leave_request(self, ticket: InFlight) -> None:
        if ticket.token is None:
            return
        with self._lock:
            for key in (ticket.token, ticket.eshop_id):
                if key is None:
                    continue
                self._inflight[key] -= 1
                if self._inflight[key] <= 0:
                    del self._inflight[key]

    def bucket_filling(self, eshop_id: int | None) -> str:
        """The ``X-RateLimit-Bucket-Filling`` value, without charging anything."""
        with self._lock:
            if eshop_id is None or eshop_id not in self._eshops:
                return f"0/{self.bucket_capacity}"
            level = self._leak(self._eshops[eshop_id], time.monotonic())
            return self._filling(level)

    def charge(self, eshop_id: int, cost: int) -> BucketResult:
        """Admit a request unless the e-shop's bucket is full, then add its cost.

        Shoptet prices a request after running it, so a request is admitted while
        the bucket is not yet full and may push it past the brim.
        """
        now = time.monotonic()
        with self._lock:
            shop = self._eshops[eshop_id]
            level = self._leak(shop, now)
            capacity = self.bucket_capacity
            if level >= capacity:
                self.stats.bucket_rejections[eshop_id] += 1
                leak = self.bucket_leak_per_second
                wait = (level - capacity) / leak + 1 / leak if leak > 0 else 60.0
                return BucketResult(
                    admitted=False, filling=self._filling(level), retry_after=wait
                )
            shop.bucket_level = level + cost
            return BucketResult(admitted=True, filling=self._filling(shop.bucket_level))

    def admit(self, eshop_id: int, route: str | None = None) -> BucketResult:
        """Let a request in unless the e-shop's bucket is full (it pays afterwards)."""
        now = time.monotonic()
        with self._lock:
            shop = self._eshops[eshop_id]
            if route is not None:
                self.stats.endpoint_requests[(eshop_id, route)] += 1
            level = self._leak(shop, now)
            capacity = self.bucket_capacity
            if level >= capacity:
                self.stats.bucket_rejections[eshop_id] += 1
                leak = self.bucket_leak_per_second
                wait = (level - capacity) / leak + 1 / leak if leak > 0 else 60.0
                return BucketResult(
                    admitted=False, filling=self._filling(level), retry_after=wait
                )
            return BucketResult(admitted=True, filling=self._filling(level))

    def pour(self, eshop_id: int, drops: int) -> str:
        """Add a finished request's cost to the bucket; the new filling header."""
        now = time.monotonic()
        with self._lock:
            shop = self._eshops[eshop_id]
            level = self._leak(shop, now) + drops
            shop.bucket_level = level
            self.stats.drops[eshop_id] += drops
            return self._filling(level)

    def request_price(self, template: str, reply: Any) -> int:
        """Drops one answered API request costs (the model in the class docstring)."""
        if reply.status >= 400:
            return self.request_cost
        if template.endswith("/snapshot"):
            return self.snapshot_cost
        per = self.items_per_drop
        return self.request_cost + (reply.items // per if per > 0 else 0)

    def _leak(self, shop: EmulatedEshop, now: float) -> float:
        elapsed = max(0.0, now - shop.bucket_time)
        shop.bucket_level = max(
            0.0, shop.bucket_level - elapsed * self.bucket_leak_per_second
        )
        shop.bucket_time = now
        return shop.bucket_level

    def _filling(self, level: float) -> str:
        return f"{min(math.ceil(level), self.bucket_capacity)}/{self.bucket_capacity}"

    # -- webhooks ---------------------------------------------------------------

    def renew_signature_key(self, eshop_id: int) -> str:
        # 32 hex characters, like the spec's example "8a5e881b19ad6cc0bc986587b22e30be"
        key = secrets.token_hex(16)
        with self._lock:
            self._eshops[eshop_id].signature_key = key
        return key

    def signature_key_for(self, eshop_id: int) -> str | None:
        with self._lock:
            return self._eshops[eshop_id].signature_key

    def add_webhook(
        self, eshop_id: int, event: str, url: str, send_payload: str | None
    ) -> Webhook | None:
        """Register one webhook; None when the event already has one (one URL per event)."""
        with self._lock:
            shop = self._eshops[eshop_id]
            if any(hook.event == event for hook in shop.webhooks.values()):
                return None
            hook = Webhook(
                self._next_webhook_id,
                event,
                url,
                shoptet_datetime(),
                None,
                send_payload,
            )
            self._next_webhook_id += 1
            shop.webhooks[hook.id] = hook
            return copy.copy(hook)

    def webhooks_of(self, eshop_id: int) -> list[Webhook]:
        with self._lock:
            return [
                copy.copy(hook) for hook in self._eshops[eshop_id].webhooks.values()
            ]

    def update_webhook(
        self, eshop_id: int, webhook_id: int, changes: dict[str, Any]
    ) -> bool:
        with self._lock:
            hook = self._eshops[eshop_id].webhooks.get(webhook_id)
            if hook is None:
                return False
            if "url" in changes:
                hook.url = changes["url"]
            if "sendPayload" in changes:
                hook.send_payload = changes["sendPayload"]
            hook.updated = shoptet_datetime()
            return True

    def delete_webhook(self, eshop_id: int, webhook_id: int) -> bool:
        with self._lock:
            return self._eshops[eshop_id].webhooks.pop(webhook_id, None) is not None

    def record_answer(self, method: str, path: str, status: int) -> None:
        """Count one answer (status 0: the connection was dropped on purpose)."""
        with self._lock:
            self.stats.status_counts[(path, status)] += 1
            log = self.stats.requests
            log.append((method, path, status))
            if len(log) > REQUEST_LOG_LIMIT:
                del log[: len(log) - REQUEST_LOG_LIMIT // 2]

    def stats_snapshot(self) -> dict[str, Any]:
        """A consistent JSON-friendly copy of the counters."""
        with self._lock:
            return self.stats.snapshot()

    def record_webhook_delivery(self, eshop_id: int) -> None:
        with self._lock:
            self.stats.webhook_deliveries[eshop_id] += 1

    def record_webhook_result(
        self, eshop_id: int, event: str, instance: str, status: int | None
    ) -> None:
        with self._lock:
            log = self.stats.webhook_log
            log.append((eshop_id, event, instance, status))
            if len(log) > REQUEST_LOG_LIMIT:
                del log[: len(log) - REQUEST_LOG_LIMIT // 2]

    # -- customer e-shop OAuthServer (settings-page admin login) -----------------

    def issue_login_code(
        self,
        eshop_id: int,
        *,
        redirect_uri: str | None = None,
        user_email: str | None = None,
        user_name: str | None = None,
    ) -> str:
        """A code for the e-shop's own OAuthServer, as put into ``#OAUTH_CODE#``."""
        code = urlsafe_token(64)
        with self._lock:
            shop = self._eshops[eshop_id]
            self._login_codes[code] = _LoginCode(
                eshop_id=eshop_id,
                expires_at=time.monotonic() + LOGIN_CODE_LIFETIME,
                redirect_uri=redirect_uri,
                user_email=user_email or shop.contact_email,
                user_name=user_name or "Emulated Admin",
            )
        return code

    def exchange_login_code(
        self, eshop_id: int, code: str, redirect_uri: str
    ) -> str | None:
        """Swap a login code for a ``basic_eshop`` token at that e-shop's server."""
        with self._lock:
            entry = self._login_codes.pop(code, None)
            if entry is None or entry.expires_at <= time.monotonic():
                return None
            # A code only works at the OAuthServer of the e-shop that issued it.
            if entry.eshop_id != eshop_id:
                return None
            # UNCERTAIN: the redirect_uri rule for #OAUTH_CODE# codes; we check it only
            # for codes that came from /authorize with an explicit redirect_uri.
            if entry.redirect_uri is not None and entry.redirect_uri != redirect_uri:
                return None
            token = urlsafe_token(64)
            self._login_tokens[token] = _LoginToken(
                eshop_id,
                time.monotonic() + LOGIN_TOKEN_LIFETIME,
                entry.user_email,
                entry.user_name,
            )
            return token

    def basic_eshop(self, eshop_id: int, token: str | None) -> dict[str, Any] | None:
        """The ``getBasicEshop`` identity behind a login token, or None."""
        with self._lock:
            entry = self._login_tokens.get(token or "")
            if entry is None or entry.expires_at <= time.monotonic():
                return None
            if entry.eshop_id != eshop_id:
                return None
            shop = self._eshops[entry.eshop_id]
            return {
                "user": {"email": entry.user_email, "name": entry.user_name},
                "project": {"id": shop.eshop_id, "url": shop.url, "name": shop.name},
            }


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        Path(path).unlink()


def _route_key(endpoint: str) -> str:
    method, _, path = endpoint.strip().partition(" ")
    return f"{method.upper()} {path.strip()}"
