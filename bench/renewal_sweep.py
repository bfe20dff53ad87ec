"""How long renewing 10,000 tokens that expire together takes, against the ideal and a sequential run.

10,000 installed shops each get one API token, minted together (so they all expire together).
Then `getAccessToken` gets a latency (default 50 ms) and C worker threads (default 64) call
`tokens.renew_if_expiring(eshop, within=...)` once per shop - the call the per-shop Celery task
`shoptet_api.renew_api_token` makes (through `renew_ahead`). `within` is larger than the
remaining lifetime, so every shop renews.

  ideal       shops x latency / C (C calls always in flight, no other cost);
  sequential  one thread, measured on a sample of shops (default 300) and extrapolated to all.

Checks afterwards: every renewal returned True, every shop's stored token is valid and the
emulator accepts it, no shop saw more than SHOPTET_TOKEN_CAP valid tokens, no cap rejection.

Pre-minting calls the emulator's token minting directly instead of over HTTP (through the real
broker, which stores the tokens in Redis as usual): it is set-up, not the measured part.

Usage: python -m bench.renewal_sweep [--shops 10000] [--concurrency 64] [--latency 50] [--sample 300]
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

if __package__ in (None, ""):  # run as a file: python bench/renewal_sweep.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

if TYPE_CHECKING:
    from eshops.models import Eshop

NAME = "renewal_sweep"
# The partner OAuth server path the latency applies to (getAccessToken only).
MINT_PATH = "/action/ApiOAuthServer/getAccessToken"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shops", type=int, default=10_000)
    parser.add_argument(
        "--concurrency",
        default="64",
        help="worker threads; a comma list (e.g. 16,64,128) runs one sweep per value",
    )
    parser.add_argument(
        "--latency", type=float, default=50.0, help="getAccessToken latency in ms"
    )
    parser.add_argument(
        "--sample", type=int, default=300, help="shops in the sequential baseline"
    )
    parser.add_argument(
        "--lifetime", type=int, default=1800, help="token lifetime in s (emulator)"
    )
    parser.add_argument(
        "--ceiling-calls",
        type=int,
        default=3000,
        help="bare getAccessToken calls measuring the emulator's ceiling per concurrency (0: skip)",
    )
    parser.add_argument(
        "--emulator-process",
        action="store_true",
        help="run the emulator in a child process (it then does not share this process's GIL)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 1000 shops, 50 in the sample"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.shops, args.sample, args.ceiling_calls = 1000, 50, 500
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
    bench: common.BenchSession, count: int, lifetime: int, *, premint: bool = True
) -> list[Eshop]:
    """`count` fresh shops on a reset emulator, each (by default) with one stored API token minted now.

    Minting goes through the real broker (`get_api_access_token`, which stores the token in Redis)
    with `getAccessToken` answered by the emulator's state directly instead of over HTTP: set-up,
    not the measured part.
    """
    from shoptet_api import tokens
    from shoptet_api.types import ApiAccessToken

    host = bench.host
    host.set_latency(0, MINT_PATH)
    host.reset(token_lifetime=lifetime)
    bench.fresh_prefix()
    shops = bench.install_shops(count)
    if not premint:
        return shops

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

    shops = prepare(bench, count, 1800, premint=False)
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

    # Afterwards, from Redis (not process memory): does every shop hold a token Shoptet accepts?
    tokens.clear_process_cache()
    issued_after_sweep = sum(host.counters()["api_tokens_issued"].values())
    stored = [str(tokens.get_api_access_token(eshop)) for eshop in shops]
    rejected = host.rejected_tokens(stored)
    counters = host.counters()
    issued = counters["api_tokens_issued"]
    minted_by_check = sum(issued.values()) - issued_after_sweep
    per_shop_new = [
        issued.get(s.eshop_id, 0) - issued_before.get(s.eshop_id, 0) for s in shops
    ]
    cap = tokens.token_cap()
    max_seen = counters["max_valid_tokens_seen"]
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
        "shops_renewed_exactly_once": sum(1 for n in per_shop_new if n == 1),
        "shops_with_duplicate_mints": sum(1 for n in per_shop_new if n > 1),
        "shops_not_renewed": sum(1 for n in per_shop_new if n == 0),
        "shops_without_valid_token": rejected,
        "tokens_minted_by_the_check": minted_by_check,
        "max_valid_tokens_seen": max(
            (max_seen.get(s.eshop_id, 0) for s in shops), default=0
        ),
        "shops_over_cap": sum(1 for s in shops if max_seen.get(s.eshop_id, 0) > cap),
        "cap_rejections": sum(counters["cap_rejections"].values()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
            summary += [
                common.row(
                    f"C={w}: every shop renewed once and holds a valid token",
                    "yes" if healthy else "NO",
                    target="yes",
                    ok=healthy,
                ),
                common.row(
                    f"C={w}: shops over SHOPTET_TOKEN_CAP={cap} / cap rejections",
                    f"{run['shops_over_cap']} / {run['cap_rejections']}",
                    target="0 / 0",
                    ok=run["shops_over_cap"] == 0 and run["cap_rejections"] == 0,
                ),
            ]
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


if __name__ == "__main__":
    sys.exit(main())
