"""Cost that grows with active tenants, not all tenants: beat sweeps, operator pages, settings page,
Redis memory, at 100,000 tenant rows (10 % of them active) against 1,000 rows in the same run.

One PostgreSQL database of the benchmark's own (bench/sync_db.py) is seeded by COPY to the small
size, measured, then grown to the large size and measured again (ANALYZE after each), so both
sizes run the same code on the same server minutes apart. Tenants: 85 % status active, 5 % each
suspended, terminated and uninstalled (with their lifecycle transition); the "API-active" 10 %
have a token, an issued-set entry and an activity entry in Redis (copied from one tenant that
made a real API call against the emulator; a healthy tenant has no health hash), addon settings with sync on, a SyncState
that synced recently and one processed webhook event; 0.5 % have missing rights, 0.1 % failing
renewals, 0.1 % unfinished setup.

For each beat task and page: SQL queries, Redis round trips and commands, median time of a few
runs (large ÷ small = ratio; ~1 is the goal). Beat tasks run in this process with enqueueing
replaced by a counter; every SELECT they run is EXPLAINed (ANALYZE, BUFFERS): the scans, whether a
big table is read sequentially, and the rows examined. Redis: MEMORY USAGE of every key one
active tenant holds, their TTLs, and bytes per member of the global activity set.

Usage: python -m bench.tenant_scale [--tenants 100000] [--small 1000] [--repeat 5] [--quick]
       (--quick: 5,000 vs 500 tenants, 2 repeats). Needs PostgreSQL (BENCH_DATABASE_URL or
       DATABASE_URL), e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

if __package__ in (None, ""):  # run as a file: python bench/tenant_scale.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, sync_db

NAME = "tenant_scale"
ACTIVE_SHARE = 0.10  # API-active: token in Redis, recent activity, syncing
# Target of the query-count and time ratios (large ÷ small).
TIME_RATIO_TARGET = 1.5
BYTES_PER_ACTIVE_TARGET = 1024
# A sequential scan reading fewer rows than this is not a scaling problem (tiny tables).
SEQ_SCAN_NOTICE_ROWS = 2000
# Transaction control around a beat task (run in a transaction rolled back afterwards).
TRANSACTION_STATEMENTS = ("BEGIN", "ROLLBACK", "SAVEPOINT", "RELEASE SAVEPOINT")
DASHBOARD_AFRESH = "operator dashboard, counts made afresh"
# Pages whose SELECTs are EXPLAINed, like the beat tasks'.
EXPLAINED_PAGES = [
    "operator dashboard",
    DASHBOARD_AFRESH,
    "admin tenant list",
    "admin tenant list, search id",
    "admin tenant list, search text",
]
BEAT_TASKS = [
    "shoptet_api.renew_expiring_tokens",
    "shoptet_api.complete_pending_installs",
    "shoptet_api.redeliver_webhooks",
    "shoptet_api.reconcile_webhooks",
    "shoptet_api.purge_uninstalled",
    "sync.schedule_due",
    "sync.sweep_jobs",
    "eshops.beat_heartbeat",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--quick", action="store_true", help="5,000 vs 500 tenants, 2 repeats"
    )
    args = parser.parse_args(argv)
    if args.quick:
        # Most of a run is rendering admin pages, whatever the size: fewer repeats matter most.
        args.tenants, args.small, args.repeat = 5_000, 500, 2
    return args


# --- counting ------------------------------------------------------------------------------------


@dataclass
class Cost:
    queries: int = 0
    round_trips: int = 0
    commands: int = 0
    sql: list[str] = field(default_factory=list)


@contextlib.contextmanager
def counted() -> Iterator[Cost]:
    """SQL queries, Redis round trips and Redis commands made by this thread inside the block."""
    import redis
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    cost = Cost()
    me = threading.get_ident()
    real_command: Callable[..., Any] = redis.Redis.execute_command
    real_pipeline = redis.client.Pipeline.execute

    def command(self: redis.Redis, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == me:
            cost.round_trips += 1
            cost.commands += 1
        return real_command(self, *args, **kwargs)

    def pipeline(self: redis.client.Pipeline, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == me and self.command_stack:
            cost.round_trips += 1
            cost.commands += len(self.command_stack)
        return real_pipeline(self, *args, **kwargs)

    with (
        CaptureQueriesContext(connection) as queries,
        mock.patch.object(redis.Redis, "execute_command", command),
        mock.patch.object(redis.client.Pipeline, "execute", pipeline),
    ):
        yield cost
    # The transaction a beat task runs in is the benchmark's, not the task's.
    cost.sql = [
        query["sql"]
        for query in queries.captured_queries
        if not query["sql"].startswith(TRANSACTION_STATEMENTS)
    ]
    cost.queries = len(cost.sql)


@dataclass
class Measured:
    name: str
    queries: int
    round_trips: int
    commands: int
    median_ms: float
    result: Any = None
    sql: list[str] = field(default_factory=list)


def measure(
    name: str,
    run: Callable[[], Any],
    repeat: int,
    prepare: Callable[[], Any] | None = None,
) -> Measured:
    """Cost of the first run (warm caches aside, the same every time) and the median time of all.

    `prepare` runs before each run, neither counted nor timed."""
    times = []
    first: Cost | None = None
    result = None
    for _ in range(repeat):
        if prepare is not None:
            prepare()
        start = time.perf_counter()
        with counted() as cost:
            result = run()
        times.append(time.perf_counter() - start)
        first = first or cost
    assert first is not None
    return Measured(
        name,
        first.queries,
        first.round_trips,
        first.commands,
        statistics.median(times) * 1000,
        result,
        first.sql,
    )


# --- seeding -------------------------------------------------------------------------------------


@dataclass
class Seeded:
    count: int = 0
    active_ids: list[int] = field(default_factory=list)  # API-active eshop_ids
    token_template: dict[Any, Any] = field(default_factory=dict)
    token_ttl_ms: int = 1_800_000
    ciphertext: str = ""


def _kind(index: int) -> str:
    """Which sort of tenant the index-th row is (deterministic, spread over the id range)."""
    bucket = index % 100
    if bucket < 5:
        return "suspended"
    if bucket < 10:
        return "terminated"
    if bucket < 15:
        return "uninstalled"
    if bucket < 15 + round(ACTIVE_SHARE * 100):
        return "api-active"
    return "active"


def seed(seeded: Seeded, upto: int, first_id: int) -> None:
    """Grow the tenant table (and what hangs off it) from `seeded.count` to `upto` rows."""
    from django.db import connection
    from django.utils import timezone

    now = timezone.now()
    installed = now - dt.timedelta(days=30)
    start = seeded.count
    eshop_rows = []
    for i in range(start, upto):
        kind = _kind(i)
        status = "active" if kind in ("active", "api-active") else kind
        eshop_id = first_id + i
        pending = i % 1000 == 999
        eshop_rows.append(
            (
                eshop_id,
                f"https://shop-{eshop_id}.myshoptet.com/",
                f"owner@shop-{eshop_id}.example",
                f"Shop {eshop_id}",
                status,
                None,
                None if status == "uninstalled" else seeded.ciphertext,
                installed,
                "" if status == "active" else f"addon:{status[:-2]}",
                None if status == "active" else now - dt.timedelta(days=2),
                None,
                "",
                None,
                None,
                None,
                None,
                "",
                "{}",
                '{"GET /api/orders": "2026-11-30T04:15:09+00:00"}'
                if i % 200 == 7
                else "{}",
                installed,
                installed,
                1,
                now - dt.timedelta(days=2) if status == "uninstalled" else None,
                None if pending else installed + dt.timedelta(seconds=5),
                installed,
                now,
            )
        )
    columns = (
        "eshop_id, url, contact_email, name, status, trial, oauth_access_token, "
        "oauth_token_received_at, status_reason, status_changed_at, processing_paused_at, "
        "processing_paused_by, lifecycle_event_at, webhook_signature_key, previous_signature_key, "
        "signature_key_renewed_at, admin_oauth_url, webhooks, missing_rights, installed_at, "
        "last_installed_at, install_count, uninstalled_at, setup_completed_at, created_at, updated_at"
    )
    with connection.cursor() as cursor:
        raw = cursor.cursor
        with raw.copy(f"COPY eshops_eshop ({columns}) FROM STDIN") as copy:
            for line in eshop_rows:
                copy.write_row(line)
        raw.execute(
            "SELECT id, eshop_id, status FROM eshops_eshop WHERE eshop_id >= %s",
            [first_id + start],
        )
        rows = raw.fetchall()
        pks = {eshop_id: pk for pk, eshop_id, _ in rows}
        new_active = [
            first_id + i for i in range(start, upto) if _kind(i) == "api-active"
        ]
        lost = [(pk, status) for pk, _, status in rows if status != "active"]
        with raw.copy(
            "COPY eshops_eshoptransition (eshop_id, from_status, to_status, reason, source, "
            "actor, occurred_at, created_at) FROM STDIN"
        ) as copy:
            for pk, status in lost:
                when = now - dt.timedelta(days=2)
                copy.write_row(
                    (pk, "active", status, "bench", "webhook", "", when, when)
                )
        with raw.copy(
            "COPY eshops_eshopsettings (eshop_id, sync_orders, sync_products, "
            "sync_interval_minutes, notification_email, updated_at) FROM STDIN"
        ) as copy:
            for i in range(start, upto):
                kind = _kind(i)
                # The syncing tenants, and as many again who opened the page and left sync off.
                if kind == "api-active" or (kind == "active" and i % 100 < 15 + 20):
                    copy.write_row(
                        (pks[first_id + i], kind == "api-active", False, 60, "", now)
                    )
        with raw.copy(
            "COPY sync_syncstate (eshop_id, resource, mode, phase, checkpoint, "
            "full_requested, items_done, items_stored, items_deleted, item_errors, "
            "recent_item_errors, last_success_at, changes_from, last_error, updated_at) "
            "FROM STDIN"
        ) as copy:
            for n, eshop_id in enumerate(new_active):
                # Synced hourly, 0-60 minutes ago: one in seven is due now.
                done = now - dt.timedelta(minutes=n % 7 * 10, seconds=30)
                copy.write_row(
                    (pks[eshop_id], "orders", "incremental", "idle", "{}", False, 0, 10,
                     0, 0, "[]", done, done, "", done)
                )  # fmt: skip
        with raw.copy(
            "COPY shoptet_api_webhookevent (eshop_id, event, event_instance, event_created, "
            "dedup_key, raw_body, headers, verified_by, status, attempts, last_error, result, "
            "received_at) FROM STDIN"
        ) as copy:
            for n, eshop_id in enumerate(new_active):
                at = now - dt.timedelta(minutes=30)
                failed = n % 1000 == 3
                copy.write_row(
                    (pks[eshop_id], "order:create", f"O{n}", at, f"bench-{eshop_id}",
                     "{}", "{}", "signature", "dead" if failed else "processed",
                     1, "boom" if failed else "", "", at)
                )  # fmt: skip
    # What autovacuum does in production: statistics, and the visibility map index-only scans use.
    connection.ensure_connection()
    connection.connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "VACUUM ANALYZE eshops_eshop, eshops_eshoptransition, eshops_eshopsettings, "
                "sync_syncstate, shoptet_api_webhookevent"
            )
    finally:
        connection.connection.autocommit = connection.get_autocommit()
    seed_redis(seeded, new_active)
    seeded.active_ids.extend(new_active)
    seeded.count = upto


def seed_redis(seeded: Seeded, eshop_ids: list[int]) -> None:
    """What an active tenant holds in Redis, copied from the one that called the API for real."""
    from addon_project.redis_client import get_redis
    from addon_project.redis_keys import issued_key, token_key
    from shoptet_api.tokens import health

    r = get_redis()
    now = time.time()
    for start in range(0, len(eshop_ids), 2000):
        pipe = r.pipeline(transaction=False)
        for eshop_id in eshop_ids[start : start + 2000]:
            pipe.hset(token_key(eshop_id), mapping=seeded.token_template)
            pipe.pexpire(token_key(eshop_id), seeded.token_ttl_ms)
            pipe.zadd(issued_key(eshop_id), {f"bench:{eshop_id}": now + 1800})
            pipe.pexpire(issued_key(eshop_id), seeded.token_ttl_ms + 60_000)
            pipe.zadd(token_activity_key_(), {str(eshop_id): now})
        pipe.execute()
    for eshop_id in eshop_ids[3::1000]:  # 0.1 %: their last renewals failed
        for _ in range(3):
            health.note_failure(r, eshop_id, RuntimeError("bench: Shoptet said 500"))


def token_activity_key_() -> str:
    from addon_project.redis_keys import token_activity_key

    return token_activity_key()


def real_active_tenant(bench: common.BenchSession, first_id: int) -> Any:
    """One tenant that calls the API through the real client: the Redis state of an active tenant."""
    from eshops.models import Eshop
    from shoptet_api.client import ShoptetClient

    eshop_id = first_id - 1
    (oauth_token,) = bench.host.install([eshop_id])
    eshop = Eshop.objects.create(
        eshop_id=eshop_id,
        url=f"https://shop-{eshop_id}.myshoptet.com/",
        oauth_access_token=oauth_token,
        installed_at=dt.datetime.now(tz=dt.UTC),
        last_installed_at=dt.datetime.now(tz=dt.UTC),
    )
    with ShoptetClient(eshop) as client:
        client.get("/api/eshop")
    return eshop


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def redis_memory(eshop_id: int, active_count: int) -> dict[str, Any]:
    """MEMORY USAGE and TTL of every key of one active tenant, and of the global activity set."""
    from django.conf import settings

    from addon_project.redis_client import get_redis

    r = get_redis()
    prefix = settings.SHOPTET_REDIS_PREFIX
    keys = sorted(
        _text(key) for key in r.scan_iter(match=f"{prefix}:{{eshop:{eshop_id}}}*")
    )
    per_key: dict[str, dict[str, Any]] = {
        key.split("}", 1)[1].lstrip(":"): {
            "bytes": int(r.memory_usage(key, samples=0) or 0),
            "ttl_s": int(r.ttl(key)),
            "type": _text(r.type(key)),
        }
        for key in keys
    }
    activity = token_activity_key_()
    members = int(r.zcard(activity))
    activity_bytes = int(r.memory_usage(activity, samples=0) or 0)
    per_member = activity_bytes / members if members else 0.0
    own = sum(item["bytes"] for item in per_key.values())
    return {
        "keys": per_key,
        "tenant_keys_bytes": own,
        "activity_members": members,
        "activity_bytes_per_member": round(per_member, 1),
        "bytes_per_active_tenant": round(own + per_member),
        "keys_without_ttl": [
            name for name, item in per_key.items() if item["ttl_s"] < 0
        ],
        "active_tenants_in_redis": active_count,
    }


# --- EXPLAIN -------------------------------------------------------------------------------------


SCANS = {"Seq Scan", "Index Scan", "Index Only Scan", "Bitmap Index Scan"}


def explain(sql: str) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of one SELECT, in a transaction rolled back: its scans."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}")
        (plan,) = cursor.fetchone()
        transaction.set_rollback(True)
    if isinstance(plan, str):
        plan = json.loads(plan)
    scans: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        if node["Node Type"] in SCANS or node["Node Type"] == "Bitmap Heap Scan":
            loops = int(node.get("Actual Loops", 1))
            examined = (
                int(node.get("Rows Removed by Filter", 0))
                + int(node.get("Rows Removed by Index Recheck", 0))
                + (int(node.get("Actual Rows", 0)) if node["Node Type"] in SCANS else 0)
            ) * loops
            scans.append(
                {
                    "node": node["Node Type"],
                    "relation": node.get("Relation Name"),
                    "index": node.get("Index Name"),
                    "rows_examined": examined,
                }
            )
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return {
        "sql": sql[:300],
        "scans": scans,
        "rows_examined": sum(scan["rows_examined"] for scan in scans),
        "big_seq_scans": [
            scan["relation"]
            for scan in scans
            if scan["node"] == "Seq Scan"
            and scan["rows_examined"] >= SEQ_SCAN_NOTICE_ROWS
        ],
        "ms": plan[0].get("Execution Time"),
    }


# --- what is measured ----------------------------------------------------------------------------


def run_beat_task(name: str) -> int:
    """Run one beat task here; what it would enqueue is counted, not sent."""
    from celery import current_app
    from celery.app.task import Task
    from django.db import transaction

    enqueued = 0

    def count(self: Task[Any, Any], *args: Any, **kwargs: Any) -> None:
        nonlocal enqueued
        enqueued += 1

    # Rolled back: every repetition finds the same work (schedule_due marks what it queues).
    with mock.patch.object(Task, "apply_async", count), transaction.atomic():
        current_app.tasks[name].run()
        transaction.set_rollback(True)
    return enqueued


def pages(seeded: Seeded, first_id: int) -> dict[str, str]:
    from django.urls import reverse

    from eshops.models import Eshop
    from eshops.settings_session import SettingsSession
    from sync.models import SyncState

    eshop_id = seeded.active_ids[len(seeded.active_ids) // 2]
    pk = Eshop.objects.get(eshop_id=eshop_id).pk
    token = SettingsSession(
        eshop_id=eshop_id, user_email="a@b.c", user_name="Admin", language="cs"
    ).sign()
    state_pk = SyncState.objects.filter(eshop_id=pk).values_list("pk", flat=True)[0]
    changelist = reverse("admin:eshops_eshop_changelist")
    return {
        "admin tenant list": changelist,
        "admin tenant list, page 5": f"{changelist}?p=5",
        "admin tenant list, status=active": f"{changelist}?status__exact=active",
        "admin tenant list, missing rights": f"{changelist}?missing_rights=yes",
        "admin tenant list, setup not done": f"{changelist}?setup_completed=no",
        "admin tenant list, search id": f"{changelist}?q={eshop_id}",
        "admin tenant list, search text": f"{changelist}?q=owner%40shop-{eshop_id}",
        "admin tenant page": reverse("admin:eshops_eshop_change", args=[pk]),
        "operator dashboard": reverse("operator-dashboard"),
        DASHBOARD_AFRESH: reverse("operator-dashboard"),
        "admin sync states": reverse("admin:sync_syncstate_changelist"),
        "admin sync states, failing": reverse("admin:sync_syncstate_changelist")
        + "?health=failing",
        "admin sync state page": reverse(
            "admin:sync_syncstate_change", args=[state_pk]
        ),
        "settings page": f"{reverse('eshops:settings_page')}?s={token}",
    }


def measure_size(
    seeded: Seeded, first_id: int, repeat: int, client: Any, *, warm_up: bool
) -> dict[str, Measured]:
    results: dict[str, Measured] = {}
    for name in BEAT_TASKS:
        results[name] = measure(name, functools.partial(run_beat_task, name), repeat)
    for name, url in pages(seeded, first_id).items():

        def get(url: str = url, name: str = name) -> int:
            response = client.get(url)
            if response.status_code != 200:
                raise RuntimeError(f"{name}: {url} answered {response.status_code}")
            return len(response.content)

        if warm_up:
            get()  # templates, sessions: the process's first-time costs
        results[name] = measure(name, get, repeat, PREPARE.get(name))
    return results


def forget_dashboard_counts() -> None:
    from addon_project.redis_client import get_redis
    from addon_project.redis_keys import dashboard_counts_key

    get_redis().delete(dashboard_counts_key())


def keep_dashboard_counts() -> None:
    from django.utils import timezone

    from eshops.dashboard import dashboard_counts

    dashboard_counts(now=timezone.now())  # made now unless already kept


# The dashboard's counts are kept for 30 s: its page is measured with them kept and made afresh.
PREPARE: dict[str, Callable[[], Any]] = {
    "operator dashboard": keep_dashboard_counts,
    DASHBOARD_AFRESH: forget_dashboard_counts,
}


def explain_tasks(results: dict[str, Measured]) -> dict[str, list[dict[str, Any]]]:
    plans: dict[str, list[dict[str, Any]]] = {}
    for name in [*BEAT_TASKS, *EXPLAINED_PAGES]:
        plans[name] = [
            explain(sql)
            for sql in results[name].sql
            if sql.lstrip().upper().startswith("SELECT")
        ]
    return plans


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if sync_db.postgres_server_url() is None:
        raise SystemExit(
            "tenant_scale needs PostgreSQL: set BENCH_DATABASE_URL or DATABASE_URL"
        )
    with (
        sync_db.own_database(NAME) as database_url,
        common.session(NAME, database_url=database_url) as bench,
    ):
        return run(bench, args, database_url)


def run(bench: common.BenchSession, args: argparse.Namespace, database_url: str) -> int:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    from addon_project.encryption import encrypt
    from addon_project.redis_client import get_redis
    from addon_project.redis_keys import token_key

    started = time.perf_counter()
    # Key names as long as production's ("shoptet:{eshop:…}"), so MEMORY USAGE counts the same.
    bench.prefixes.append(f"st{uuid.uuid4().hex[:5]}")
    settings.SHOPTET_REDIS_PREFIX = bench.prefix
    sync_db.migrate()
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    first_id = bench.next_eshop_id + 1
    real = real_active_tenant(bench, first_id)
    r = get_redis()
    seeded = Seeded(
        token_template=r.hgetall(token_key(real.eshop_id)),
        token_ttl_ms=max(1, int(r.pttl(token_key(real.eshop_id)))),
        ciphertext=encrypt("bench-oauth-token"),
    )
    memory = redis_memory(real.eshop_id, 1)
    user = get_user_model().objects.create_superuser("bench", "bench@example.com", "x")
    client = Client()
    client.force_login(user)
    # The dashboard pings the workers (up to 0.5 s, no worker here): not a tenant-count cost.
    ping = mock.patch("eshops.dashboard.celery_app.control.ping", return_value=[])

    by_size: dict[int, dict[str, Measured]] = {}
    plans: dict[int, dict[str, list[dict[str, Any]]]] = {}
    seed_seconds: dict[int, float] = {}
    with ping:
        for size in (args.small, args.tenants):
            t0 = time.perf_counter()
            seed(seeded, size, first_id)
            seed_seconds[size] = round(time.perf_counter() - t0, 2)
            forget_dashboard_counts()  # counted at the previous size
            by_size[size] = measure_size(
                seeded, first_id, args.repeat, client, warm_up=size == args.small
            )
            plans[size] = explain_tasks(by_size[size])
    memory_large = redis_memory(real.eshop_id, len(seeded.active_ids))
    small, large = by_size[args.small], by_size[args.tenants]

    lines = []
    summary = []
    for name in small:
        a, b = small[name], large[name]
        seq = sorted(
            {
                rel
                for plan in plans[args.tenants].get(name, [])
                for rel in plan["big_seq_scans"]
            }
        )
        examined = sum(
            plan["rows_examined"] for plan in plans[args.tenants].get(name, [])
        )
        lines.append(
            [name, a.queries, b.queries, a.commands, b.commands, a.round_trips,
             b.round_trips, round(a.median_ms, 2), round(b.median_ms, 2),
             common.safe_ratio(b.median_ms, a.median_ms),
             examined if name in plans[args.tenants] else None,
             ", ".join(seq) or "-" if name in plans[args.tenants] else None]
        )  # fmt: skip
        constant = a.queries == b.queries and a.round_trips == b.round_trips
        # A beat task's work grows with the active tenants (10 % of the rows) by design; what
        # must not grow is what it reads beyond them (the scans below).
        task = name in BEAT_TASKS
        summary.append(
            common.row(
                f"{name}: SQL queries / Redis round trips at {args.tenants:,}",
                f"{b.queries} / {b.round_trips}",
                baseline=f"{a.queries} / {a.round_trips}",
                unit="count",
                target="equal",
                ok=None if task else constant,
            )
        )
        ratio = common.safe_ratio(b.median_ms, a.median_ms)
        summary.append(
            common.row(
                f"{name}: time",
                round(b.median_ms, 2),
                baseline=round(a.median_ms, 2),
                ratio=None if ratio is None else round(ratio, 2),
                unit="ms",
                target="" if task else f"ratio <= {TIME_RATIO_TARGET}",
                ok=None if ratio is None or task else ratio <= TIME_RATIO_TARGET,
            )
        )
    for name, task_plans in plans[args.tenants].items():
        seq = sorted({rel for plan in task_plans for rel in plan["big_seq_scans"]})
        summary.append(
            common.row(
                f"{name}: big sequential scans at {args.tenants:,}",
                ", ".join(seq) or "none",
                unit="tables",
                target="none",
                ok=not seq,
            )
        )
    summary.append(
        common.row(
            "Redis bytes per active tenant",
            memory_large["bytes_per_active_tenant"],
            unit="bytes",
            target=f"<= {BYTES_PER_ACTIVE_TARGET}",
            ok=memory_large["bytes_per_active_tenant"] <= BYTES_PER_ACTIVE_TARGET,
        )
    )
    summary.append(
        common.row(
            "per-tenant Redis keys without a TTL",
            ", ".join(memory_large["keys_without_ttl"]) or "none",
            target="none",
            ok=not memory_large["keys_without_ttl"],
        )
    )
    common.report(
        NAME,
        params={
            "tenants": args.tenants,
            "baseline_tenants": args.small,
            "active_share": ACTIVE_SHARE,
            "repeat": args.repeat,
            "database": sync_db.describe(database_url),
            "quick": args.quick,
            "seconds": round(time.perf_counter() - started, 1),
        },
        summary=summary,
        details={
            "seed_seconds": seed_seconds,
            "redis_memory_one_tenant_alone": memory,
            "redis_memory": memory_large,
            "plans": {str(size): plan for size, plan in plans.items()},
            "enqueued": {
                str(size): {
                    name: m.result
                    for name, m in by_size[size].items()
                    if name in BEAT_TASKS
                }
                for size in by_size
            },
        },
        notes=[
            "Each figure: SQL queries, Redis commands and round trips of one run; time is the "
            f"median of {args.repeat} runs. Beat tasks run in this process, enqueueing counted.",
            "rows examined and seq scans come from EXPLAIN (ANALYZE, BUFFERS) of every SELECT at "
            f"the large size; a sequential scan of fewer than {SEQ_SCAN_NOTICE_ROWS} rows is ignored.",
            "The dashboard's worker ping (up to 0.5 s without a worker) is stubbed: it does not "
            "depend on tenants.",
        ],
        tables={
            f"per task and page: {args.small:,} -> {args.tenants:,} tenant rows": (
                [
                    "what",
                    "sql",
                    "sql",
                    "redis cmds",
                    "redis cmds",
                    "round trips",
                    "round trips",
                    "ms",
                    "ms",
                    "time ratio",
                    "rows examined",
                    "big seq scans",
                ],
                lines,
            ),
            "Redis keys of one active tenant": (
                ["key", "type", "bytes", "ttl s"],
                [
                    [k, v["type"], v["bytes"], v["ttl_s"]]
                    for k, v in memory_large["keys"].items()
                ],
            ),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
