"""Liveness and readiness probes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError
from django.test import Client

from addon_project.redis_client import get_redis


@pytest.fixture
def fresh_redis_client() -> Iterator[None]:
    get_redis.cache_clear()
    yield
    get_redis.cache_clear()


def test_healthz_answers_without_touching_dependencies(client: Client) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_ok_when_database_and_redis_answer(client: Client) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "redis": "ok"}


@pytest.mark.django_db
@pytest.mark.usefixtures("fresh_redis_client")
def test_readyz_names_redis_when_it_is_down(client: Client, settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["redis"] == "unavailable"
    assert response.json()["database"] == "ok"


@pytest.mark.django_db
def test_readyz_names_the_database_when_it_is_down(client: Client) -> None:
    with mock.patch(
        "addon_project.health.connection.cursor", side_effect=OperationalError("down")
    ):
        response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["database"] == "unavailable"
