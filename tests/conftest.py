"""Shared fixtures. The Shoptet emulator fixtures come from `shoptet_emulator.testing` (a pytest
plugin loaded in pyproject's addopts)."""

from __future__ import annotations

import ipaddress
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from django.utils import timezone

from addon_project.celery import app as celery_app
from addon_project.redis_client import get_redis
from eshops.models import Eshop
from oauth.services import install_addon
from shoptet_api import tokens
from shoptet_emulator import ShoptetEmulator


def pytest_sessionstart(session: pytest.Session) -> None:
    """Say clearly what is missing before hundreds of tests fail for one reason."""
    import redis
    from django.conf import settings

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.exit(
            f"Redis is not reachable at REDIS_URL={settings.REDIS_URL} ({type(exc).__name__}). "
            "Start one, e.g. `redis-server --daemonize yes` (Debian/Ubuntu package: redis-server).",
            returncode=3,
        )
    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.sqlite3":
        host, port = (
            database.get("HOST") or "127.0.0.1",
            int(database.get("PORT") or 5432),
        )
        try:
            socket.create_connection((host, port), timeout=2).close()
        except OSError as exc:
            pytest.exit(
                f"The database in DATABASE_URL is not reachable at {host}:{port} ({exc.strerror or exc}). "
                "Start PostgreSQL, or unset DATABASE_URL to test on SQLite.",
                returncode=3,
            )


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _refuse_non_loopback(address: Any) -> None:
    if isinstance(address, tuple):
        host = address[0]
        try:
            is_loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            is_loopback = host == "localhost"
        if not is_loopback:
            raise ConnectionRefusedError(
                f"tests may only connect to loopback, not {host}"
            )


def _guarded_connect(self: socket.socket, address: Any) -> None:
    _refuse_non_loopback(address)
    _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    _refuse_non_loopback(address)
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def _no_traffic_beyond_loopback() -> Iterator[None]:
    """No test may reach anything but this machine (STYLE.md §9)."""
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign,assignment]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign,assignment]
    yield
    socket.socket.connect = _real_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _real_connect_ex  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def redis_namespace() -> Iterator[str]:
    """A key prefix of this test session's own; its keys are deleted at the end (Redis is shared)."""
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    yield namespace
    r = get_redis()
    batch = list(r.scan_iter(match=f"{namespace}:*", count=1000))
    for start in range(0, len(batch), 500):
        r.delete(*batch[start : start + 500])


@pytest.fixture(autouse=True)
def _isolated_token_store(settings: Any, redis_namespace: str) -> Iterator[None]:
    """Each test gets its own Redis key prefix and an empty per-process token cache."""
    settings.SHOPTET_REDIS_PREFIX = f"{redis_namespace}:{uuid.uuid4().hex[:8]}"
    tokens.clear_process_cache()
    yield
    tokens.clear_process_cache()


@pytest.fixture
def shoptet_settings(
    settings: Any, shoptet_emulator: ShoptetEmulator
) -> ShoptetEmulator:
    """Point every SHOPTET_* setting at the emulator; returns the emulator."""
    settings.SHOPTET_CLIENT_ID = shoptet_emulator.client_id
    settings.SHOPTET_CLIENT_SECRET = shoptet_emulator.client_secret
    settings.SHOPTET_REDIRECT_URI = shoptet_emulator.redirect_uri
    settings.SHOPTET_OAUTH_URL = shoptet_emulator.oauth_url
    settings.SHOPTET_API_URL = shoptet_emulator.api_url
    return shoptet_emulator


@pytest.fixture
def install(shoptet_settings: ShoptetEmulator) -> Callable[..., Eshop]:
    """Install a tenant the emulator knows through the real install flow (exchange + upsert);
    keyword arguments go to `ShoptetEmulator.add_eshop`. Post-install setup does not run here."""

    def installed(**shop: Any) -> Eshop:
        emulated = shoptet_settings.add_eshop(**shop)
        return install_addon(
            code=shoptet_settings.issue_install_code(emulated.eshop_id)
        )

    return installed


@pytest.fixture
def eshop_factory(db: None) -> Callable[..., Eshop]:
    """Create a tenant directly (no install round trip)."""
    counter = iter(range(900_001, 999_999))

    def create(**fields: Any) -> Eshop:
        eshop_id = fields.pop("eshop_id", next(counter))
        now = timezone.now()
        defaults: dict[str, Any] = {
            "url": f"https://shop-{eshop_id}.myshoptet.com/",
            "contact_email": f"owner@shop-{eshop_id}.example",
            "oauth_access_token": f"oauth-token-{eshop_id}-" + "x" * 40,
            "installed_at": now,
            "last_installed_at": now,
        }
        defaults.update(fields)
        return Eshop.objects.create(eshop_id=eshop_id, **defaults)

    return create


@pytest.fixture
def eshop(eshop_factory: Callable[..., Eshop]) -> Eshop:
    return eshop_factory()


@pytest.fixture
def real_worker() -> Iterator[None]:
    """A Celery worker thread consuming a queue of this test's own on the real Redis broker.

    Tests that use it need `django_db(transaction=True)`: the worker has its own connection.
    """
    queue = f"test-{uuid.uuid4().hex[:10]}"
    saved = {
        key: celery_app.conf[key] for key in ("task_always_eager", "task_default_queue")
    }
    celery_app.conf.update(task_always_eager=False, task_default_queue=queue)
    # Celery caches its queue declarations on first use: a worker started earlier in this
    # process would leave them pointing at that worker's queue. Start afresh, and clean up.
    celery_app.__dict__.pop("amqp", None)
    try:
        with start_worker(
            celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10
        ):
            yield
    finally:
        celery_app.conf.update(saved)
        celery_app.__dict__.pop("amqp", None)
