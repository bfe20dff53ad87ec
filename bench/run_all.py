"""Run every benchmark, each in its own process, then print one combined summary.

Each benchmark still prints its own tables and writes bench/results/<name>.json; this script
reads those files back and writes bench/results/summary.json.

Usage: python bench/run_all.py [--quick] [--only client_overhead,token_economy] [--emulator-process]
       make bench BENCH_ARGS="--quick"
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: python bench/run_all.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common

BENCHMARKS = (
    "client_overhead",
    "token_economy",
    "renewal_sweep",
    "sync_rate",
    "sync_fairness",
    "sync_ingest",
    "tenant_scale",
    "ingest",
)
# The benchmarks that can put the emulator in a child process.
EMULATOR_PROCESS_CAPABLE = ("token_economy", "renewal_sweep")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke-sized runs (well under a minute each)",
    )
    parser.add_argument(
        "--only", default="", help=f"comma list out of {', '.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--emulator-process",
        action="store_true",
        help=f"run the emulator in a child process where supported ({', '.join(EMULATOR_PROCESS_CAPABLE)})",
    )
    parser.add_argument(
        "--print-json",
        action="store_true",
        help="let each benchmark print its JSON document too",
    )
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in str(args.only).split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    selected = [name for name in BENCHMARKS if not args.only or name in args.only]
    env = {**os.environ, "BENCH_PRINT_JSON": "1" if args.print_json else "0"}
    outcomes: dict[str, dict[str, object]] = {}
    documents: dict[str, dict[str, Any]] = {}
    for name in selected:
        command = [sys.executable, "-m", f"bench.{name}"]
        if args.quick:
            command.append("--quick")
        if args.emulator_process and name in EMULATOR_PROCESS_CAPABLE:
            command.append("--emulator-process")
        print(f"\n>>> {' '.join(command[1:])}", flush=True)
        result_path = common.RESULTS_DIR / f"{name}.json"
        started_wall = time.time()
        started = time.perf_counter()
        code = subprocess.call(command, cwd=common.ROOT, env=env)  # noqa: S603 (our own interpreter and modules)
        seconds = time.perf_counter() - started
        fresh = result_path.exists() and result_path.stat().st_mtime >= started_wall
        outcomes[name] = {
            "exit_code": code,
            "seconds": round(seconds, 1),
            "result": fresh,
        }
        if code == 0 and fresh:
            documents[name] = json.loads(result_path.read_text(encoding="utf-8"))

    print("\n=== summary of all benchmarks ===")
    print(
        "machine: "
        + ", ".join(
            f"{key}={common.fmt(value)}" for key, value in common.machine().items()
        )
    )
    print()
    print(
        common.table(
            ["benchmark", "exit code", "seconds", "result"],
            [
                [
                    name,
                    o["exit_code"],
                    o["seconds"],
                    "written" if o["result"] else "MISSING",
                ]
                for name, o in outcomes.items()
            ],
        )
    )
    rows: list[list[object]] = []
    for name, document in documents.items():
        for r in document["summary"]:
            rows.append(
                [
                    name,
                    r["metric"],
                    r["value"],
                    r["baseline"],
                    r["ratio"],
                    r["unit"],
                    r["target"],
                    "-" if r["ok"] is None else ("yes" if r["ok"] else "NO"),
                ]
            )
    print()
    print(
        common.table(
            [
                "benchmark",
                "metric",
                "value",
                "baseline",
                "ratio",
                "unit",
                "target",
                "ok",
            ],
            rows,
        )
    )
    missed = [f"{row[0]}: {row[1]}" for row in rows if row[7] == "NO"]
    if missed:
        print("\ntargets missed:")
        for line in missed:
            print(f"- {line}")
    print(
        "\nratio = value / baseline (both measured in the same run); see bench/README.md."
    )
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (common.RESULTS_DIR / "summary.json").write_text(
        json.dumps(
            {"machine": common.machine(), "runs": outcomes, "results": documents},
            indent=2,
            default=str,
        )
        + "\n",
        encoding="utf-8",
    )
    failed = [
        name for name, o in outcomes.items() if o["exit_code"] != 0 or not o["result"]
    ]
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
