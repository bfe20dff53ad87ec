"""A database of the sync benchmark's own, and tenants the sync can run for.

The sync benchmarks write rows, so unlike the others they need a real database. The server is
taken from `BENCH_DATABASE_URL`, else from `DATABASE_URL` when that is PostgreSQL; a fresh
database `bench_<name>_<random>` is created there, migrated, and dropped at the end. Without a
PostgreSQL URL a throw-away SQLite file is used (the output says which).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from bench.common import BenchSession
    from eshops.models import Eshop


def postgres_server_url() -> str | None:
    for name in ("BENCH_DATABASE_URL", "DATABASE_URL"):
        url = os.environ.get(name, "")
        if url.startswith(("postgres://", "postgresql://")):
            return url
    return None


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def describe(url: str) -> str:
    """The URL without its password, for the output."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


@contextlib.contextmanager
def own_database(name: str) -> Iterator[str]:
    """The URL of an empty database for this run (created here, dropped on the way out)."""
    server = postgres_server_url()
    if server is None:
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-db-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'sync.sqlite3'}"
        return
    import psycopg

    database = f"bench_{name}_{uuid.uuid4().hex[:10]}"
    admin = _with_database(server, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        yield _with_database(server, database)
    finally:
        with contextlib.suppress(Exception):
            from django.db import connections

            connections.close_all()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def migrate() -> None:
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)


def save_tenants(bench: BenchSession, count: int) -> list[Eshop]:
    """`count` installed e-shops saved in the database, their `url` the emulator's shop host
    (snapshot results are served there; `install_shops` gives a myshoptet.com URL)."""
    from django.utils import timezone

    shops = bench.install_shops(count)
    now = timezone.now()
    for shop in shops:
        shop.url = bench.emulator.shop_url(shop.eshop_id)
        shop.contact_email = f"owner@shop-{shop.eshop_id}.example"
        shop.installed_at = now
        shop.last_installed_at = now
        shop.save()
    return shops
