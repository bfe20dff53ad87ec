"""The one outbound-HTTP choke point to Shoptet: pooled sessions, deadlines, bounded answers.

`shoptet_api.client` (the API) and `shoptet_api.oauth` (the OAuth servers) both send through here;
no other module imports `requests` for Shoptet.

Every call has a wall-clock deadline. `requests`' read timeout applies to each socket read, so a
server that sends one byte every second never trips it; here a watchdog thread shuts the call's
socket down when its deadline passes, wherever the call is (connecting, reading headers or the
body), and the call ends as `ShoptetTimeoutError`. Every answer is read into memory only up to a
size cap, so a huge answer ends as `ShoptetInvalidResponse` instead of filling memory.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.exceptions
from django.conf import settings

from shoptet_api.errors import (
    ShoptetConnectionError,
    ShoptetInvalidResponse,
    ShoptetTimeoutError,
)

USER_AGENT = "shoptet-addon-platform/0.1 (+python-requests)"

Timeout = tuple[float, float]

# The largest answer read from the API (a page of 50 orders with items is well under 1 MiB) and
# from an OAuth server (a token answer or getBasicEshop is under 2 KiB).
API_MAX_ANSWER_BYTES = 16 * 1024 * 1024
OAUTH_MAX_ANSWER_BYTES = 64 * 1024
_CHUNK = 64 * 1024

_local = threading.local()


# --- Deadlines --------------------------------------------------------------------------------


class Deadline:
    """One call's wall-clock deadline and the sockets it uses; `expire` shuts them down."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self._done = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def attach(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            if self._done:
                return
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def finish(self) -> None:
        with self._lock:
            self._done = True
            self._sockets.clear()


def _shut(sock: socket.socket) -> None:
    # shutdown() wakes a thread blocked in recv() on this socket (close() alone may not).
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread per process that expires guards whose deadline has passed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, guard: Deadline) -> None:
        with self._cond:
            heapq.heappush(self._heap, (guard.deadline, next(self._order), guard))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="shoptet-deadlines", daemon=True
                )
                self._thread.start()
            if self._heap[0][2] is guard:
                # Wake the thread only if it must wake earlier than it planned: waking it for
                # every call would cost each call a thread switch.
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, guard = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            guard.expire()  # a finished guard ignores it


_watchdog = _Watchdog()


def _current_guard() -> Deadline | None:
    return getattr(_local, "guard", None)


def start_deadline(seconds: float) -> Deadline:
    """A deadline `seconds` from now that the watchdog enforces on the sockets attached to it."""
    guard = Deadline(time.monotonic() + seconds)
    _watchdog.watch(guard)
    return guard


@contextlib.contextmanager
def connections_under(guard: Deadline) -> Iterator[None]:
    """Sockets this thread opens inside the block are shut down when `guard` expires.

    Only the opening is scoped: a streamed body read after the block stays under the deadline,
    while other calls the thread makes later are not.
    """
    _local.guard = guard
    try:
        yield
    finally:
        _local.guard = None


class _GuardedHTTPConnection(urllib3.connection.HTTPConnection):
    """Hands its socket to the calling thread's guard: new sockets and reused ones."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        guard = _current_guard()
        if guard is not None:
            guard.attach(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        guard = _current_guard()
        if guard is not None:
            guard.attach(
                self.sock
            )  # a pooled connection; a new one attaches in _new_conn
        super().request(*args, **kwargs)


class _GuardedHTTPSConnection(
    _GuardedHTTPConnection, urllib3.connection.HTTPSConnection
):
    pass


class _GuardedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _DeadlineAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections obey the calling thread's deadline guard."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _GuardedHTTPPool,
            "https": _GuardedHTTPSPool,
        }


def new_session() -> requests.Session:
    """A `requests.Session` for Shoptet: deadline-aware connections, our User-Agent, no env proxies."""
    session = requests.Session()
    _mount(session)
    session.headers["User-Agent"] = USER_AGENT
    # Never pick up proxies or .netrc credentials from the environment for Shoptet calls.
    session.trust_env = False
    return session


def _mount(session: requests.Session) -> None:
    for prefix in ("https://", "http://"):
        session.mount(prefix, _DeadlineAdapter())


def http_session() -> requests.Session:
    """A pooled `requests.Session` per thread (Sessions are not documented as thread-safe)."""
    session: requests.Session | None = getattr(_local, "session", None)
    if session is None:
        session = new_session()
        _local.session = session
    return session


def default_timeout() -> Timeout:
    return (settings.SHOPTET_CONNECT_TIMEOUT, settings.SHOPTET_READ_TIMEOUT)


# --- Sending ----------------------------------------------------------------------------------


def send(
    method: str,
    url: str,
    *,
    timeout: Timeout,
    endpoint: str,
    session: requests.Session | None = None,
    deadline: float | None = None,
    max_bytes: int = API_MAX_ANSWER_BYTES,
    **kwargs: Any,
) -> requests.Response:
    """Send one request and read its whole answer (at most `max_bytes`) by a wall-clock deadline.

    The call ends by `deadline` (a `time.monotonic()` value) or after connect + read timeout,
    whichever is sooner, whatever the server does. Transport failures become
    `ShoptetConnectionError`/`ShoptetTimeoutError`; a larger answer `ShoptetInvalidResponse`.
    `endpoint` is a short, secret-free label ("POST oauth/token") used in errors and logs; the URL
    itself may carry query parameters and is never logged.
    """
    session = session or http_session()
    if not isinstance(session.get_adapter(url), _DeadlineAdapter):
        _mount(session)  # a plain requests.Session: give it deadline-aware connections
    started = time.monotonic()
    limit = started + timeout[0] + timeout[1]
    if deadline is not None:
        limit = min(limit, deadline)
    budget = limit - started
    if budget <= 0:
        raise ShoptetTimeoutError(
            "no time left for the call", endpoint=endpoint, request_sent=False
        )
    guard = start_deadline(budget)
    try:
        with connections_under(guard):
            response = session.request(
                method,
                url,
                timeout=(min(timeout[0], budget), min(timeout[1], budget)),
                allow_redirects=False,
                stream=True,
                **kwargs,
            )
        try:
            response._content = _read_body(response, max_bytes, endpoint=endpoint)
        finally:
            response.close()  # after a full read the connection is already back in the pool
        if guard.expired:
            # The socket was shut mid-answer; http.client may still have parsed a cut-off status
            # line and an empty body as an answer. Nothing read under a passed deadline counts.
            raise requests.ConnectionError("deadline passed")
    except requests.ConnectTimeout:
        raise ShoptetTimeoutError(
            f"no connection within {timeout[0]:g} s",
            endpoint=endpoint,
            request_sent=False,
        ) from None
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        if guard.expired:
            raise ShoptetTimeoutError(
                f"no complete answer within {budget:.3g} s (deadline)",
                endpoint=endpoint,
            ) from None
        if isinstance(exc, requests.Timeout):
            raise ShoptetTimeoutError(
                f"no answer within {timeout[1]:g} s", endpoint=endpoint
            ) from None
        # The exception text can contain the URL; keep only its class name.
        raise ShoptetConnectionError(
            f"connection failed ({type(exc).__name__})",
            endpoint=endpoint,
            request_sent=not _never_connected(exc),
        ) from None
    finally:
        guard.finish()
    return response


def _read_body(response: requests.Response, max_bytes: int, *, endpoint: str) -> bytes:
    """The (decoded) body, refused once it grows past `max_bytes`."""
    declared = response.headers.get("Content-Length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(response, max_bytes, endpoint=endpoint)
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(response, max_bytes, endpoint=endpoint)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(
    response: requests.Response, max_bytes: int, *, endpoint: str
) -> ShoptetInvalidResponse:
    return ShoptetInvalidResponse(
        f"the answer is larger than {max_bytes} bytes; not read",
        status_code=response.status_code,
        endpoint=endpoint,
        request_id=response.headers.get("X-Request-ID"),
    )


def _never_connected(exc: Exception) -> bool:
    """True when the failure happened before any byte of the request left (safe to repeat a POST)."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(
        reason,
        urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError,
    )
