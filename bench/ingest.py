"""Ingest paths under gunicorn: webhook deliveries per second, and what the install callback adds.

One gunicorn started the production way (`gunicorn addon_project.wsgi`, the repo's gunicorn.conf.py:
gthread, WEB_CONCURRENCY workers x GUNICORN_THREADS threads, JSON logs at INFO, an access line per
request, prometheus multiprocess files), DEBUG unset, on a PostgreSQL database and a Celery queue
of this run's own. No Celery worker runs: intake is measured, the queue is checked afterwards.

  webhooks   signed deliveries (HMAC-SHA1 of the raw body with each tenant's key, exactly as
             Shoptet and the emulator sign), spread over --tenants installed e-shops, 1 in 20 a
             redelivery of an earlier one, from --senders keep-alive connections (closed loop);
  baseline   the same server answering GET /healthz (a view that does nothing: same URL routing,
             middleware, gunicorn config), from the same senders. Phases alternate A B B A.

Afterwards every delivery answered 200 must be one inbox row (redeliveries answered "duplicate"
and not stored twice) and one message in the run's Celery queue (each row's id exactly once).

  installs   GET /oauth/install/?code= for new e-shops through the same gunicorn while the
             emulator's token endpoint answers after L ms; callback time - L, sequentially and
             --install-concurrency at once, for L = 0 and L = --latency-ms.

Usage: python -m bench.ingest [--quick] [--seconds 6] [--senders 50] [--tenants 1000]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/ingest.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, sync_db
from bench.http_load import LoadPool, Outcome

NAME = "ingest"
TARGET_RATIO = 0.5
WEBHOOK_PATH = "/webhooks/shoptet/"
TRIVIAL_PATH = "/healthz"
TOKEN_PATH = "/action/ApiOAuthServer/token"  # noqa: S105 (a path, not a secret)
DUPLICATE_EVERY = 20
FIRST_TENANT = 900_001


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seconds", type=float, default=6.0, help="load per kind (two phases each)"
    )
    parser.add_argument("--senders", type=int, default=50, help="concurrent senders")
    parser.add_argument(
        "--client-processes", type=int, default=2, help="load generator processes"
    )
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--installs", type=int, default=40, help="per latency and mode")
    parser.add_argument("--install-concurrency", type=int, default=8)
    parser.add_argument(
        "--latency-ms", type=float, default=200.0, help="code-exchange latency L"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 0.6 s per kind, 3 installs"
    )
    args = parser.parse_args(argv)
    args.warm_up = 0.5
    if args.quick:
        args.seconds, args.installs, args.warm_up = 0.6, 3, 0.2
    if args.senders % args.client_processes:
        parser.error("--senders must be a multiple of --client-processes")
    return args


# --- the server ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_environment(
    bench: common.BenchSession, *, port: int, queue: str, workdir: Path
) -> dict[str, str]:
    """The benchmark's environment in production mode: DEBUG unset, real secrets, INFO logs."""
    env = {**os.environ}
    env.pop("DEBUG", None)
    env.update(
        {
            "SECRET_KEY": secrets.token_urlsafe(50),
            "ALLOWED_HOSTS": "127.0.0.1,localhost",
            "LOG_LEVEL": "INFO",
            "SHOPTET_REDIS_PREFIX": bench.prefix,
            "CELERY_TASK_DEFAULT_QUEUE": queue,
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
            # Every install comes from 127.0.0.1 here; the per-address limit would refuse most.
            "THROTTLE_INSTALL_PER_ADDRESS": "1000000/60",
        }
    )
    return env


@contextlib.contextmanager
def gunicorn(env: dict[str, str], port: int, log: Path) -> Iterator[int]:
    """`gunicorn addon_project.wsgi` from the project directory (so gunicorn.conf.py applies)."""
    binary = Path(sys.executable).parent / "gunicorn"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 (our own virtualenv's gunicorn)
            [str(binary), "addon_project.wsgi"],
            cwd=common.ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while get(port, TRIVIAL_PATH)[0] != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gunicorn did not start; see {log}")
            time.sleep(0.1)
        yield process.pid
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _stat(pid: int | str) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # from `state`: ppid is [1], utime [11]


def server_cpu_seconds(master: int) -> float:
    """CPU seconds gunicorn has used: the master, its reaped workers, and the live workers.

    Counted, not timed: on a machine shared with other work, CPU per request is the figure that
    the neighbours disturb least (throughput moves with their load).
    """
    fields = _stat(master)
    ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            child = _stat(entry.name)
            if int(child[1]) == master:
                ticks += int(child[11]) + int(child[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def get(port: int, path: str) -> tuple[int, bytes]:
    """One GET on a fresh connection, as a proxy in front would send it; (0, b"") if refused."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        connection.request("GET", path, headers={"X-Forwarded-Proto": "https"})
        response = connection.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        connection.close()


# --- webhooks ------------------------------------------------------------------------------------


def save_tenants(count: int) -> dict[int, str]:
    """`count` installed e-shops with a webhook signature key each: {eshop_id: key}."""
    from django.utils import timezone

    from eshops.models import Eshop

    now = timezone.now()
    keys = {FIRST_TENANT + n: secrets.token_hex(20) for n in range(count)}
    Eshop.objects.bulk_create(
        Eshop(
            eshop_id=eshop_id,
            url=f"https://shop-{eshop_id}.myshoptet.com/",
            webhook_signature_key=key,
            # Real tenants hold an OAuth token too (another encrypted column on the row).
            oauth_access_token=secrets.token_urlsafe(48),
            installed_at=now,
            last_installed_at=now,
            setup_completed_at=now,
        )
        for eshop_id, key in keys.items()
    )
    return keys


def raw_request(
    method: str, path: str, port: int, headers: dict[str, str], body: bytes
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def webhook_requests(
    keys: dict[int, str], count: int, port: int, *, first: int
) -> tuple[list[bytes], list[tuple[int, str]]]:
    """Signed deliveries numbered from `first`, and the (eshopId, eventInstance) of each.

    Every DUPLICATE_EVERY-th is a byte-for-byte redelivery of one sent a little earlier.
    """
    shops = list(keys)
    created = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")
    requests: list[bytes] = []
    identities: list[tuple[int, str]] = []
    for n in range(count):
        if n >= DUPLICATE_EVERY and n % DUPLICATE_EVERY == 0:
            requests.append(requests[n - DUPLICATE_EVERY + 1])
            identities.append(identities[n - DUPLICATE_EVERY + 1])
            continue
        eshop_id = shops[(first + n) % len(shops)]
        instance = f"BENCH{first + n:08d}"
        body = json.dumps(
            {
                "eshopId": eshop_id,
                "event": "order:create",
                "eventCreated": created,
                "eventInstance": instance,
            },
            separators=(",", ":"),
        ).encode()
        signature = hmac.new(keys[eshop_id].encode(), body, hashlib.sha1).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Shoptet",
            "X-Forwarded-Proto": "https",
            "Shoptet-Webhook-Signature": signature,
        }
        requests.append(raw_request("POST", WEBHOOK_PATH, port, headers, body))
        identities.append((eshop_id, instance))
    return requests, identities


def queued_event_ids(
    queue: str, expected: int, *, wait: float = 20.0
) -> tuple[list[int], int]:
    """The event ids in the run's Celery queue (process_webhooks messages carry a batch of
    [id, request id] pairs) and how many messages carry them; waits for late publishes."""
    from addon_project.redis_client import get_redis

    r = get_redis()
    deadline = time.monotonic() + wait
    while True:
        ids: list[int] = []
        messages = 0
        for message in r.lrange(queue, 0, -1):
            envelope = json.loads(message)
            if envelope["headers"]["task"] != "shoptet_api.process_webhooks":
                continue
            (deliveries,) = json.loads(base64.b64decode(envelope["body"]))[0]
            ids.extend(int(pk) for pk, _ in deliveries)
            messages += 1
        if len(ids) >= expected or time.monotonic() >= deadline:
            return ids, messages
        time.sleep(0.1)


def verify_deliveries(
    phases: list[tuple[Outcome, list[tuple[int, str]]]], queue: str
) -> dict[str, Any]:
    """Every delivery answered 200 is one row and one queued task; redeliveries only answered."""
    from shoptet_api.models import WebhookEvent

    answered: set[tuple[int, str]] = set()
    sent = ok = duplicates_answered = failed = 0
    for outcome, identities in phases:
        for index, status, _, duplicate in outcome.results:
            sent += 1
            if status != 200:
                failed += 1
                continue
            ok += 1
            duplicates_answered += duplicate
            answered.add(identities[index])
    stored = set(WebhookEvent.objects.values_list("eshop__eshop_id", "event_instance"))
    rows = WebhookEvent.objects.count()
    queued, messages = queued_event_ids(queue, rows)
    row_ids = set(WebhookEvent.objects.values_list("pk", flat=True))
    return {
        "sent": sent,
        "answered_200": ok,
        "not_200": failed,
        "answered_duplicate": duplicates_answered,
        "distinct_deliveries": len(answered),
        "inbox_rows": rows,
        "rows_match_deliveries": stored == answered and rows == len(answered),
        "duplicates_match": ok - duplicates_answered == rows,
        "queued_ids": len(queued),
        "queued_messages": messages,
        "queued_each_row_once": sorted(queued) == sorted(row_ids),
    }


# --- installs ------------------------------------------------------------------------------------


def install_once(port: int, code: str) -> tuple[int, float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    try:
        connection.request(
            "GET",
            f"/oauth/install/?code={code}",
            headers={"X-Forwarded-Proto": "https"},
        )
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        connection.close()


def measure_installs(
    bench: common.BenchSession,
    port: int,
    *,
    count: int,
    concurrency: int,
    latency: float,
) -> dict[str, Any]:
    emulator = bench.emulator
    emulator.set_latency(latency, TOKEN_PATH)
    try:
        codes = [emulator.issue_install_code() for _ in range(count)]
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            answers = list(pool.map(lambda code: install_once(port, code), codes))
    finally:
        emulator.set_latency(0, TOKEN_PATH)
    added_ms = [
        (seconds - latency) * 1000 for status, seconds in answers if status == 200
    ]
    return {
        "latency_ms": latency * 1000,
        "concurrency": concurrency,
        "installs": count,
        "not_200": sum(1 for status, _ in answers if status != 200),
        "added_median_ms": common.median(added_ms),
        "added_p99_ms": common.percentile(added_ms, 99),
    }


# --- the run -------------------------------------------------------------------------------------


def versus(metric: str, webhook: float, trivial: float) -> common.SummaryRow:
    """A webhook figure in milliseconds against the trivial view's."""
    return common.row(
        f"{metric} (webhook vs trivial)",
        round(webhook, 2),
        baseline=round(trivial, 2),
        ratio=common.safe_ratio(webhook, trivial),
        unit="ms",
    )


def latency_row(outcome_latencies: list[float]) -> tuple[float, float]:
    return (
        common.percentile(outcome_latencies, 50) * 1000,
        common.percentile(outcome_latencies, 99) * 1000,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # One key for this run, set before Django starts: the tenants' signature keys written here
    # must decrypt in gunicorn, which runs in production mode (no development key).
    os.environ["FIELD_ENCRYPTION_KEYS"] = base64.urlsafe_b64encode(
        secrets.token_bytes(32)
    ).decode()
    pool = LoadPool(
        processes=args.client_processes,
        connections=args.senders // args.client_processes,
    )
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    queue = f"bench-ingest-{uuid.uuid4().hex[:10]}"
    try:
        with (
            sync_db.own_database(NAME) as database_url,
            common.session(NAME, database_url=database_url) as bench,
        ):
            port = free_port()
            env = server_environment(bench, port=port, queue=queue, workdir=workdir)
            # /healthz touches no table: the workers boot while the database is migrated.
            with gunicorn(env, port, workdir / "gunicorn.log") as master:
                sync_db.migrate()
                keys = save_tenants(args.tenants)
                document = run(
                    args, bench, pool, port, master, keys, queue, database_url
                )
            with contextlib.suppress(Exception):
                from addon_project.redis_client import get_redis

                get_redis().delete(queue, f"_kombu.binding.{queue}")
    finally:
        pool.close()
        shutil.rmtree(workdir, ignore_errors=True)
    # A missed speed target is reported in the summary; lost, doubled or failed requests fail the run.
    return 0 if document["details"]["correct"] else 1


def run(
    args: argparse.Namespace,
    bench: common.BenchSession,
    pool: LoadPool,
    port: int,
    master: int,
    keys: dict[int, str],
    queue: str,
    database_url: str,
) -> dict[str, Any]:
    trivial = [
        raw_request("GET", TRIVIAL_PATH, port, {"X-Forwarded-Proto": "https"}, b"")
    ] * 200_000
    per_phase = max(2000, int(4000 * args.seconds / 2))
    webhook_phases: list[tuple[Outcome, list[tuple[int, str]]]] = []
    next_delivery = 0

    def webhooks(seconds: float) -> Outcome:
        nonlocal next_delivery
        requests, identities = webhook_requests(
            keys, per_phase, port, first=next_delivery
        )
        next_delivery += per_phase
        outcome = pool.run(
            "127.0.0.1", port, requests, seconds=seconds, marker=b"duplicate"
        )
        webhook_phases.append((outcome, identities))
        return outcome

    # Warm-up: every worker imports, connects and fills its caches before anything is timed.
    pool.run("127.0.0.1", port, trivial, seconds=args.warm_up)
    webhooks(args.warm_up)
    half = args.seconds / 2
    measured: dict[str, list[Outcome]] = {"trivial": [], "webhook": []}
    cpu = {"trivial": 0.0, "webhook": 0.0}
    for order in (("trivial", "webhook"), ("webhook", "trivial")):
        for kind in order:
            before = server_cpu_seconds(master)
            if kind == "trivial":
                measured[kind].append(
                    pool.run("127.0.0.1", port, trivial, seconds=half)
                )
            else:
                measured[kind].append(webhooks(half))
            cpu[kind] += server_cpu_seconds(master) - before

    def combined(kind: str) -> tuple[float, list[float], int]:
        outcomes = measured[kind]
        answered = sum(len(o.latencies()) for o in outcomes)
        elapsed = sum(o.elapsed for o in outcomes)
        errors = sum(
            1 for o in outcomes for _, status, _, _ in o.results if status != 200
        )
        return answered / elapsed, [x for o in outcomes for x in o.latencies()], errors

    trivial_rate, trivial_latencies, trivial_errors = combined("trivial")
    webhook_rate, webhook_latencies, webhook_errors = combined("webhook")
    trivial_cpu_ms = cpu["trivial"] * 1000 / max(1, len(trivial_latencies))
    webhook_cpu_ms = cpu["webhook"] * 1000 / max(1, len(webhook_latencies))
    checks = verify_deliveries(webhook_phases, queue)

    installs = [
        measure_installs(
            bench, port, count=args.installs, concurrency=concurrency, latency=latency
        )
        for latency in (0.0, args.latency_ms / 1000)
        for concurrency in (1, args.install_concurrency)
    ]

    ratio = common.safe_ratio(webhook_rate, trivial_rate)
    w50, w99 = latency_row(webhook_latencies)
    t50, t99 = latency_row(trivial_latencies)
    deliveries_ok = (
        checks["not_200"] == 0
        and checks["rows_match_deliveries"]
        and checks["duplicates_match"]
        and checks["queued_each_row_once"]
    )
    summary = [
        common.row(
            "webhook deliveries/s vs trivial requests/s",
            round(webhook_rate, 1),
            baseline=round(trivial_rate, 1),
            ratio=ratio,
            unit="req/s",
            target=f">= {TARGET_RATIO}",
            ok=ratio is not None and ratio >= TARGET_RATIO,
        ),
        versus("gunicorn CPU per request", webhook_cpu_ms, trivial_cpu_ms),
        versus(f"p50 latency at {args.senders} senders", w50, t50),
        versus(f"p99 latency at {args.senders} senders", w99, t99),
        common.row(
            "deliveries stored once and queued once (redeliveries deduplicated)",
            f"{checks['inbox_rows']} rows / {checks['answered_200']} answered",
            unit="",
            target="all",
            ok=deliveries_ok and trivial_errors == 0 and webhook_errors == 0,
        ),
    ]
    reference = installs[0]  # L = 0, one at a time
    for result in installs:
        label = f"install added over L={result['latency_ms']:.0f} ms, C={result['concurrency']}"
        summary.append(
            common.row(
                f"{label}: median",
                round(result["added_median_ms"], 1),
                baseline=round(reference["added_median_ms"], 1),
                unit="ms",
                ok=None if result["not_200"] == 0 else False,
            )
        )
        summary.append(
            common.row(
                f"{label}: p99",
                round(result["added_p99_ms"], 1),
                unit="ms",
                ok=None if result["not_200"] == 0 else False,
            )
        )
    return common.report(
        NAME,
        params={
            "seconds_per_kind": args.seconds,
            "senders": args.senders,
            "client_processes": args.client_processes,
            "tenants": args.tenants,
            "installs": args.installs,
            "install_concurrency": args.install_concurrency,
            "latency_ms": args.latency_ms,
            "web_concurrency": os.environ.get(
                "WEB_CONCURRENCY", "gunicorn.conf.py default"
            ),
            "database": sync_db.describe(database_url),
        },
        summary=summary,
        details={
            "trivial": {
                "cpu_ms_per_request": trivial_cpu_ms,
                "rate": trivial_rate,
                "p50_ms": t50,
                "p99_ms": t99,
                "errors": trivial_errors,
            },
            "webhook": {
                "cpu_ms_per_request": webhook_cpu_ms,
                "rate": webhook_rate,
                "p50_ms": w50,
                "p99_ms": w99,
                "errors": webhook_errors,
            },
            "deliveries": checks,
            "correct": deliveries_ok
            and trivial_errors == 0
            and webhook_errors == 0
            and all(result["not_200"] == 0 for result in installs),
            "installs": installs,
        },
        notes=[
            "gunicorn as in production: gunicorn.conf.py, DEBUG unset, JSON logs at INFO, "
            "prometheus multiprocess files; requests carry X-Forwarded-Proto: https as a proxy's would.",
            "No Celery worker runs: intake is measured; the queue is read afterwards.",
            f"Baseline: GET {TRIVIAL_PATH} (returns a constant JSON, touches nothing).",
            "CPU per request counts the gunicorn processes only (not PostgreSQL or Redis), and "
            "includes worker recycling (max_requests 2000: a worker's boot is ~1 s of CPU).",
            "What bounds the ratio (profiles in the commit messages): per delivery the Django ORM "
            "and request machinery (~2.5 ms CPU in-process) against ~0.5 ms for the trivial view; "
            "a Celery publish (~1.1 ms CPU, kombu + redis-py) is shared by the deliveries that "
            "arrive together (process_webhooks batches, see queued_messages vs queued_ids).",
            "Install: THROTTLE_INSTALL_PER_ADDRESS raised (every install comes from 127.0.0.1); "
            "added = callback time - L, measured by the client, fresh connection per install.",
        ],
    )


if __name__ == "__main__":
    sys.exit(main())
