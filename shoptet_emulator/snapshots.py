"""Snapshot jobs: what ``/api/{orders,products}/snapshot`` queue and their results.

A job freezes the shop's items when it starts (``catalog.frozen``), finishes
after ``job_latency`` seconds, and its result is JSON Lines, one detail-shaped
item per line, gzip-compressed unless ``result_gzip`` is off. The result is never
held in memory: lines are generated and compressed 64 KiB at a time, either into
a temporary file when the job finishes (served with its ``Content-Length``, like
Shoptet's static file) or, with ``result_content_length`` off, straight into the
download (chunked, no length).
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shoptet_emulator import data
from shoptet_emulator.catalog import Catalog, live_numbers

JobStatus = Literal["pending", "completed", "failed", "expired"]
JobOutcome = Literal["complete", "fail", "never"]
BadLine = Literal["missing-field", "absurd-date", "huge-line"]
Resource = Literal["orders", "products"]

HUGE_LINE_BYTES = 50 * 1024 * 1024
ABSURD_DATE = (
    "9999-19-39T29:59:59+0000"  # matches typeDateTime's pattern, means nothing
)
_CHUNK = 64 * 1024
_HUGE_MARK = "\x00huge\x00"


@dataclass
class Job:
    """One asynchronous job of one e-shop."""

    job_id: str
    eshop_id: int
    resource: Resource
    endpoint: str
    items: Catalog = field(repr=False)
    only: list[int] | None  # orderCodes / productGuids filter, as item numbers
    created: float  # epoch seconds
    created_monotonic: float
    outcome: JobOutcome
    gzip: bool
    bad_line: BadLine | None
    bad_line_at: int
    validity: float
    suffix: str
    status: JobStatus = "pending"
    completed: float | None = None
    valid_until: float | None = None
    polls: int = 0
    content_length: int | None = None
    path: str | None = None  # the written result file, if written
    log: str | None = None

    @property
    def file_name(self) -> str:
        return f"{self.job_id}-{self.suffix}.json"

    changed_since: float | None = None  # changeTimeFrom, epoch seconds
    created_since: float | None = None  # creationTimeFrom

    def numbers(self) -> Iterator[int]:
        items = self.items
        if self.only is not None:
            # orderCodes / productGuids: "other filters are not applied".
            return (n for n in self.only if items.is_live(n))
        numbers = live_numbers(items)
        if self.changed_since is not None:
            since = self.changed_since
            numbers = (n for n in numbers if items.changed(n) >= since)
        if self.created_since is not None:
            created = self.created_since
            numbers = (n for n in numbers if items.created(n) >= created)
        return numbers


def lines(job: Job, shop: Any) -> Iterator[bytes]:
    """The result's JSON Lines (uncompressed), one item per line, in chunks."""
    build = data.order_detail if job.resource == "orders" else data.product_detail
    key = "code" if job.resource == "orders" else "guid"
    items = job.items
    buffer: list[str] = []
    size = 0
    for index, number in enumerate(job.numbers()):
        item = build(
            shop,
            number,
            created=items.created(number),
            changed=items.changed(number),
            overlay=items.overlay.get(number),
        )
        if job.bad_line is not None and index == job.bad_line_at:
            if job.bad_line == "huge-line":
                yield from _flush(buffer)
                size = 0
                yield from _huge_line(item)
                continue
            if job.bad_line == "missing-field":
                del item[key]
            else:
                item["creationTime"] = item["changeTime"] = ABSURD_DATE
        line = json.dumps(item, ensure_ascii=False, separators=(",", ":")) + "\n"
        buffer.append(line)
        size += len(line)
        if size >= _CHUNK:
            yield from _flush(buffer)
            size = 0
    yield from _flush(buffer)


def _flush(buffer: list[str]) -> Iterator[bytes]:
    if buffer:
        yield "".join(buffer).encode()
        buffer.clear()


def _huge_line(item: dict[str, Any]) -> Iterator[bytes]:
    """One item whose line is 50 MB (a remark-like field of "x"), streamed in pieces."""
    field_name = "externalCode" if "externalCode" in item else "internalNote"
    item[field_name] = _HUGE_MARK
    head, _, tail = json.dumps(
        item, ensure_ascii=False, separators=(",", ":")
    ).partition(json.dumps(_HUGE_MARK))
    yield (head + '"').encode()
    piece = b"x" * (1024 * 1024)
    for _ in range(HUGE_LINE_BYTES // len(piece)):
        yield piece
    yield ('"' + tail + "\n").encode()


def body(job: Job, shop: Any) -> Iterator[bytes]:
    """The result file as served: gzip (deterministic: no name, mtime 0) or plain."""
    if not job.gzip:
        yield from lines(job, shop)
        return
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: a gzip stream
    for chunk in lines(job, shop):
        compressed = compressor.compress(chunk)
        if compressed:
            yield compressed
    yield compressor.flush()


def write(job: Job, shop: Any, directory: str) -> tuple[str, int]:
    """Write the result file, as the job would on the shop's host: (path, size).

    Written chunk by chunk, so memory stays flat; serving it later costs only disk
    reads, so a client's download speed is not bounded by the emulator's JSON.
    """
    fd, path = tempfile.mkstemp(prefix=f"{job.job_id}-", suffix=".json", dir=directory)
    size = 0
    with os.fdopen(fd, "wb") as fh:
        for chunk in body(job, shop):
            fh.write(chunk)
            size += len(chunk)
    return path, size


def read(path: str) -> Iterator[bytes]:
    """A written result file in 64 KiB pieces (empty if it was removed meanwhile)."""
    try:
        fh = Path(path).open("rb")  # noqa: SIM115 - closed by the generator
    except FileNotFoundError:
        return
    with fh:
        while chunk := fh.read(_CHUNK):
            yield chunk
