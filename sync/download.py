"""Stream a snapshot result (`resultUrl`): JSON Lines, usually gzip, possibly huge.

A `resultUrl` is input from the network, not an order to fetch anything anywhere: only https (http
only with SHOPTET_ALLOW_HTTP), only the shop's own host or Shoptet's hosts, no redirects, a size cap
and a wall-clock deadline. Memory stays flat: the body is read in chunks and split into lines; a
line longer than SYNC_MAX_LINE_BYTES is skipped (and reported) without being held.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
import urllib3.exceptions
from django.conf import settings

from shoptet_api import transport

GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 64 * 1024


class DownloadError(Exception):
    """The result cannot be fetched (refused URL, HTTP error, too large, too slow).

    `gone`: the result no longer exists (404/410: expired); the job must be started again.
    """

    def __init__(self, message: str, *, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone


@dataclass
class Line:
    number: int  # 1-based
    data: bytes | None  # None: longer than the cap (skipped)


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower().rstrip("."), port


def check_result_url(url: str, shop_url: str) -> None:
    """Raise `DownloadError` unless `url` is one we may fetch for a shop at `shop_url`."""
    try:
        scheme, host, port = _origin(url)
        _, shop_host, shop_port = _origin(shop_url)
    except ValueError:
        raise DownloadError("resultUrl is not a valid URL") from None
    allowed_schemes = {"https", "http"} if settings.SHOPTET_ALLOW_HTTP else {"https"}
    if scheme not in allowed_schemes:
        raise DownloadError(f"resultUrl scheme {scheme!r} is not allowed")
    if not host or "@" in urlsplit(url).netloc:
        raise DownloadError("resultUrl has no plain host")
    if host == shop_host and port == shop_port:
        return
    default_port = 443 if scheme == "https" else 80
    for allowed in settings.SYNC_RESULT_HOSTS:
        allowed = allowed.lower()
        if (host == allowed or host.endswith("." + allowed)) and port == default_port:
            return
    raise DownloadError(f"resultUrl host {host!r} is neither the shop's nor Shoptet's")


def stream_lines(
    url: str,
    *,
    shop_url: str,
    progress: Callable[[int, int | None], None] | None = None,
    max_bytes: int | None = None,
    deadline_seconds: float | None = None,
    max_line: int | None = None,
) -> Iterator[Line]:
    """Yield the result's lines one by one (gzip detected by its magic bytes, not by headers).

    The whole download — connecting, the status line and headers, every byte of the body — ends
    by one wall-clock deadline: the transport's watchdog shuts the socket down when it passes, so
    a server that trickles one byte a second (never tripping a read timeout) is cut off too.
    """
    check_result_url(url, shop_url)
    max_bytes = max_bytes or settings.SYNC_DOWNLOAD_MAX_BYTES
    max_line = max_line or settings.SYNC_MAX_LINE_BYTES
    deadline_seconds = deadline_seconds or settings.SYNC_DOWNLOAD_DEADLINE_SECONDS
    too_slow = f"result download exceeded its {deadline_seconds:g} s deadline"
    session = transport.new_session()  # deadline-aware connections, no env proxies
    guard = transport.start_deadline(deadline_seconds)
    # The deadline takes the socket when the connection opens it; API calls made while the caller
    # consumes lines are not under it.
    try:
        with transport.connections_under(guard):
            response = session.get(
                url,
                stream=True,
                allow_redirects=False,
                timeout=(
                    min(settings.SHOPTET_CONNECT_TIMEOUT, deadline_seconds),
                    min(settings.SHOPTET_READ_TIMEOUT, deadline_seconds),
                ),
                headers={"Accept-Encoding": "identity"},
            )
    except requests.RequestException as exc:
        guard.finish()
        session.close()
        if guard.expired:
            raise DownloadError(too_slow) from None
        raise DownloadError(f"resultUrl unreachable: {type(exc).__name__}") from None
    try:
        if guard.expired:
            raise DownloadError(too_slow)
        if response.status_code != 200:
            raise DownloadError(
                f"resultUrl answered HTTP {response.status_code}",
                gone=response.status_code in (404, 410),
            )
        declared = response.headers.get("Content-Length", "")
        total = int(declared) if declared.isascii() and declared.isdigit() else None
        if total is not None and total > max_bytes:
            raise DownloadError(f"result is {total} bytes, over the {max_bytes} cap")
        yield from _lines(
            _chunks(response, max_bytes, total, progress, guard), max_line
        )
    except (
        requests.RequestException,
        urllib3.exceptions.HTTPError,
        OSError,
        AttributeError,
        ValueError,
    ) as exc:
        # AttributeError/ValueError: urllib3 reading from a socket the watchdog shut down.
        if guard.expired:
            raise DownloadError(too_slow) from None
        raise DownloadError(f"result download failed: {type(exc).__name__}") from None
    finally:
        guard.finish()
        response.close()
        session.close()


def _chunks(
    response: requests.Response,
    max_bytes: int,
    total: int | None,
    progress: Callable[[int, int | None], None] | None,
    guard: transport.Deadline,
) -> Iterator[bytes]:
    """The body decompressed if it starts with the gzip magic, chunk by chunk."""
    received = 0
    decompressor: zlib._Decompress | None = None
    first = True
    last_report = 0.0
    for raw in response.raw.stream(CHUNK, decode_content=False):
        if guard.expired:
            raise DownloadError("result download exceeded its deadline")
        received += len(raw)
        if received > max_bytes:
            raise DownloadError(f"result is over the {max_bytes} byte cap")
        if progress is not None and time.monotonic() - last_report > 0.2:
            progress(received, total)
            last_report = time.monotonic()
        if first:
            first = False
            if raw.startswith(GZIP_MAGIC):
                decompressor = zlib.decompressobj(wbits=31)
        if decompressor is None:
            yield raw
            continue
        try:
            while raw:
                yield decompressor.decompress(raw, CHUNK)
                raw = decompressor.unconsumed_tail
                if decompressor.eof and decompressor.unused_data:
                    # Concatenated gzip members are one stream to gunzip.
                    raw = decompressor.unused_data + raw
                    decompressor = zlib.decompressobj(wbits=31)
        except zlib.error:
            raise DownloadError("result is not valid gzip") from None
    if guard.expired:
        # A shut socket may read as a clean end of a body without Content-Length.
        raise DownloadError("result download exceeded its deadline")
    if total is not None and received < total:
        raise DownloadError(f"result ended after {received} of {total} bytes")
    if decompressor is not None:
        if not decompressor.eof:
            raise DownloadError("result is truncated gzip")
        yield decompressor.flush()
    if progress is not None:
        progress(received, total)


def _lines(chunks: Iterator[bytes], max_line: int) -> Iterator[Line]:
    buffer = bytearray()
    number = 0
    skipping = False
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                if not skipping:
                    buffer += chunk[start:]
                    if len(buffer) > max_line:
                        buffer.clear()
                        skipping = True
                break
            number += 1
            if skipping:
                skipping = False
                yield Line(number, None)
            else:
                buffer += chunk[start:end]
                if len(buffer) > max_line:
                    yield Line(number, None)
                elif buffer.strip():
                    yield Line(number, bytes(buffer))
                buffer.clear()
            start = end + 1
    if skipping:
        yield Line(number + 1, None)
    elif buffer.strip():
        yield Line(number + 1, bytes(buffer))
