"""How close an incremental sync runs to Shoptet's drain rate, and whether it ever hits a 429.

One tenant, N orders changed since its checkpoint (created now: `/changes` lists them as
`edit`), an empty mirror, and the emulator enforcing the leaky bucket (200 drops, 10 drops/s
drain, 3 connections per token; cost 1 drop per request + 1 per 50 items). One incremental run
(`sync.service.run_resource`, the command's and the Celery slice's path) fetches every changed
order's detail: far more drops than the bucket holds, so the client's limiter must pace.

  sustained rate  drops poured per second, from the moment the run had poured a full bucket
                  (capacity drops) to its end, sampled every 0.25 s from the emulator's counter;
  baseline        the drain rate (10/s): the most a run can sustain without 429s.

SHOPTET_WEBHOOK_URL is unset here, so the changed orders are fetched by detail calls (1 drop
each) rather than filtered snapshot jobs: the pacing is what is measured.

Usage: python -m bench.sync_rate [--orders 1500] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/sync_rate.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, sync_db

NAME = "sync_rate"
TARGET_RATIO = 0.90


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--orders", type=int, default=1500, help="changed orders to fetch"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 100 changed orders"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.orders = 100
    if args.orders < 1:
        parser.error("--orders must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with (
        sync_db.own_database(NAME) as database_url,
        common.session(NAME, database_url=database_url) as bench,
    ):
        from django.conf import settings
        from django.utils import timezone

        from sync.models import Order, SyncState
        from sync.service import run_resource

        settings.SHOPTET_WEBHOOK_URL = ""  # detail calls, not filtered snapshots
        sync_db.migrate()
        emulator = bench.emulator
        (shop,) = sync_db.save_tenants(bench, 1)
        emulator.add_orders(shop.eshop_id, args.orders)
        # A tenant whose last sync was an hour ago: this run is incremental.
        SyncState.objects.create(
            eshop=shop,
            resource="orders",
            changes_from=timezone.now() - dt.timedelta(hours=1),
            last_success_at=timezone.now() - dt.timedelta(hours=1),
        )
        capacity = emulator.bucket_capacity
        drain = emulator.bucket_leak_per_second
        emulated = emulator.get_eshop(shop.eshop_id)
        samples: list[tuple[float, int, float]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(snapshot())
                stop.wait(0.25)

        def snapshot() -> tuple[float, int, float]:
            """(time, drops poured so far, bucket level now: the last level minus its leak)."""
            now = time.monotonic()
            level = max(
                0.0,
                emulated.bucket_level - (now - emulated.bucket_time) * drain,
            )
            return now, int(emulator.stats.drops[shop.eshop_id]), level

        print(
            f"incremental sync of {args.orders} changed orders, bucket {capacity} drops, "
            f"{drain:g}/s drain ...",
            flush=True,
        )
        sampler = threading.Thread(target=sample, daemon=True)
        started = time.monotonic()
        sampler.start()
        outcome, _ = run_resource(shop, "orders")
        finished = time.monotonic()
        stop.set()
        sampler.join()
        samples.append(snapshot())

        stats = emulator.stats
        drops = int(stats.drops[shop.eshop_id])
        bucket_429 = int(stats.bucket_rejections[shop.eshop_id])
        connection_429 = int(stats.concurrency_rejections[shop.eshop_id])
        mirrored = Order.objects.filter(eshop=shop).count()
        # The window opens when the bucket is (nearly) full: from then on only pacing counts.
        full_at = next(
            (s for s in samples if s[2] >= 0.9 * capacity),
            next((s for s in samples if s[1] >= capacity), None),
        )
        if full_at is not None and finished - full_at[0] > 1.0:
            sustained = (drops - full_at[1]) / (finished - full_at[0])
            window = finished - full_at[0]
        else:
            sustained, window = float("nan"), 0.0
        level_start = full_at[2] if full_at else float("nan")
        level_end = samples[-1][2]
        elapsed = finished - started
        requests = {
            route: count
            for (eshop_id, route), count in stats.endpoint_requests.items()
            if eshop_id == shop.eshop_id
        }
        ratio = sustained / drain if window else None
        summary = [
            common.row(
                "sustained drops/s / drain",
                round(sustained, 3),
                baseline=drain,
                ratio=None if ratio is None else round(ratio, 3),
                unit="drops/s",
                target=f">= {TARGET_RATIO:.2f}",
                ok=None if ratio is None else ratio >= TARGET_RATIO,
            ),
            common.row(
                "429 answers",
                bucket_429 + connection_429,
                unit="answers",
                target="== 0",
                ok=bucket_429 + connection_429 == 0,
            ),
            common.row(
                "orders mirrored",
                mirrored,
                baseline=args.orders,
                ratio=round(mirrored / args.orders, 3),
                unit="orders",
                target="== all",
                ok=mirrored == args.orders and outcome.value == "done",
            ),
        ]
        details: dict[str, Any] = {
            "outcome": outcome.value,
            "elapsed_s": round(elapsed, 2),
            "sustained_window_s": round(window, 2),
            "drops_total": drops,
            "bucket_level_window_start": round(level_start, 1),
            "bucket_level_end": round(level_end, 1),
            "drops_per_s_whole_run": round(drops / elapsed, 3),
            "bucket_429": bucket_429,
            "connection_429": connection_429,
            "requests_per_endpoint": requests,
        }
        params = {
            "orders": args.orders,
            "bucket_capacity": capacity,
            "drain_per_s": drain,
            "database": database_url.split(":", 1)[0],
        }
        notes = [
            "The window opens when the bucket is 90 % full (else after a bucket's worth of drops): "
            "before that the bucket absorbs a burst, which says nothing about pacing. A value a "
            "little above the drain rate is the level rising from 90 % to the brim in the window "
            "(see bucket_level_* in details).",
            "Drops are the emulator's cost model (1 per request + 1 per 50 items); Shoptet does "
            "not publish its own.",
        ]
        common.report(
            NAME,
            params=params,
            summary=summary,
            details=details,
            notes=notes,
            tables={
                "requests per endpoint": (
                    ["endpoint", "requests"],
                    sorted(requests.items()),
                )
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
