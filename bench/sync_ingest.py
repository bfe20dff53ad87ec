"""How fast a snapshot's rows reach the database, and how much memory streaming it takes.

A tenant with job:finished registered (so full copies go through snapshot jobs) and enough
orders for a result of --mbytes of uncompressed JSON Lines. A child process (so its peak RSS is
the sync's alone, without the emulator, which runs in this process and builds the gzip result)
runs the real path, `sync.service.run_resource(shop, "orders")`: start the job, poll it, then
download the result streamed, gunzip, parse each line, map it and upsert in batches of 500.

  ingest    rows stored / seconds of the call that downloads and stores the result;
  baseline  a bare bulk insert of the same rows (`Order.objects.bulk_create`, plain INSERTs,
            batches of 500, no conflict handling, no download/parse/mapping) into a second
            tenant, on a sample of the rows (at most --sample), measured first in the same run.
  peak RSS  the child's ru_maxrss at the end (its RSS after Django set-up, before the copy, is
            shown too).

The database is one of the benchmark's own on the DATABASE_URL PostgreSQL server (see
bench/sync_db.py).

Usage: python -m bench.sync_ingest [--mbytes 500] [--sample 20000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/sync_ingest.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, sync_db

NAME = "sync_ingest"
TARGET_RATIO = 0.5
TARGET_RSS_MB = 150
WEBHOOK_URL = (
    "http://127.0.0.1:9/webhooks/shoptet/"  # nobody listens: deliveries fail fast
)
# Growing poll spacing (the engine polls an unfinished job at most 8 times): the emulator
# writes a 500 MB result's gzip file when the job finishes, which takes a while.
POLL_DELAYS = [0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mbytes", type=float, default=500, help="uncompressed snapshot size in MB"
    )
    parser.add_argument(
        "--sample", type=int, default=20_000, help="rows in the bulk-insert baseline"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: a 5 MB snapshot"
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.mbytes = min(args.mbytes, 5)
        args.sample = min(args.sample, 2000)
    if args.mbytes <= 0 or args.sample < 1:
        parser.error("--mbytes and --sample must be positive")
    return args


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM, Linux).

    Not `getrusage().ru_maxrss`: Linux carries that over exec from the forked parent, so a child
    of a 160 MB parent would report at least 160 MB whatever it does itself.
    """
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def rss_mb() -> float:
    """This process's resident set now, from /proc (Linux)."""
    pages = int(Path("/proc/self/statm").read_text(encoding="ascii").split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1024**2


def child(eshop_id: int) -> int:
    """The measured side: one tenant's full copy through a snapshot job, in this process."""
    import django

    django.setup()
    from django.conf import settings

    from eshops.models import Eshop
    from sync import download
    from sync.models import SyncState
    from sync.service import run_resource

    settings.SYNC_JOB_POLL_DELAYS = POLL_DELAYS
    # As in production: with DEBUG on, Django keeps the last 9,000 queries' SQL (each batch
    # upsert is megabytes of JSON), which is the benchmark's memory, not the sync's.
    settings.DEBUG = False
    if os.environ.get(
        "BENCH_STORE_BATCH"
    ):  # to see what the batch size costs in memory
        from sync import engine

        engine.STORE_BATCH = int(os.environ["BENCH_STORE_BATCH"])
    shop = Eshop.objects.get(eshop_id=eshop_id)
    rss_before = rss_mb()
    # The clock starts when the engine opens the result (the job's start and polls, and the
    # emulator building the file, come before) and stops when the run is done.
    download_started: list[float] = []
    stream_lines = download.stream_lines

    rss_at_download: list[float] = []

    peak_before_download: list[float] = []

    def timed_stream_lines(*args: Any, **kwargs: Any) -> Any:
        download_started.append(time.monotonic())
        rss_at_download.append(rss_mb())
        # Note the peak so far (start-up), then reset the high-water mark to the current RSS
        # (Linux >= 4.0): what follows is the streaming's peak.
        peak_before_download.append(peak_rss_mb())
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
        return stream_lines(*args, **kwargs)

    download.stream_lines = timed_stream_lines
    calls = 0
    started = time.monotonic()
    while True:
        outcome, wait = run_resource(shop, "orders")
        calls += 1
        if outcome.value == "done":
            if not download_started:
                raise SystemExit("the copy did not go through a snapshot result")
            download_s = time.monotonic() - download_started[0]
            break
        if outcome.value == "waiting":
            time.sleep(wait)
        if calls > 200 or time.monotonic() - started > 1800:
            raise SystemExit("the copy did not finish in 200 calls or 30 minutes")
    state = SyncState.objects.get(eshop=shop, resource="orders")
    print(
        json.dumps(
            {
                "download_s": download_s,
                "total_s": time.monotonic() - started,
                "rows": state.items_stored,
                "item_errors": state.item_errors,
                "rss_after_setup_mb": rss_before,
                "rss_at_download_start_mb": rss_at_download[0],
                "peak_rss_mb": peak_rss_mb(),
                "peak_rss_before_download_mb": peak_before_download[0],
                "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                / 1024,
                "calls": calls,
                "result_opened": len(download_started),
            }
        )
    )
    return 0


def baseline(bench: common.BenchSession, sample: int) -> dict[str, Any]:
    """Bare bulk INSERTs of `sample` orders built and mapped beforehand (not timed)."""
    from django.utils import timezone

    from sync.models import Order
    from sync.orders import order_fields

    (other,) = sync_db.save_tenants(bench, 1)
    bench.emulator.add_orders(other.eshop_id, sample, history_days=1)
    emulated = bench.emulator.get_eshop(other.eshop_id)
    numbers = [emulated.orders.newest(offset) for offset in range(sample)]
    items = bench.emulator.order_details(emulated, numbers)
    now = timezone.now()
    rows = [
        Order(eshop=other, data=item, synced_at=now, **order_fields(item))
        for item in items
    ]
    started = time.monotonic()
    Order.objects.bulk_create(rows, batch_size=500)
    seconds = time.monotonic() - started
    stored = Order.objects.filter(eshop=other).count()
    line_bytes = sum(len(json.dumps(item)) + 1 for item in items) / len(items)
    return {
        "rows": stored,
        "seconds": seconds,
        "rows_per_s": stored / seconds,
        "avg_line_bytes": line_bytes,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child(args.child)
    with (
        sync_db.own_database(NAME) as database_url,
        common.session(NAME, database_url=database_url) as bench,
    ):
        from eshops.models import Eshop

        sync_db.migrate()
        emulator = bench.emulator
        emulator.auto_webhooks = False
        print(f"baseline: bulk insert of {args.sample} orders ...", flush=True)
        base = baseline(bench, args.sample)
        orders = max(1, int(args.mbytes * 1024**2 / base["avg_line_bytes"]))

        (shop,) = sync_db.save_tenants(bench, 1)
        hook = emulator.add_webhook(shop.eshop_id, "job:finished", WEBHOOK_URL, None)
        assert hook is not None  # a fresh shop has no webhooks
        Eshop.objects.filter(pk=shop.pk).update(webhooks={"job:finished": hook.id})
        # Spread over a day: the catch-up after the copy has nothing to refetch.
        emulator.add_orders(shop.eshop_id, orders, history_days=1)
        print(
            f"ingest: {orders} orders (~{args.mbytes:g} MB of JSON Lines) through a "
            "snapshot job, in a child process ...",
            flush=True,
        )
        env = {
            **os.environ,
            "SHOPTET_WEBHOOK_URL": WEBHOOK_URL,
            "SHOPTET_REDIS_PREFIX": bench.prefix,
        }
        completed = subprocess.run(  # noqa: S603 (our own interpreter and module)
            [sys.executable, "-m", "bench.sync_ingest", "--child", str(shop.eshop_id)],
            cwd=common.ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0:
            print(completed.stdout[-2000:], completed.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"the ingest child failed ({completed.returncode})")
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        downloads = emulator.stats.result_downloads[shop.eshop_id]
        ingest_rate = result["rows"] / result["download_s"]
        ratio = ingest_rate / base["rows_per_s"]
        summary = [
            common.row(
                "snapshot rows stored/s / bulk insert",
                round(ingest_rate, 1),
                baseline=round(base["rows_per_s"], 1),
                ratio=round(ratio, 3),
                unit="rows/s",
                target=f">= {TARGET_RATIO}",
                ok=ratio >= TARGET_RATIO,
            ),
            common.row(
                f"peak RSS streaming {args.mbytes:g} MB",
                round(result["peak_rss_mb"], 1),
                baseline=round(result["rss_at_download_start_mb"], 1),
                unit="MB",
                target=f"< {TARGET_RSS_MB}",
                ok=result["peak_rss_mb"] < TARGET_RSS_MB,
            ),
            common.row(
                "rows stored",
                result["rows"],
                baseline=orders,
                ratio=round(result["rows"] / orders, 3),
                unit="rows",
                target="== all",
                ok=result["rows"] == orders and result["item_errors"] == 0,
            ),
        ]
        details = {
            "child": result,
            "baseline": base,
            "result_downloads": downloads,
            "uncompressed_mb_estimate": round(
                orders * base["avg_line_bytes"] / 1024**2, 1
            ),
        }
        params = {
            "mbytes": args.mbytes,
            "orders": orders,
            "sample": args.sample,
            "database": database_url.split(":", 1)[0],
        }
        notes = [
            "Ingest time is the run_resource call that downloads the result (streamed from "
            "the emulator in the parent process, which also builds the gzip file when the job "
            "finishes, outside that call), gunzips, parses, maps and upserts it, then the short "
            "post-copy catch-up.",
            "The baseline inserts rows already built in memory: it is the database's share "
            "alone; the ratio is what download, gunzip, JSON parsing, mapping and the "
            "ON CONFLICT upsert cost on top.",
            "Peak RSS is the child's VmHWM from the moment the result is opened (reset there "
            "through /proc/self/clear_refs): the whole process, Python, Django and imports "
            "included, while streaming. The baseline column is its RSS at that moment; the "
            "peak before it is peak_rss_before_download_mb in the details. ru_maxrss is no "
            "use here: Linux carries it over exec from the forked parent (ru_maxrss_mb shows "
            "the parent's size, not the child's).",
        ]
        common.report(
            NAME, params=params, summary=summary, details=details, notes=notes
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
