"""How long renewing 10,000 tokens that expire together takes, against the ideal and bare calls.

The production path (the default): 10,000 installed shops (database rows) each hold one API token
in Redis, all due now. The real beat task `shoptet_api.renew_expiring_tokens` runs here and queues
`shoptet_api.renew_token_chunk` messages; a real `celery worker` subprocess (prefork, P processes,
each renewing a chunk T shops at a time: C = P x T) renews them against the emulator, which
answers `getAccessToken` after 50 ms from a process of its own.

  ideal     shops x latency / C (C calls always in flight, no other cost);
  bare      P processes x T threads calling `fetch_api_access_token` (no broker, no Redis, no
            Celery) against the same emulator in the same run: what this machine sustains.

Measured from the sweep's start until the emulator has answered every renewal. Checks afterwards:
every shop renewed exactly once and holds a token the emulator accepts, no shop saw more than
SHOPTET_TOKEN_CAP valid tokens, no cap rejection. CPU seconds of the worker processes, the
emulator, this process and Redis over the sweep show what bounds it on a small machine.

Set-up is not measured: the emulator mints the first tokens without HTTP (stored through the real
broker), and their stored expiry is then set to now (as if minted 30 minutes ago).

`--in-process` runs the earlier shape instead: C threads in this one process calling
`tokens.renew_if_expiring` per shop, with a sequential baseline.

Usage: python -m bench.renewal_sweep [--shops 10000] [--processes 4] [--threads 16] [--latency 50]
       python -m bench.renewal_sweep --in-process [--concurrency 16,64] [--sample 300]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

if __package__ in (None, ""):  # run as a file: python bench/renewal_sweep.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, sync_db

if TYPE_CHECKING:
    from eshops.models import Eshop

NAME = "renewal_sweep"
# The partner OAuth server path the latency applies to (getAccessToken only).
MINT_PATH = "/action/ApiOAuthServer/getAccessToken"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shops", type=int, default=10_000)
    parser.add_argument(
        "--processes", type=int, default=4, help="Celery worker processes (prefork)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=16,
        help="renewal threads per worker process (SHOPTET_TOKEN_RENEW_THREADS)",
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=128,
        help="shops per renew_token_chunk (SHOPTET_TOKEN_RENEW_CHUNK)",
    )
    parser.add_argument(
        "--latency", type=float, default=50.0, help="getAccessToken latency in ms"
    )
    parser.add_argument(
        "--lifetime", type=int, default=1800, help="token lifetime in s (emulator)"
    )
    parser.add_argument(
        "--ceiling-calls",
        type=int,
        default=3000,
        help="bare getAccessToken calls measuring what the machine sustains (0: skip)",
    )
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="threads in this process call renew_if_expiring (the earlier shape)",
    )
    parser.add_argument(
        "--concurrency",
        default="64",
        help="--in-process: threads; a comma list (e.g. 16,64,128) runs one sweep per value",
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=300,
        help="--in-process: shops in the sequential baseline",
    )
    parser.add_argument(
        "--emulator-process",
        action="store_true",
        help="--in-process: run the emulator in a child process (the worker path always does)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 500 shops (--in-process: 1000)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        if args.in_process:
            args.shops, args.sample, args.ceiling_calls = 1000, 50, 500
        else:
            args.shops, args.ceiling_calls = 500, 500
    args.concurrency = [int(x) for x in str(args.concurrency).split(",") if x.strip()]
    return args


class InFlight:
    """Counts getAccessToken calls in flight (client side): peak, and time spent inside them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.durations: list[float] = []

    @contextmanager
    def track(self) -> Iterator[None]:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            with self.lock:
                self.now -= 1
                self.durations.append(elapsed)


def prepare(
    bench: common.BenchSession,
    count: int,
    lifetime: int,
    *,
    premint_tokens: bool = True,
) -> list[Eshop]:
    """`count` fresh shops on a reset emulator, each (by default) with one stored API token minted now
    (see `premint`)."""
    host = bench.host
    host.set_latency(0, MINT_PATH)
    host.reset(token_lifetime=lifetime)
    bench.fresh_prefix()
    shops = bench.install_shops(count)
    if premint_tokens:
        premint(bench, shops)
    return shops


def run_workers(
    items: list[Any], work: Callable[[Any], str], *, workers: int
) -> tuple[float, collections.Counter[str]]:
    """Call `work` on every item from `workers` threads; wall seconds and outcome counts."""
    outcomes: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    position = [0]
    gate = threading.Barrier(workers + 1)

    def worker() -> None:
        mine: collections.Counter[str] = collections.Counter()
        gate.wait()
        while True:
            with lock:
                index = position[0]
                position[0] += 1
            if index >= len(items):
                break
            try:
                mine[work(items[index])] += 1
            except Exception as exc:
                mine[f"error {type(exc).__name__}"] += 1
        with lock:
            outcomes.update(mine)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, outcomes


def ceiling(
    bench: common.BenchSession, count: int, *, workers: int, latency: float
) -> dict[str, Any]:
    """Bare `fetch_api_access_token` calls from `workers` threads, no broker: what the emulator
    and this process's HTTP stack sustain at this concurrency."""
    from shoptet_api.oauth import fetch_api_access_token

    shops = prepare(bench, count, 1800, premint_tokens=False)
    bench.host.set_latency(latency, MINT_PATH)

    def call(eshop: Eshop) -> str:
        assert eshop.oauth_access_token is not None  # install_shops sets it
        fetch_api_access_token(oauth_token=eshop.oauth_access_token)
        return "ok"

    elapsed, outcomes = run_workers(shops, call, workers=workers)
    per_second = count / elapsed if elapsed else 0.0
    return {
        "workers": workers,
        "calls": count,
        "elapsed_s": elapsed,
        "calls_per_s": per_second,
        "sustained_concurrency": per_second * latency,
        "outcomes": dict(outcomes),
    }


def sweep(
    bench: common.BenchSession, shops: list[Eshop], *, workers: int, within: float
) -> dict[str, Any]:
    """Renew every shop's token from `workers` threads; timings, outcomes and checks."""
    from shoptet_api import tokens

    # The broker's own `fetch_api_access_token` (the name it calls is patched below).
    from shoptet_api.oauth import fetch_api_access_token as real_fetch

    host = bench.host
    inflight = InFlight()

    def tracked_fetch(*, oauth_token: str) -> Any:
        with inflight.track():
            return real_fetch(oauth_token=oauth_token)

    def renew(eshop: Eshop) -> str:
        return (
            "renewed"
            if tokens.renew_if_expiring(eshop, within=within)
            else "not renewed"
        )

    issued_before = host.counters()["api_tokens_issued"]
    with mock.patch("shoptet_api.tokens.renewal.fetch_api_access_token", tracked_fetch):
        elapsed, outcomes = run_workers(shops, renew, workers=workers)

    durations = inflight.durations
    return {
        "workers": workers,
        "shops": len(shops),
        "elapsed_s": elapsed,
        "renewals_per_s": len(shops) / elapsed if elapsed else 0.0,
        "outcomes": dict(outcomes),
        "getaccesstoken_calls": len(durations),
        "getaccesstoken_peak_in_flight": inflight.peak,
        "getaccesstoken_mean_in_flight": sum(durations) / elapsed if elapsed else 0.0,
        "getaccesstoken_median_ms": common.median(durations) * 1000,
        "getaccesstoken_p95_ms": common.percentile(durations, 95) * 1000,
        **check(bench, shops, issued_before),
    }


# --- The production path: the beat sweep, chunks, real worker processes ---------------------------


def bare_calls(oauth_tokens: list[str], threads: int, gate: Any, results: Any) -> None:
    """A forked child: `threads` threads call `fetch_api_access_token` once per OAuth token,
    starting together with the other children; puts (outcome counts, end epoch, CPU seconds)
    on `results`."""
    from shoptet_api.oauth import fetch_api_access_token

    def call(oauth_token: str) -> str:
        fetch_api_access_token(oauth_token=oauth_token)
        return "ok"

    gate.wait()
    cpu_started = time.process_time()
    _, counts = run_workers(oauth_tokens, call, workers=threads)
    results.put((dict(counts), time.time(), time.process_time() - cpu_started))


def bare_ceiling(
    bench: common.BenchSession, calls: int, *, processes: int, threads: int
) -> dict[str, Any]:
    """Bare getAccessToken calls from `processes` x `threads` (child processes, no broker).

    The children are forked (Django is set up already, and this process has made no HTTP call
    yet): spawning four fresh interpreters would take longer than the measurement.
    """
    context = multiprocessing.get_context("fork")
    oauth_tokens = bench.host.install(
        list(range(bench.next_eshop_id, bench.next_eshop_id + calls))
    )
    bench.next_eshop_id += calls
    gate = context.Barrier(processes + 1)
    results = context.Queue()
    children = [
        context.Process(
            target=bare_calls,
            args=(oauth_tokens[i::processes], threads, gate, results),
            daemon=True,
        )
        for i in range(processes)
    ]
    for child in children:
        child.start()
    gate.wait(timeout=120)
    started = time.time()
    outcomes: collections.Counter[str] = collections.Counter()
    ended = started
    cpu = 0.0
    for _ in children:
        counts, end, child_cpu = results.get(timeout=600)
        outcomes.update(counts)
        ended = max(ended, end)
        cpu += child_cpu
    for child in children:
        child.join(timeout=30)
    elapsed = ended - started
    per_second = calls / elapsed if elapsed else 0.0
    return {
        "processes": processes,
        "threads": threads,
        "calls": calls,
        "elapsed_s": elapsed,
        "calls_per_s": per_second,
        "client_cpu_ms_per_call": 1000 * cpu / calls if calls else None,
        "outcomes": dict(outcomes),
    }


def save_shops(shops: list[Eshop]) -> None:
    """The shops as tenant rows (the chunk task loads them from the database)."""
    from django.utils import timezone

    from eshops.models import Eshop

    now = timezone.now()
    for shop in shops:
        shop.installed_at = now
        shop.last_installed_at = now
    Eshop.objects.bulk_create(shops, batch_size=1000)


def expire_stored_tokens_now(shops: list[Eshop]) -> None:
    """Make every shop's stored token due now (the sweep then finds all of them due at once)."""
    from addon_project.redis_client import get_redis
    from addon_project.redis_keys import token_key

    pipe = get_redis().pipeline(transaction=False)
    now = time.time()
    for shop in shops:
        pipe.hset(token_key(shop.eshop_id), "exp", now)
    pipe.execute()


@contextlib.contextmanager
def celery_worker(
    *, processes: int, threads: int, queue: str, prefix: str, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A real `celery worker` (prefork) on the run's own queue and Redis key prefix."""
    env = {
        **os.environ,
        "SHOPTET_REDIS_PREFIX": prefix,
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "SHOPTET_TOKEN_RENEW_THREADS": str(threads),
    }
    command = [
        *(sys.executable, "-m", "celery", "-A", "addon_project", "worker"),
        *("--pool", "prefork", "--concurrency", str(processes)),
        *("--queues", queue, "--hostname", f"{queue}@bench"),
        *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        *("--loglevel", "WARNING"),
    ]
    env["LOG_FORMAT"] = (
        "json"  # one JSON object per line: problems are counted by level
    )
    with log_path.open("wb") as log:
        worker = subprocess.Popen(  # noqa: S603 (our own command line)
            command, cwd=common.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield worker
        finally:
            # Every renewal is done by now: a cold shutdown (SIGQUIT) saves a warm one's wait.
            worker.send_signal(signal.SIGQUIT)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


def wait_until_ready(worker: subprocess.Popen[bytes], queue: str) -> None:
    from addon_project.celery import app

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise SystemExit(f"the celery worker exited ({worker.returncode})")
        if app.control.ping(destination=[f"{queue}@bench"], timeout=0.5):
            return
    raise SystemExit("the celery worker did not answer a ping within 120 s")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and all their descendants so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = list(pids)
    while pending:
        pid = pending.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            pending += [
                int(child)
                for child in Path(f"/proc/{pid}/task/{pid}/children")
                .read_text()
                .split()
            ]
    return total


def redis_cpu_seconds() -> float:
    from addon_project.redis_client import get_redis

    info = get_redis().info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def check(
    bench: common.BenchSession, shops: list[Eshop], issued_before: dict[int, int]
) -> dict[str, Any]:
    """Afterwards, from Redis (not process memory): did every shop renew once and hold a token
    Shoptet accepts, within the cap?"""
    from shoptet_api import tokens

    host = bench.host
    tokens.clear_process_cache()
    issued_after_sweep = sum(host.counters()["api_tokens_issued"].values())
    stored = [str(tokens.get_api_access_token(eshop)) for eshop in shops]
    rejected = host.rejected_tokens(stored)
    counters = host.counters()
    issued = counters["api_tokens_issued"]
    per_shop_new = [
        issued.get(s.eshop_id, 0) - issued_before.get(s.eshop_id, 0) for s in shops
    ]
    cap = tokens.token_cap()
    max_seen = counters["max_valid_tokens_seen"]
    return {
        "shops_renewed_exactly_once": sum(1 for n in per_shop_new if n == 1),
        "shops_with_duplicate_mints": sum(1 for n in per_shop_new if n > 1),
        "shops_not_renewed": sum(1 for n in per_shop_new if n == 0),
        "shops_without_valid_token": rejected,
        "tokens_minted_by_the_check": sum(issued.values()) - issued_after_sweep,
        "max_valid_tokens_seen": max(
            (max_seen.get(s.eshop_id, 0) for s in shops), default=0
        ),
        "shops_over_cap": sum(1 for s in shops if max_seen.get(s.eshop_id, 0) > cap),
        "cap_rejections": sum(counters["cap_rejections"].values()),
    }


def worker_sweep(
    bench: common.BenchSession, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """Set up, then time the real sweep and a real worker renewing every shop."""
    from shoptet_api import tasks

    host = bench.host
    latency = args.latency / 1000
    queue = os.environ["CELERY_TASK_DEFAULT_QUEUE"]  # where the sweep here publishes
    host.reset(token_lifetime=args.lifetime)
    host.set_latency(0, MINT_PATH)
    log_path = workdir / "worker.log"
    with celery_worker(
        processes=args.processes,
        threads=args.threads,
        queue=queue,
        prefix=bench.prefix,
        log_path=log_path,
    ) as worker:
        print(f"set-up: {args.shops} tenants, a token each ...", flush=True)
        sync_db.migrate()  # while the worker starts
        shops = bench.install_shops(args.shops)
        save_shops(shops)
        premint(bench, shops)
        warm = bench.install_shops(args.processes * args.threads * 2)
        save_shops(warm)
        premint(bench, warm)
        wait_until_ready(worker, queue)
        host.set_latency(latency, MINT_PATH)
        print("warm-up: one chunk per worker process ...", flush=True)
        warm_up(bench, warm, processes=args.processes)
        ceiling_result = None
        if args.ceiling_calls:
            print(
                f"bare ceiling: {args.ceiling_calls} getAccessToken calls, "
                f"{args.processes} processes x {args.threads} threads ...",
                flush=True,
            )
            ceiling_result = bare_ceiling(
                bench,
                args.ceiling_calls,
                processes=args.processes,
                threads=args.threads,
            )
        print(f"sweep: {args.shops} shops through the worker ...", flush=True)
        issued_before = host.counters()["api_tokens_issued"]
        expire_stored_tokens_now(shops)
        answered_before = host.answers(MINT_PATH, 200)
        emulator_pids = [child.pid for child in multiprocessing.active_children()]
        cpu_before = (
            cpu_seconds([worker.pid]),
            cpu_seconds([pid for pid in emulator_pids if pid]),
            time.process_time(),
            redis_cpu_seconds(),
        )
        started = time.perf_counter()
        scheduled = tasks.renew_expiring_tokens()
        sweep_s = time.perf_counter() - started
        deadline = time.monotonic() + max(120.0, 20 * args.shops * latency)
        while host.answers(MINT_PATH, 200) - answered_before < args.shops:
            if time.monotonic() > deadline or worker.poll() is not None:
                break
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        cpu_after = (
            cpu_seconds([worker.pid]),
            cpu_seconds([pid for pid in emulator_pids if pid]),
            time.process_time(),
            redis_cpu_seconds(),
        )
        answered = host.answers(MINT_PATH, 200) - answered_before
        # Let the last answers be stored before checking.
        time.sleep(0.5)
    cpu = dict(
        zip(
            ("workers", "emulator", "sweep_process", "redis"),
            (
                after - before
                for before, after in zip(cpu_before, cpu_after, strict=True)
            ),
            strict=True,
        )
    )
    problems = [
        line
        for line in log_path.read_text(errors="replace").splitlines()
        if '"level": "WARNING"' in line or '"level": "ERROR"' in line
    ]
    renewals_per_s = answered / elapsed if elapsed else 0.0
    workers = args.processes * args.threads
    result = {
        "processes": args.processes,
        "threads": args.threads,
        "concurrency": workers,
        "chunk": int(os.environ["SHOPTET_TOKEN_RENEW_CHUNK"]),
        "shops": args.shops,
        "scheduled_by_sweep": scheduled,
        "sweep_enqueue_s": sweep_s,
        "elapsed_s": elapsed,
        "renewals_answered": answered,
        "renewals_per_s": renewals_per_s,
        "ideal_s": args.shops * latency / workers,
        "sustained_concurrency": renewals_per_s * latency,
        "cpu_s": cpu,
        "cpu_ms_per_renewal": {
            name: 1000 * seconds / answered if answered else None
            for name, seconds in cpu.items()
        },
        "worker_problems_logged": len(problems),
        "worker_problems_tail": problems[-20:],
        "ceiling": ceiling_result,
    }
    result["vs_ideal"] = common.safe_ratio(result["elapsed_s"], result["ideal_s"])
    result.update(check(bench, shops, issued_before))
    return result


def warm_up(bench: common.BenchSession, shops: list[Eshop], *, processes: int) -> None:
    """Renew `shops` through the worker in one chunk per process, before anything is measured.

    A long-lived worker has its renewal threads, HTTP and database connections, and lazily
    imported modules ready; a fresh one spends the first chunk in each process making them
    (about twice the time of a later chunk), which is not a per-renewal cost. Each chunk needs
    two rounds of the process's threads, so all processes are busy at once and each takes one.
    """
    from shoptet_api import tasks

    expire_stored_tokens_now(shops)
    answered = bench.host.answers(MINT_PATH, 200)
    for i in range(processes):
        tasks.renew_token_chunk.delay([shop.eshop_id for shop in shops[i::processes]])
    deadline = time.monotonic() + 120
    while bench.host.answers(MINT_PATH, 200) - answered < len(shops):
        if time.monotonic() > deadline:
            raise SystemExit("the worker did not renew the warm-up chunks within 120 s")
        time.sleep(0.01)
    time.sleep(0.2)  # the last chunks store their tokens and finish


def premint(bench: common.BenchSession, shops: list[Eshop]) -> None:
    """One stored API token per shop, minted by the emulator without HTTP (set-up, not measured)."""
    from shoptet_api import tokens
    from shoptet_api.types import ApiAccessToken

    host = bench.host

    def direct_mint(*, oauth_token: str) -> ApiAccessToken:
        token, expires_in, error = host.mint(oauth_token)
        assert token is not None, error
        return ApiAccessToken.from_json(
            {"access_token": token, "expires_in": expires_in}
        )

    with (
        mock.patch("shoptet_api.tokens.renewal.fetch_api_access_token", direct_mint),
        ThreadPoolExecutor(max_workers=4) as pool,
    ):
        list(pool.map(tokens.get_api_access_token, shops))
    tokens.clear_process_cache()


def main_workers(args: argparse.Namespace) -> int:
    """The production path: the beat sweep queues chunks, a prefork worker renews them."""
    # Settings the sweep (here) and the worker (its environment copies this one) both read.
    os.environ["SHOPTET_TOKEN_RENEW_CHUNK"] = str(args.chunk)
    os.environ["CELERY_TASK_DEFAULT_QUEUE"] = f"bench-renewal-{uuid.uuid4().hex[:10]}"
    workdir = Path(tempfile.mkdtemp(prefix="bench-renewal-"))
    try:
        with (
            sync_db.own_database(NAME) as database_url,
            common.session(
                NAME, emulator_process=True, database_url=database_url
            ) as bench,
        ):
            from shoptet_api import tokens

            cap = tokens.token_cap()
            run = worker_sweep(bench, args, workdir)
            report_workers(args, run, cap=cap, database=sync_db.describe(database_url))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def check_rows(
    run: dict[str, Any], *, concurrency: int, cap: int, healthy: bool
) -> list[common.SummaryRow]:
    """The summary rows of `check`'s findings."""
    return [
        common.row(
            f"C={concurrency}: every shop renewed once and holds a valid token",
            "yes" if healthy else "NO",
            target="yes",
            ok=healthy,
        ),
        common.row(
            f"C={concurrency}: shops over SHOPTET_TOKEN_CAP={cap} / cap rejections",
            f"{run['shops_over_cap']} / {run['cap_rejections']}",
            target="0 / 0",
            ok=run["shops_over_cap"] == 0 and run["cap_rejections"] == 0,
        ),
    ]


def report_workers(
    args: argparse.Namespace, run: dict[str, Any], *, cap: int, database: str
) -> None:
    c = run["concurrency"]
    ceiling_result = run["ceiling"]
    healthy = (
        run["shops_renewed_exactly_once"] == run["shops"]
        and run["shops_without_valid_token"] == 0
        and run["tokens_minted_by_the_check"] == 0
    )
    label = f"{run['processes']} processes x {run['threads']} threads"
    summary = [
        common.row(
            f"renew {run['shops']} shops, C={c} ({label}): time vs ideal (shops x latency / C)",
            round(run["elapsed_s"], 2),
            baseline=round(run["ideal_s"], 2),
            ratio=run["vs_ideal"],
            unit="s",
            target="<= 1.3",
            ok=run["vs_ideal"] is not None and run["vs_ideal"] <= 1.3,
        ),
        common.row(
            f"C={c}: concurrency sustained by the broker (renewals/s x latency)",
            round(run["sustained_concurrency"], 1),
            baseline=c,
            ratio=common.safe_ratio(run["sustained_concurrency"], c),
            target=">= 50",
            ok=run["sustained_concurrency"] >= 50,
        ),
    ]
    if ceiling_result is not None:
        ratio = common.safe_ratio(run["renewals_per_s"], ceiling_result["calls_per_s"])
        summary += [
            common.row(
                f"C={c}: broker renewals/s vs bare getAccessToken calls/s (same processes x threads)",
                round(run["renewals_per_s"], 1),
                baseline=round(ceiling_result["calls_per_s"], 1),
                ratio=ratio,
                unit="1/s",
                target=">= 0.8",
                ok=ratio is not None and ratio >= 0.8,
            ),
            common.row(
                f"C={c}: concurrency bare calls sustain (calls/s x latency; the machine's ceiling)",
                round(ceiling_result["calls_per_s"] * args.latency / 1000, 1),
                baseline=c,
                ratio=common.safe_ratio(
                    ceiling_result["calls_per_s"] * args.latency / 1000, c
                ),
            ),
        ]
    per_renewal = run["cpu_ms_per_renewal"]
    summary += [
        common.row(
            f"C={c}: CPU per renewal: workers / emulator / sweep / Redis",
            " / ".join(
                common.fmt(per_renewal[name], 2)
                for name in ("workers", "emulator", "sweep_process", "redis")
            ),
            unit="ms",
        ),
        common.row(
            f"C={c}: client CPU per renewal (workers) vs per bare getAccessToken call",
            round(per_renewal["workers"] or 0, 2),
            baseline=None
            if ceiling_result is None
            else round(ceiling_result["client_cpu_ms_per_call"], 2),
            ratio=None
            if ceiling_result is None
            else common.safe_ratio(
                per_renewal["workers"] or 0, ceiling_result["client_cpu_ms_per_call"]
            ),
            unit="ms",
        ),
        *check_rows(run, concurrency=c, cap=cap, healthy=healthy),
    ]
    cpu_total = sum(run["cpu_s"].values())
    notes = [
        f"A real `celery worker` (prefork, {run['processes']} processes, "
        f"SHOPTET_TOKEN_RENEW_THREADS={run['threads']}) renewed the chunks (SHOPTET_TOKEN_RENEW_CHUNK="
        f"{run['chunk']}) that `renew_expiring_tokens` queued here: {run['scheduled_by_sweep']} shops, "
        f"queued in {run['sweep_enqueue_s']:.2f} s (included in the time).",
        "Sustained concurrency = renewals per second x latency (Little's law). The bare row is the "
        "same for plain getAccessToken calls from as many processes and threads, against the same "
        "emulator in the same run: what this machine sustains without broker, Redis or Celery.",
        f"CPU over the sweep: {cpu_total:.1f} s in {run['elapsed_s']:.1f} s on "
        f"{os.cpu_count()} cores (workers {run['cpu_s']['workers']:.1f}, emulator "
        f"{run['cpu_s']['emulator']:.1f}, this process {run['cpu_s']['sweep_process']:.1f}, Redis "
        f"{run['cpu_s']['redis']:.1f}; Redis counts every client of the server). When the sum "
        "approaches cores x time, the machine's CPU, not the latency, bounds the rate.",
        "The emulator answers in a child process; the worker's processes are its own. Set-up "
        "(tenant rows, first tokens minted without HTTP, stored expiry set to now) is not timed, "
        "nor is a warm-up chunk per worker process (a long-lived worker has its threads, "
        "connections and imports ready; a fresh one spends its first chunk making them).",
        f"Database: {database}.",
    ]
    if run["worker_problems_logged"]:
        notes.append(
            f"The worker logged {run['worker_problems_logged']} warnings or errors; the last "
            "ones are in details.run.worker_problems_tail."
        )
    common.report(
        NAME,
        params={
            "mode": "celery worker",
            "shops": args.shops,
            "processes": args.processes,
            "threads": args.threads,
            "concurrency": run["concurrency"],
            "chunk": run["chunk"],
            "latency_ms": args.latency,
            "ceiling_calls": args.ceiling_calls,
            "lifetime_s": args.lifetime,
            "token_cap": cap,
            "emulator": "child process",
        },
        summary=summary,
        details={"run": run},
        notes=notes,
    )


def main_in_process(args: argparse.Namespace) -> int:
    """The earlier shape: C threads in this process call renew_if_expiring once per shop."""
    latency = args.latency / 1000
    # Larger than any remaining lifetime: every shop renews (the sweep's "inside the window" case).
    within = float(args.lifetime) + 60
    with common.session(NAME, emulator_process=args.emulator_process) as bench:
        from shoptet_api import tokens

        cap = tokens.token_cap()

        print(f"sequential baseline: {args.sample} shops, 1 thread ...", flush=True)
        sample = prepare(bench, args.sample, args.lifetime)
        bench.host.set_latency(latency, MINT_PATH)
        sequential = sweep(bench, sample, workers=1, within=within)
        per_shop = sequential["elapsed_s"] / args.sample
        sequential_estimate = per_shop * args.shops

        runs = []
        for workers in args.concurrency:
            ceiling_result = None
            if args.ceiling_calls:
                print(
                    f"emulator ceiling: {args.ceiling_calls} bare getAccessToken calls, {workers} threads ...",
                    flush=True,
                )
                ceiling_result = ceiling(
                    bench, args.ceiling_calls, workers=workers, latency=latency
                )
            print(f"premint {args.shops} shops ...", flush=True)
            t = time.perf_counter()
            shops = prepare(bench, args.shops, args.lifetime)
            premint_s = time.perf_counter() - t
            bench.host.set_latency(latency, MINT_PATH)
            print(f"sweep: {args.shops} shops, {workers} threads ...", flush=True)
            result = sweep(bench, shops, workers=workers, within=within)
            result["premint_s"] = premint_s
            result["ideal_s"] = args.shops * latency / workers
            result["vs_ideal"] = common.safe_ratio(
                result["elapsed_s"], result["ideal_s"]
            )
            result["speedup_vs_sequential"] = common.safe_ratio(
                sequential_estimate, result["elapsed_s"]
            )
            # Little's law: how many latency waits overlapped on average = the concurrency sustained.
            result["sustained_concurrency"] = result["renewals_per_s"] * latency
            result["ceiling"] = ceiling_result
            runs.append(result)

        summary: list[common.SummaryRow] = []
        rows = []
        for run in runs:
            w = run["workers"]
            healthy = (
                run["shops_renewed_exactly_once"] == run["shops"]
                and run["shops_without_valid_token"] == 0
                and run["tokens_minted_by_the_check"] == 0
                and run["outcomes"].get("renewed", 0) == run["shops"]
            )
            ceiling_result = run["ceiling"]
            summary += [
                common.row(
                    f"renew {run['shops']} shops, C={w}: time vs ideal (shops x latency / C)",
                    round(run["elapsed_s"], 2),
                    baseline=round(run["ideal_s"], 2),
                    ratio=run["vs_ideal"],
                    unit="s",
                ),
                common.row(
                    f"renew {run['shops']} shops, C={w}: time vs sequential (extrapolated)",
                    round(run["elapsed_s"], 2),
                    baseline=round(sequential_estimate, 1),
                    ratio=common.safe_ratio(run["elapsed_s"], sequential_estimate),
                    unit="s",
                ),
                common.row(
                    f"C={w}: concurrency sustained by the broker (renewals/s x latency)",
                    round(run["sustained_concurrency"], 1),
                    baseline=w,
                    ratio=common.safe_ratio(run["sustained_concurrency"], w),
                ),
            ]
            if ceiling_result is not None:
                summary.append(
                    common.row(
                        f"C={w}: broker renewals/s vs bare getAccessToken calls/s (emulator ceiling)",
                        round(run["renewals_per_s"], 1),
                        baseline=round(ceiling_result["calls_per_s"], 1),
                        ratio=common.safe_ratio(
                            run["renewals_per_s"], ceiling_result["calls_per_s"]
                        ),
                        unit="1/s",
                    )
                )
            summary += check_rows(run, concurrency=w, cap=cap, healthy=healthy)
            rows.append(
                [
                    w,
                    round(run["elapsed_s"], 2),
                    round(run["ideal_s"], 2),
                    run["vs_ideal"],
                    round(run["renewals_per_s"], 1),
                    round(run["sustained_concurrency"], 1),
                    None
                    if ceiling_result is None
                    else round(ceiling_result["sustained_concurrency"], 1),
                    run["getaccesstoken_peak_in_flight"],
                    round(run["getaccesstoken_median_ms"], 1),
                    round(run["getaccesstoken_p95_ms"], 1),
                    run["speedup_vs_sequential"],
                ]
            )
        notes = [
            f"Sequential baseline measured on {args.sample} shops ({sequential['elapsed_s']:.2f} s, "
            f"{per_shop * 1000:.1f} ms per shop) and extrapolated linearly to {args.shops} shops "
            f"= {sequential_estimate:.1f} s; it was not run on all of them.",
            "Sustained concurrency = completions per second x latency (Little's law): how many "
            "getAccessToken waits overlapped on average. 'emulator C' is the same for bare "
            "getAccessToken calls (no broker, no Redis) from the same number of threads: what the "
            "emulator and this process's HTTP stack sustain. If both are well below C, the "
            "emulator/CPU is the limit, not the broker; the gap between them is the broker's cost.",
            "Each renewal costs, besides getAccessToken: Redis lock SET NX, HMGET, slot reservation (Lua), "
            "store pipeline, lock release (Lua), and Fernet encryption of the token. A getAccessToken "
            "median well above the configured latency means requests queued for CPU.",
            (
                "The emulator ran in a child process (its own GIL)."
                if args.emulator_process
                else "The emulator ran in this process: its HTTP handling shares the GIL with the "
                "workers. --emulator-process moves it to a child process."
            ),
            f"Pre-mint took {runs[-1]['premint_s']:.1f} s per sweep (emulator minting without HTTP, real broker storage)."
            if runs
            else "",
            f"Outcomes: sequential {sequential['outcomes']}; "
            + "; ".join(f"C={run['workers']} {run['outcomes']}" for run in runs),
        ]
        common.report(
            NAME,
            params={
                "shops": args.shops,
                "concurrency": args.concurrency,
                "latency_ms": args.latency,
                "sample": args.sample,
                "ceiling_calls": args.ceiling_calls,
                "lifetime_s": args.lifetime,
                "within_s": within,
                "token_cap": cap,
                "emulator": "child process" if args.emulator_process else "in process",
            },
            summary=summary,
            details={
                "sequential": sequential,
                "sequential_estimate_s": sequential_estimate,
                "runs": runs,
            },
            notes=[note for note in notes if note],
            tables={
                "sweeps": (
                    [
                        "C",
                        "time s",
                        "ideal s",
                        "x ideal",
                        "renewals/s",
                        "sustained C",
                        "emulator C",
                        "peak in flight",
                        "gAT median ms",
                        "gAT p95 ms",
                        "speedup vs seq",
                    ],
                    rows,
                )
            },
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return main_in_process(args) if args.in_process else main_workers(args)


if __name__ == "__main__":
    sys.exit(main())
