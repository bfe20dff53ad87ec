"""`manage.py sync_eshop ESHOP_ID [--resource orders|products|all] [--full]`: one tenant, foreground."""

from __future__ import annotations

import time
from typing import Any, TextIO, cast

from django.core.management.base import BaseCommand, CommandError, CommandParser

from eshops.models import Eshop
from shoptet_api.errors import ShoptetAPIError
from sync import resources
from sync.download import DownloadError
from sync.engine import Outcome, SyncStopped
from sync.lease import LeaseHeld
from sync.models import SyncState
from sync.service import run_resource

# How long a second run waits for the holder of the tenant's lease before refusing.
LEASE_WAIT_SECONDS = 5.0
# Without a terminal: one plain progress line this often.
PLAIN_EVERY_SECONDS = 10.0


def _human(value: float, unit: str) -> str:
    if unit != "bytes":
        return f"{value:,.0f}"
    for suffix in ("B", "KB", "MB", "GB"):
        if value < 1024 or suffix == "GB":
            return f"{value:,.1f} {suffix}"
        value /= 1024
    return f"{value:,.1f} GB"


class ProgressPrinter:
    """A progress bar on a terminal (done/total, rate, ETA); a plain line every few seconds otherwise."""

    def __init__(self, stream: TextIO, label: str, *, tty: bool) -> None:
        self.stream, self.label, self.tty = stream, label, tty
        self.started = time.monotonic()
        self.last_line = 0.0
        self.unit = "items"
        self.unit_started = self.started
        self.drawn = False

    def __call__(self, done: int, total: int | None, unit: str) -> None:
        now = time.monotonic()
        if unit != self.unit:
            self.unit, self.unit_started = unit, now
        elapsed = max(now - self.unit_started, 1e-6)
        rate = done / elapsed
        known = total is not None and total > 0
        if not self.tty:
            if now - self.last_line < PLAIN_EVERY_SECONDS:
                return
            self.last_line = now
            of = f"/{_human(total, unit)}" if known and total is not None else ""
            self.stream.write(
                f"{self.label}: {_human(done, unit)}{of} {unit}, {_human(rate, unit)} {unit}/s\n"
            )
            self.stream.flush()
            return
        if now - self.last_line < 0.1:
            return
        self.last_line = now
        if known and total is not None:
            fraction = min(done / total, 1.0)
            bar = "#" * int(fraction * 30)
            eta = (total - done) / rate if rate > 0 else 0.0
            text = (
                f"\r{self.label} [{bar:<30}] {_human(done, unit)}/{_human(total, unit)}"
                f" {fraction:6.1%} {_human(rate, unit)}/s ETA {eta:4.0f} s "
            )
        else:
            text = f"\r{self.label} {_human(done, unit)} {unit} {_human(rate, unit)}/s "
        self.stream.write(text)
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()


class Command(BaseCommand):
    help = "Sync one tenant's orders and/or products now, in the foreground."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("eshop_id", type=int, help="Shoptet's eshopId")
        parser.add_argument(
            "--resource",
            default="all",
            choices=[*sorted(resources.REGISTRY), "all"],
            help="what to sync (default: all)",
        )
        parser.add_argument(
            "--full", action="store_true", help="copy everything, not just what changed"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        eshop_id: int = options["eshop_id"]
        eshop = Eshop.objects.filter(eshop_id=eshop_id).first()
        if eshop is None:
            raise CommandError(f"e-shop {eshop_id} is not installed here")
        if not eshop.can_call_api:
            # Decided from the database alone: no API or getAccessToken request is made.
            state = (
                "paused by an operator" if eshop.processing_paused_at else eshop.status
            )
            raise CommandError(f"e-shop {eshop_id} is {state}; nothing synced")
        names = (
            sorted(resources.REGISTRY)
            if options["resource"] == "all"
            else [options["resource"]]
        )
        tty = bool(getattr(self.stdout._out, "isatty", lambda: False)())
        for name in names:
            self._sync(eshop, name, full=options["full"], tty=tty)

    def _sync(self, eshop: Eshop, name: str, *, full: bool, tty: bool) -> None:
        printer = ProgressPrinter(
            cast("TextIO", self.stdout._out),  # the raw stream: no styling
            f"e-shop {eshop.eshop_id} {name}",
            tty=tty,
        )
        started = time.monotonic()
        try:
            while True:
                outcome, wait = run_resource(
                    eshop,
                    name,
                    full=full,
                    wait=LEASE_WAIT_SECONDS,
                    progress=printer,
                )
                full = False  # a resumed run continues the copy it started
                if outcome is Outcome.DONE:
                    break
                # WAITING for a snapshot job: the webhook or the next poll moves it on.
                time.sleep(min(max(wait, 0.2), 5.0))
        except LeaseHeld as exc:
            raise CommandError(f"e-shop {eshop.eshop_id} {name}: {exc}") from None
        except SyncStopped as exc:
            raise CommandError(
                f"e-shop {eshop.eshop_id} {name}: stopped: {exc}; the mirror is incomplete"
            ) from None
        except (ShoptetAPIError, DownloadError) as exc:
            raise CommandError(
                f"e-shop {eshop.eshop_id} {name}: {type(exc).__name__}: {exc}; "
                "the mirror is incomplete (a rerun resumes)"
            ) from None
        finally:
            printer.close()
        state = SyncState.objects.get(eshop=eshop, resource=name)
        errors = (
            f", {state.item_errors} item errors so far" if state.item_errors else ""
        )
        self.stdout.write(
            f"e-shop {eshop.eshop_id} {name}: complete in {time.monotonic() - started:.1f} s "
            f"({state.items_stored} stored, {state.items_deleted} removed{errors})"
        )
