"""What one page costs: SQL queries and Redis round trips, counted (never timed)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from unittest import mock

import redis
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext


def page_cost(client: Client, url: str) -> tuple[int, int]:
    """(SQL queries, Redis round trips) of one GET of `url`, which must answer 200.

    Only this thread's Redis calls count: a background thread left by another test (a lease
    renewer, a worker) may talk to Redis meanwhile, and that is not the page's cost.
    """
    round_trips = 0
    page_thread = threading.get_ident()
    real_execute_command: Callable[..., Any] = redis.Redis.execute_command
    real_pipeline_execute = redis.client.Pipeline.execute

    def command(self: redis.Redis, *args: Any, **kwargs: Any) -> Any:
        nonlocal round_trips
        round_trips += threading.get_ident() == page_thread
        return real_execute_command(self, *args, **kwargs)

    def pipeline(self: redis.client.Pipeline, *args: Any, **kwargs: Any) -> Any:
        nonlocal round_trips
        round_trips += threading.get_ident() == page_thread
        return real_pipeline_execute(self, *args, **kwargs)

    with (
        CaptureQueriesContext(connection) as queries,
        mock.patch.object(redis.Redis, "execute_command", command),
        mock.patch.object(redis.client.Pipeline, "execute", pipeline),
    ):
        response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
    return len(queries), round_trips
