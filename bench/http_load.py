"""A light HTTP/1.1 load generator: raw requests over keep-alive sockets, asyncio, stdlib only.

Benchmarks that measure a server must not be measured by their client: Python's http.client
costs about as much per request as a small Django view. Here a request is bytes prepared in
advance (signatures and all), written to a socket; the answer is read by its Content-Length.
`LoadPool` keeps a few child processes (each an event loop with many connections), so the client
uses both cores when it needs them and its start-up is paid once per benchmark.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

# (index of the request, HTTP status (0: no answer), seconds from write to the whole answer,
# whether the body contained the marker)
Result = tuple[int, int, float, bool]


@dataclasses.dataclass
class Outcome:
    """What one load phase saw, all processes together."""

    results: list[Result]
    elapsed: float  # from the common start to the last answer

    @property
    def rate(self) -> float:
        answered = sum(1 for _, status, _, _ in self.results if status)
        return answered / self.elapsed if self.elapsed else 0.0

    def latencies(self) -> list[float]:
        return [seconds for _, status, seconds, _ in self.results if status]


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


async def _connection(
    host: str,
    port: int,
    requests: Sequence[bytes],
    next_index: list[int],
    stop_at: float,
    marker: bytes,
    results: list[Result],
) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while True:
        index = next_index[0]
        if index >= len(requests) or time.monotonic() >= stop_at:
            break
        next_index[0] += 1
        started = time.perf_counter()
        try:
            if writer is None or reader is None:
                reader, writer = await asyncio.open_connection(host, port)
            writer.write(requests[index])
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.readexactly(_content_length(head))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            # No answer (refused, reset, closed mid-answer): counted as status 0.
            results.append((index, 0, time.perf_counter() - started, False))
            if writer is not None:
                writer.close()
            reader = writer = None
            continue
        results.append(
            (index, int(head[9:12]), time.perf_counter() - started, marker in body)
        )
        if b"connection: close" in head.lower():  # gunicorn recycling a worker
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _phase(
    host: str,
    port: int,
    requests: Sequence[bytes],
    connections: int,
    start_at: float,
    seconds: float,
    marker: bytes,
) -> tuple[list[Result], float]:
    results: list[Result] = []
    next_index = [0]  # one event loop: no lock needed
    await asyncio.sleep(max(0.0, start_at - time.time()))
    began = time.monotonic()
    await asyncio.gather(
        *(
            _connection(
                host, port, requests, next_index, began + seconds, marker, results
            )
            for _ in range(connections)
        )
    )
    return results, time.time()


def _child(pipe: Connection) -> None:
    """Serve load phases until told to stop: (host, port, requests, connections, start, s, marker)."""
    while True:
        command = pipe.recv()
        if command is None:
            return
        pipe.send(asyncio.run(_phase(*command)))


class LoadPool:
    """`processes` children, each running `connections` keep-alive connections per phase."""

    def __init__(self, *, processes: int, connections: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.connections = connections
        self.pipes: list[Connection] = []
        self.children: list[Any] = []
        for _ in range(processes):
            ours, theirs = context.Pipe()
            child = context.Process(target=_child, args=(theirs,), daemon=True)
            child.start()
            self.pipes.append(ours)
            self.children.append(child)

    def run(
        self,
        host: str,
        port: int,
        requests: Sequence[bytes],
        *,
        seconds: float,
        marker: bytes = b"",
    ) -> Outcome:
        """Send `requests` (dealt round-robin to the processes) for at most `seconds`.

        Result indexes are positions in `requests`. Each connection sends its next request as
        soon as the last is answered: the load is closed-loop, `processes x connections` senders.
        """
        count = len(self.pipes)
        start_at = time.time() + 0.05  # every child starts together
        for number, pipe in enumerate(self.pipes):
            share = list(requests[number::count])
            pipe.send((host, port, share, self.connections, start_at, seconds, marker))
        results: list[Result] = []
        finished = start_at
        for number, pipe in enumerate(self.pipes):
            part, ended = pipe.recv()
            finished = max(finished, ended)
            # Back to positions in the caller's list.
            results.extend(
                (index * count + number, status, latency, marked)
                for index, status, latency, marked in part
            )
        return Outcome(results=results, elapsed=finished - start_at)

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(None)
        for child in self.children:
            child.join(timeout=5)
