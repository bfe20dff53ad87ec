"""Shared set-up for the benchmarks: environment, Django, the emulator, shops, cleanup, results.

A benchmark is a plain Python process. `session()` starts a `ShoptetEmulator` on a free loopback
port (in this process, or in a child process with `emulator_process=True`), sets the environment
before `django.setup()` (DEBUG, plain-http emulator URLs, a Redis database and a key prefix of its
own, a throw-away SQLite file that nothing should need), and on the way out deletes every Redis
key the run wrote and stops the emulator.

Results: `report()` prints the machine, the parameters, an aligned table and the notes, then
writes the same as JSON to bench/results/<name>.json and prints that document too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import math
import multiprocessing
import os
import platform
import shutil
import statistics
import sys
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from multiprocessing.managers import BaseManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

from shoptet_emulator import ShoptetEmulator

if TYPE_CHECKING:
    from eshops.models import Eshop

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
# The Redis is shared with other work: a database of our own plus a fresh key prefix per run.
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
CLIENT_ID = "bench-client-id"
CLIENT_SECRET = "bench-client-secret"  # noqa: S105 (the emulator's fake)
REDIRECT_URI = "http://127.0.0.1/oauth/install/"
FIRST_ESHOP_ID = 500001


class SummaryRow(TypedDict):
    """One line of a benchmark's summary (and of run_all's combined table)."""

    metric: str
    value: float | int | str | None
    baseline: float | int | str | None
    ratio: float | None
    unit: str
    target: str
    ok: bool | None  # None: informational, no target


def row(
    metric: str,
    value: float | int | str | None,
    *,
    baseline: float | int | str | None = None,
    ratio: float | None = None,
    unit: str = "",
    target: str = "",
    ok: bool | None = None,
) -> SummaryRow:
    return SummaryRow(
        metric=metric,
        value=value,
        baseline=baseline,
        ratio=ratio,
        unit=unit,
        target=target,
        ok=ok,
    )


class EmulatorHost:
    """The emulator and the few operations benchmarks need, callable in or out of this process.

    In process, benchmarks may also use `.emulator` directly. With `session(emulator_process=True)`
    the host lives in a child process (a `multiprocessing` manager) so the emulator does not share
    this process's GIL; only these methods cross the boundary, with plain values.
    """

    def __init__(self) -> None:
        self.emulator = ShoptetEmulator(
            host="127.0.0.1",
            port=0,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            redirect_uri=REDIRECT_URI,
            validate_responses=False,  # schema checks cost more than the code under test
        ).start()

    def urls(self) -> tuple[str, str]:
        return self.emulator.oauth_url, self.emulator.api_url

    def reset(self, token_lifetime: int = 1800) -> None:
        self.emulator.reset()
        self.emulator.token_lifetime = token_lifetime

    def install(self, eshop_ids: list[int]) -> list[str]:
        """Install the addon on each e-shop (emulator state, no HTTP); their OAuth tokens."""
        oauth_tokens = []
        for eshop_id in eshop_ids:
            self.emulator.add_eshop(eshop_id)
            _, oauth_token = self.emulator.complete_install(eshop_id)
            oauth_tokens.append(oauth_token)
        return oauth_tokens

    def set_latency(self, seconds: float, path_prefix: str = "/") -> None:
        self.emulator.set_latency(seconds, path_prefix)

    def set_request_cost(self, drops: int) -> None:
        """Drops each API request adds to the leaky bucket (0: no pacing, no 429s)."""
        self.emulator.request_cost = drops

    def mint(self, oauth_token: str) -> tuple[str | None, int, str | None]:
        """`getAccessToken` without HTTP: (token, expires_in, error)."""
        minted = self.emulator.mint_api_token(oauth_token)
        return minted.token, minted.expires_in, minted.error

    def counters(self) -> dict[str, dict[int, int]]:
        """Per-shop counters from one consistent stats snapshot, keyed by e-shop id."""
        snapshot = self.emulator.stats_snapshot()
        return {
            name: {int(key): int(value) for key, value in snapshot[field].items()}
            for name, field in (
                ("access_token_requests", "accessTokenRequests"),
                ("api_tokens_issued", "apiTokensIssued"),
                ("max_valid_tokens_seen", "maxValidTokensSeen"),
                ("cap_rejections", "capRejections"),
                ("concurrency_rejections", "concurrencyRejections"),
            )
        }

    def answers(self, path: str, status: int) -> int:
        """How many requests to `path` were answered `status` so far (cheap enough to poll)."""
        return self.emulator.stats.status_counts[(path, status)]

    def status_counts(self) -> dict[str, int]:
        """Answers by "path status" (status 0: a dropped connection)."""
        return dict(self.emulator.stats_snapshot()["statusCounts"])

    def rejected_tokens(self, api_tokens: list[str]) -> int:
        """How many of these API tokens the API would refuse right now (expired, unknown)."""
        return sum(
            1
            for token in api_tokens
            if self.emulator.authenticate(token, None).error is not None
        )

    def stop(self) -> None:
        self.emulator.stop()


class _HostManager(BaseManager):
    pass


_HostManager.register("EmulatorHost", EmulatorHost)


@dataclasses.dataclass
class BenchSession:
    """What a running benchmark gets from `session()`."""

    name: str
    host: EmulatorHost
    redis_url: str
    in_process: bool
    prefixes: list[str] = dataclasses.field(default_factory=list)
    next_eshop_id: int = FIRST_ESHOP_ID

    @property
    def emulator(self) -> ShoptetEmulator:
        """The emulator object itself (only when it runs in this process)."""
        if not self.in_process:
            raise RuntimeError("the emulator runs in another process; use .host")
        return self.host.emulator

    @property
    def prefix(self) -> str:
        return self.prefixes[-1]

    def fresh_prefix(self) -> str:
        """Point the token broker at a new, empty Redis key space and forget process-cached tokens."""
        from django.conf import settings

        from shoptet_api import tokens

        prefix = f"bench-{self.name}-{uuid.uuid4().hex[:12]}"
        settings.SHOPTET_REDIS_PREFIX = prefix
        self.prefixes.append(prefix)
        tokens.clear_process_cache()
        return prefix

    def install_shops(self, count: int) -> list[Eshop]:
        """`count` installed e-shops: emulator state directly (no HTTP), unsaved `Eshop` objects.

        `complete_install` is what the emulator's `POST …/token` does after checking the code, so the
        OAuth tokens are real emulator tokens; only the 10,000 HTTP exchanges are skipped. Ids keep
        counting up across resets, so a shop never reuses an earlier run's id.
        """
        from eshops.models import Eshop

        ids = list(range(self.next_eshop_id, self.next_eshop_id + count))
        self.next_eshop_id += count
        oauth_tokens = self.host.install(ids)
        return [
            Eshop(
                eshop_id=eshop_id,
                url=f"https://shop-{eshop_id}.myshoptet.com/",
                oauth_access_token=oauth_token,
                status=Eshop.Status.ACTIVE,
            )
            for eshop_id, oauth_token in zip(ids, oauth_tokens, strict=True)
        ]

    def cleanup_redis(self) -> int:
        """Delete every key under every prefix this run used; the number deleted."""
        from addon_project.redis_client import get_redis

        r = get_redis()
        deleted = 0
        for prefix in self.prefixes:
            batch: list[bytes] = []
            for key in r.scan_iter(match=f"{prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += int(r.delete(*batch))
                    batch = []
            if batch:
                deleted += int(r.delete(*batch))
        return deleted


@contextlib.contextmanager
def session(
    name: str, *, emulator_process: bool = False, database_url: str | None = None
) -> Iterator[BenchSession]:
    """Environment, Django and an emulator for one benchmark; cleans up on the way out.

    The emulator runs in this process (the default: its stats are plain attributes) or, with
    `emulator_process`, in a child process reached through `BenchSession.host`. `database_url`
    (a database of the benchmark's own, see bench/sync_db.py) replaces the empty SQLite file.
    """
    manager: _HostManager | None = None
    if emulator_process:
        manager = _HostManager(ctx=multiprocessing.get_context("spawn"))
        manager.start()
        host = cast("EmulatorHost", manager.EmulatorHost())  # type: ignore[attr-defined]
    else:
        host = EmulatorHost()
    oauth_url, api_url = host.urls()
    tmpdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    redis_url = os.environ.get("BENCH_REDIS_URL", DEFAULT_REDIS_URL)
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "addon_project.settings",
            "DEBUG": "true",
            "SHOPTET_ALLOW_HTTP": "true",
            "REDIS_URL": redis_url,
            # Nothing on the measured paths touches the database; if something does, it is this
            # empty file and the run fails loudly instead of writing to someone's db.sqlite3.
            "DATABASE_URL": database_url or f"sqlite:///{tmpdir / 'bench.sqlite3'}",
            "SHOPTET_CLIENT_ID": CLIENT_ID,
            "SHOPTET_CLIENT_SECRET": CLIENT_SECRET,
            "SHOPTET_REDIRECT_URI": REDIRECT_URI,
            "SHOPTET_OAUTH_URL": oauth_url,
            "SHOPTET_API_URL": api_url,
            "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        }
    )
    bench = BenchSession(
        name=name, host=host, redis_url=redis_url, in_process=manager is None
    )
    try:
        import django

        django.setup()

        from addon_project.redis_client import get_redis

        try:
            get_redis().ping()
        except Exception as exc:
            raise SystemExit(
                f"Redis is not reachable at {redis_url} ({type(exc).__name__})"
            ) from None
        bench.fresh_prefix()
        yield bench
    finally:
        try:
            if bench.prefixes:
                bench.cleanup_redis()
        finally:
            if manager is not None:
                manager.shutdown()
            else:
                host.stop()
            shutil.rmtree(tmpdir, ignore_errors=True)


# --- numbers -------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def safe_ratio(value: float, baseline: float) -> float | None:
    return value / baseline if baseline else None


# --- output --------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
    }
    with contextlib.suppress(OSError):
        info["loadavg_1m_5m_15m"] = [round(x, 2) for x in os.getloadavg()]
    return info


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An aligned plain-text table; numbers right-aligned."""
    cells = [[fmt(value) for value in line] for line in rows]
    widths = [
        max([len(header)] + [len(line[i]) for line in cells])
        for i, header in enumerate(headers)
    ]
    numeric = [
        all(isinstance(line[i], int | float) or line[i] is None for line in rows)
        for i in range(len(headers))
    ]

    def render(line: Sequence[str]) -> str:
        return "  ".join(
            value.rjust(width) if is_number else value.ljust(width)
            for value, width, is_number in zip(line, widths, numeric, strict=True)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(headers), rule, *(render(line) for line in cells)])


def summary_table(
    rows: Sequence[SummaryRow], *, with_benchmark: str | None = None
) -> str:
    headers = ["metric", "value", "baseline", "ratio", "unit", "target", "ok"]
    lines: list[list[Any]] = [
        [
            r["metric"],
            r["value"],
            r["baseline"],
            r["ratio"],
            r["unit"],
            r["target"],
            "-" if r["ok"] is None else ("yes" if r["ok"] else "NO"),
        ]
        for r in rows
    ]
    if with_benchmark is not None:
        headers = ["benchmark", *headers]
        lines = [[with_benchmark, *line] for line in lines]
    return table(headers, lines)


def report(
    name: str,
    *,
    params: dict[str, Any],
    summary: list[SummaryRow],
    details: dict[str, Any],
    notes: list[str],
    tables: dict[str, tuple[Sequence[str], Sequence[Sequence[Any]]]] | None = None,
) -> dict[str, Any]:
    """Print the result as text and JSON, and write bench/results/<name>.json."""
    document: dict[str, Any] = {
        "benchmark": name,
        "finished_at": dt.datetime.now(tz=dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "params": params,
        "summary": summary,
        "details": details,
        "notes": notes,
    }
    out = [f"\n=== {name} ==="]
    out.append(
        "machine: "
        + ", ".join(f"{key}={fmt(value)}" for key, value in document["machine"].items())
    )
    out.append(
        "params:  " + ", ".join(f"{key}={fmt(value)}" for key, value in params.items())
    )
    for title, (headers, rows) in (tables or {}).items():
        out.append(f"\n{title}")
        out.append(table(headers, rows))
    out.append("\nsummary")
    out.append(summary_table(summary))
    if notes:
        out.append("\nnotes")
        out.extend(f"- {note}" for note in notes)
    print("\n".join(out))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    text = json.dumps(document, indent=2, default=str)
    path.write_text(text + "\n", encoding="utf-8")
    if os.environ.get("BENCH_PRINT_JSON", "1") != "0":
        print(f"\nJSON ({path.relative_to(ROOT)}):")
        print(text)
    else:
        print(f"\nJSON written to {path.relative_to(ROOT)}")
    return document
