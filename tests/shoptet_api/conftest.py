"""Fixtures shared by the shoptet_api tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
import redis

# Threads whose names start with this (a test's own pool) are counted by `round_trips` too.
COUNTED_THREADS = "counted-"


@pytest.fixture
def round_trips() -> Iterator[list[str]]:
    """Redis round trips made by this thread (and by COUNTED_THREADS): commands sent alone,
    and pipelines."""
    trips: list[str] = []
    me = threading.get_ident()
    send_command: Any = redis.Redis.execute_command
    send_pipeline: Any = redis.client.Pipeline.execute

    def counted() -> bool:
        return (
            threading.get_ident() == me
            or threading.current_thread().name.startswith(COUNTED_THREADS)
        )

    def command(self: redis.Redis, *args: Any, **options: Any) -> Any:
        if counted() and not isinstance(self, redis.client.Pipeline):
            trips.append(str(args[0]))
        return send_command(self, *args, **options)

    def pipeline(self: redis.client.Pipeline, *args: Any, **options: Any) -> Any:
        if counted():
            trips.append("pipeline")
        return send_pipeline(self, *args, **options)

    with (
        mock.patch.object(redis.Redis, "execute_command", command),
        mock.patch.object(redis.client.Pipeline, "execute", pipeline),
    ):
        yield trips
