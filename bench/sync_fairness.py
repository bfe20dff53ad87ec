"""Whether one huge tenant slows the small ones down: the sync's slice scheduling under load.

Tenants that enabled "sync orders" get their first (full) copy through the real scheduling:
beat's task `sync.schedule_due` queues one `sync.run_slice` per tenant, each slice works at most
SYNC_SLICE_PAGES pages or SYNC_SLICE_SECONDS and re-queues its successor at the back. A real
Celery worker (thread pool, --workers threads, prefetch 1, acks late: the project's settings)
consumes a queue of this run's own on the real Redis broker; the emulator enforces every
tenant's leaky bucket (200 drops, 10/s) and 3 connections per token.

  value     the small tenants' median completion time (from schedule_due to their
            last_success_at) with the big tenant queued first;
  baseline  the same small tenants' median without the big one, measured first in this run.

Threads, not processes: the emulator's state lives in this process (a forked worker would see
a copy), and the work is I/O-bound (HTTP, Redis, PostgreSQL), paced by per-shop buckets. With
W workers one big tenant can hold at most one worker at a time (its lease), so the fair-share
expectation is about W / (W - 1); the 2 shared cores make CPU the other limit.

Usage: python -m bench.sync_fairness [--small 49] [--small-orders 200] [--big-orders 100000]
       [--workers 4] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a file: python bench/sync_fairness.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common, sync_db

if TYPE_CHECKING:
    from eshops.models import Eshop

NAME = "sync_fairness"
TARGET_RATIO = 1.5
BOUND_SECONDS = 900.0  # a generous bound on one scenario, not a measured time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=49, help="small tenants")
    parser.add_argument("--small-orders", type=int, default=200)
    parser.add_argument("--big-orders", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4, help="Celery worker threads")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 5 small tenants of 40 orders, a big one of 3,000",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.small, args.small_orders, args.big_orders = 5, 40, 3_000
    if min(args.small, args.small_orders, args.big_orders, args.workers) < 1:
        parser.error("counts must be positive")
    return args


def tenants(bench: common.BenchSession, count: int, orders: int) -> list[Eshop]:
    from eshops.models import EshopSettings

    shops = sync_db.save_tenants(bench, count)
    for shop in shops:
        # Spread over a day: the catch-up after the copy has nothing to refetch.
        bench.emulator.add_orders(shop.eshop_id, orders, history_days=1)
        EshopSettings.objects.create(eshop=shop, sync_orders=True, sync_products=False)
    return shops


def scenario(
    bench: common.BenchSession, args: argparse.Namespace, *, with_big: bool
) -> dict[str, Any]:
    """Queue every tenant through schedule_due; the small ones' completion times."""
    from django.utils import timezone

    from eshops.models import Eshop
    from sync.models import Order, SyncState
    from sync.tasks import schedule_due

    # Created first, so schedule_due queues the big tenant ahead of every small one.
    big = tenants(bench, 1, args.big_orders)[0] if with_big else None
    small = tenants(bench, args.small, args.small_orders)
    small_ids = [shop.pk for shop in small]
    started = timezone.now()
    queued = schedule_due()
    deadline = time.monotonic() + BOUND_SECONDS
    while True:
        done = SyncState.objects.filter(
            eshop_id__in=small_ids, resource="orders", last_success_at__isnull=False
        ).count()
        if done == len(small):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"only {done}/{len(small)} small tenants finished in time")
        time.sleep(0.2)
    times = [
        (state.last_success_at - started).total_seconds()
        for state in SyncState.objects.filter(eshop_id__in=small_ids, resource="orders")
        if state.last_success_at is not None
    ]
    mirrored = Order.objects.filter(eshop_id__in=small_ids).count()
    result: dict[str, Any] = {
        "queued": queued,
        "median_s": statistics.median(times),
        "p90_s": common.percentile(times, 90),
        "max_s": max(times),
        "small_orders_mirrored": mirrored,
        "small_orders_expected": len(small) * args.small_orders,
    }
    if big is not None:
        # Stop the big one at its next slice (the pause path), then let its queue drain.
        Eshop.objects.filter(pk=big.pk).update(
            processing_paused_at=timezone.now(), processing_paused_by="bench"
        )
        state = SyncState.objects.get(eshop=big, resource="orders")
        result["big_orders_stored_meanwhile"] = state.items_stored
        result["big_slices_listed_pages"] = state.checkpoint.get("page")
        stop_by = time.monotonic() + 120
        while time.monotonic() < stop_by:
            if SyncState.objects.filter(
                eshop=big, resource="orders", running_since=None
            ).exists():
                break
            time.sleep(0.2)
    result["elapsed_s"] = (timezone.now() - started).total_seconds()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with (
        sync_db.own_database(NAME) as database_url,
        common.session(NAME, database_url=database_url) as bench,
    ):
        from celery.contrib.testing.worker import start_worker
        from django.conf import settings

        from addon_project.celery import app as celery_app
        from addon_project.redis_client import get_redis

        settings.SHOPTET_WEBHOOK_URL = ""  # full copies page through the list
        sync_db.migrate()
        queue = f"bench-{NAME}-{uuid.uuid4().hex[:10]}"
        celery_app.conf.update(task_always_eager=False, task_default_queue=queue)
        celery_app.__dict__.pop(
            "amqp", None
        )  # queue declarations are cached on first use
        results: dict[str, dict[str, Any]] = {}
        try:
            with start_worker(
                celery_app,
                pool="threads",
                concurrency=args.workers,
                perform_ping_check=False,
                shutdown_timeout=30,
            ):
                # Warm-up (connections, imports, the worker's first tasks), not recorded.
                scenario(
                    bench,
                    argparse.Namespace(
                        **{**vars(args), "small": 2, "small_orders": 20}
                    ),
                    with_big=False,
                )
                for label, with_big in (("without big", False), ("with big", True)):
                    print(
                        f"{label}: {args.small} tenants x {args.small_orders} orders"
                        + (f" + 1 x {args.big_orders}" if with_big else "")
                        + f", {args.workers} worker threads ...",
                        flush=True,
                    )
                    results[label] = scenario(bench, args, with_big=with_big)
        finally:
            get_redis().delete(queue)
        alone, shared = results["without big"], results["with big"]
        ratio = shared["median_s"] / alone["median_s"]
        complete = all(
            r["small_orders_mirrored"] == r["small_orders_expected"]
            for r in results.values()
        )
        summary = [
            common.row(
                "small tenants' median completion, big present / absent",
                round(shared["median_s"], 2),
                baseline=round(alone["median_s"], 2),
                ratio=round(ratio, 3),
                unit="s",
                target=f"<= {TARGET_RATIO}",
                ok=ratio <= TARGET_RATIO,
            ),
            common.row(
                "small tenants mirrored completely",
                "yes" if complete else "no",
                target="yes",
                ok=complete,
            ),
        ]
        rows = [
            [
                label,
                r["median_s"],
                r["p90_s"],
                r["max_s"],
                r["small_orders_mirrored"],
                r.get("big_orders_stored_meanwhile"),
            ]
            for label, r in results.items()
        ]
        params = {
            "small_tenants": args.small,
            "small_orders": args.small_orders,
            "big_orders": args.big_orders,
            "workers": args.workers,
            "pool": "threads",
            "slice_pages": settings.SYNC_SLICE_PAGES,
            "slice_seconds": settings.SYNC_SLICE_SECONDS,
            "database": database_url.split(":", 1)[0],
        }
        notes = [
            "Full copies page through the list (no SHOPTET_WEBHOOK_URL): the big tenant's "
            "slices are bucket-paced detail calls, each slice bounded by SYNC_SLICE_SECONDS.",
            "The big tenant is not expected to finish: it is paused once the small ones are "
            "done (its stored count shows how far it got).",
            f"Expected ratio with fair slicing: about W/(W-1) = "
            f"{args.workers / max(args.workers - 1, 1):.2f} for W={args.workers} workers.",
        ]
        common.report(
            NAME,
            params=params,
            summary=summary,
            details={"scenarios": results, "measured_at": dt.datetime.now(dt.UTC)},
            notes=notes,
            tables={
                "completion of the small tenants (s from schedule_due)": (
                    [
                        "scenario",
                        "median",
                        "p90",
                        "max",
                        "orders mirrored",
                        "big stored",
                    ],
                    rows,
                )
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
