"""The sync engine: one loop for every declared resource (sync/resources.py).

A run moves a `SyncState` through phases, saving a checkpoint after every stored page or batch:

* **full copy**, through a snapshot job (when `job:finished` is registered) or by paging the list
  endpoint; rows the copy did not see are removed at its end. If the list moved while we paged
  (`totalCount` drift), the walk is repeated (pages of unchanged items cost one list call) so
  nothing shifted past us is missed.
* **incremental**: `/changes?from=` the checkpoint minus an overlap; details fetched for what is
  newer than the mirror (so an order a webhook already refreshed is fetched once), deletes applied.
  The checkpoint advances to the walk's start only after the whole walk is stored.

Every write is an idempotent bulk upsert keyed by (eshop, key): a crash anywhere resumes from the
checkpoint with no duplicates and no gaps.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from addon_project.redis_client import get_redis
from addon_project.redis_keys import sync_job_finished_key
from eshops.models import Eshop
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import (
    ShoptetAPIError,
    ShoptetForbidden,
    ShoptetInvalidResponse,
    ShoptetNotFound,
)
from sync import download
from sync.models import SyncState
from sync.resources import ItemError, Resource, parse_time

logger = logging.getLogger(__name__)

STORE_BATCH = 500
SAME_SECOND = dt.timedelta(seconds=1)
MAX_WALK_PASSES = 3  # walks repeated when the list moved under us
MAX_SNAPSHOT_ATTEMPTS = 2  # failed/expired jobs before falling back to paging
# Shoptet answers 403 to the 11th detail request of an unfinished job; a client retry of a poll
# (a dropped connection, a 503) counts there too, so the engine's own polls stop at 8.
MAX_UNFINISHED_JOB_POLLS = 8
# Incremental: from this many changed items on, fetch them through snapshot jobs filtered by up to
# SNAPSHOT_FILTER_MAX keys (5 drops to start + 1 to read the job, per 50) instead of one detail
# call each (1 drop each); measured against the emulator's cost model in the sync README section.
SNAPSHOT_FETCH_MIN = 20
SNAPSHOT_FILTER_MAX = 50
DONE_STATUSES = {"completed"}
FAILED_STATUSES = {"failed", "expired", "killed"}

Progress = Callable[[int, int | None, str], None]


class Outcome(enum.StrEnum):
    DONE = "done"  # the mirror is complete (as of the checkpoint)
    MORE = "more"  # the slice's budget is spent; call again
    WAITING = "waiting"  # a snapshot job is running at Shoptet; call again later


class SyncStopped(Exception):
    """The run cannot go on now (tenant stopped, lease lost); the checkpoint is kept."""


@dataclass
class Budget:
    """How much one slice may do: pages and seconds (None: unlimited)."""

    pages: int | None = None
    seconds: float | None = None
    started: float = field(default_factory=time.monotonic)
    pages_used: int = 0

    def spent(self) -> bool:
        return (self.pages is not None and self.pages_used >= self.pages) or (
            self.seconds is not None and time.monotonic() - self.started >= self.seconds
        )


def mark_job_finished(eshop_id: int, job_id: str) -> None:
    """`job:finished` arrived: the next step reads the job detail at once."""
    get_redis().set(sync_job_finished_key(eshop_id, job_id), "1", ex=86_400)


def state_for(eshop: Eshop, resource: Resource) -> SyncState:
    state, _ = SyncState.objects.get_or_create(eshop=eshop, resource=resource.name)
    return state


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds")


def _from_iso(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


class Engine:
    """Runs one tenant's sync of one resource, step by step, from its checkpoint."""

    def __init__(
        self,
        eshop: Eshop,
        resource: Resource,
        *,
        client: ShoptetClient,
        progress: Progress | None = None,
        lost: Callable[[], bool] | None = None,
    ) -> None:
        self.eshop = eshop
        self.resource = resource
        self.client = client
        self.progress = progress
        self.lost = lost or (lambda: False)
        self.model = resource.model
        self.state = state_for(eshop, resource)
        self.wait_seconds = 0.0  # with Outcome.WAITING: when to call again

    # --- the loop ---

    def run(self, *, full: bool = False, budget: Budget | None = None) -> Outcome:
        """Work until the mirror is complete, the budget is spent or a job must be waited for."""
        budget = budget or Budget()
        state = self.state
        if full:
            state.full_requested = True
            if state.phase in (SyncState.Phase.CHANGES, SyncState.Phase.FAILED):
                state.phase = SyncState.Phase.IDLE
        if state.phase == SyncState.Phase.FAILED:
            state.phase = SyncState.Phase.IDLE
        if state.running_since is None:
            state.running_since = timezone.now()
        self._save(extra=["full_requested"])
        try:
            while True:
                self._check_alive()
                if state.phase == SyncState.Phase.IDLE:
                    self._start()
                    continue
                if state.phase == SyncState.Phase.LISTING:
                    finished = self._list_page()
                    budget.pages_used += 1
                elif state.phase == SyncState.Phase.SNAPSHOT:
                    step = self._snapshot_step()
                    if step is Outcome.WAITING:
                        return Outcome.WAITING
                    finished = step is Outcome.DONE
                    budget.pages_used += 1
                elif state.checkpoint.get("fetch"):
                    step = self._fetch_step()
                    if step is Outcome.WAITING:
                        return Outcome.WAITING
                    finished = step is Outcome.DONE
                    budget.pages_used += 1
                else:
                    finished = self._changes_page()
                    budget.pages_used += 1
                if finished:
                    self._succeeded()
                    return Outcome.DONE
                if budget.spent():
                    return Outcome.MORE
        except (SyncStopped, ShoptetAPIError, download.DownloadError) as exc:
            state.last_error = f"{type(exc).__name__}: {exc}"[:500]
            state.last_error_at = timezone.now()
            state.running_since = None
            self._save()
            raise

    def _check_alive(self) -> None:
        """Stop between steps when the tenant may no longer call the API or the lease is gone."""
        self.eshop.refresh_from_db(
            fields=[
                "status",
                "processing_paused_at",
                "processing_paused_by",
                "webhooks",
                "url",
            ]
        )
        if not self.eshop.can_call_api:
            state = "paused" if self.eshop.processing_paused_at else self.eshop.status
            raise SyncStopped(f"e-shop {self.eshop.eshop_id} is {state}")
        if self.lost():
            raise SyncStopped(
                "the sync lease was lost (another run may have taken over)"
            )

    def _start(self) -> None:
        state = self.state
        now = timezone.now()
        history = dt.timedelta(days=settings.SYNC_CHANGES_HISTORY_DAYS) - dt.timedelta(
            hours=1
        )
        if (
            state.full_requested
            or state.changes_from is None
            or state.changes_from < now - history
        ):
            state.mode = SyncState.Mode.FULL
            state.full_requested = False
            state.items_done, state.items_total = 0, None
            if self._snapshots_possible():
                state.phase = SyncState.Phase.SNAPSHOT
                state.checkpoint = {"copy_started": _iso(now), "attempt": 1}
            else:
                state.phase = SyncState.Phase.LISTING
                state.checkpoint = self._new_walk(copy_started=_iso(now))
            logger.info(
                "eshop_id=%s %s: full copy (%s)",
                self.eshop.eshop_id,
                self.resource.name,
                state.phase,
            )
        else:
            assert state.changes_from is not None  # noqa: S101 - checked just above
            overlap = dt.timedelta(seconds=settings.SYNC_CHANGES_OVERLAP_SECONDS)
            state.mode = SyncState.Mode.INCREMENTAL
            state.phase = SyncState.Phase.CHANGES
            state.items_done, state.items_total = 0, None
            state.checkpoint = self._new_walk(
                **{
                    "from": _iso(state.changes_from - overlap),
                    "window_start": _iso(now),
                }
            )
        self._save(extra=["full_requested"])

    @staticmethod
    def _new_walk(**fields: Any) -> dict[str, Any]:
        return {**fields, "page": 1, "pass": 1, "moved": False, "total": None}

    def _snapshots_possible(self) -> bool:
        # Without a registered job:finished, Shoptet answers 403 to asynchronous calls.
        return bool(
            self.resource.snapshot_path
            and settings.SHOPTET_WEBHOOK_URL
            and "job:finished" in (self.eshop.webhooks or {})
        )

    def _succeeded(self) -> None:
        state = self.state
        now = timezone.now()
        state.phase = SyncState.Phase.IDLE
        state.checkpoint = {}
        state.running_since = None
        state.last_success_at = now
        state.last_error = ""
        self._save()

    def _save(self, extra: Iterable[str] = ()) -> None:
        self.state.save(
            update_fields=[
                "mode",
                "phase",
                "checkpoint",
                "changes_from",
                "items_done",
                "items_total",
                "items_stored",
                "items_deleted",
                "item_errors",
                "recent_item_errors",
                "last_success_at",
                "last_full_at",
                "last_error",
                "last_error_at",
                "running_since",
                "updated_at",
                *extra,
            ]
        )

    def _report(self, done: int, total: int | None, unit: str) -> None:
        if self.progress is not None:
            self.progress(done, total, unit)

    # --- full copy by paging the list ---

    def _walk_page(
        self, path: str, params: dict[str, Any], items_key: str
    ) -> tuple[list[Any], bool]:
        """One page of a walk: its items, and whether it was the last. Notes drift in the checkpoint."""
        cp = self.state.checkpoint
        try:
            data = self.client.get(path, params={**params, "page": cp["page"]})
        except ShoptetNotFound as exc:
            if cp["page"] > 1 and exc.error_code == "page-not-found":
                cp["moved"] = True  # fewer pages than announced: the list shrank
                return [], True
            raise
        if not isinstance(data, dict) or not isinstance(data.get("paginator"), dict):
            raise ShoptetInvalidResponse("list answer has no paginator", endpoint=path)
        items = data.get(items_key)
        if not isinstance(items, list):
            raise ShoptetInvalidResponse(f"{items_key!r} is not a list", endpoint=path)
        paginator = data["paginator"]
        total = paginator.get("totalCount")
        if cp["total"] is None:
            cp["total"] = total
        elif total != cp["total"]:
            logger.warning(
                "eshop_id=%s %s: totalCount %s -> %s at page %s; walking again",
                self.eshop.eshop_id,
                path,
                cp["total"],
                total,
                cp["page"],
            )
            cp["moved"], cp["total"] = True, total
        self.state.items_total = (
            total if isinstance(total, int) and total >= 0 else None
        )
        last = not items or cp["page"] >= int(paginator.get("pageCount") or 0)
        return items, last

    def _end_of_walk(self) -> bool:
        """At the walk's last page: True when it is clean (or passes ran out), else walk again."""
        cp = self.state.checkpoint
        if cp["moved"] and cp["pass"] < MAX_WALK_PASSES:
            cp.update(page=1, moved=False, total=None, **{"pass": cp["pass"] + 1})
            self._save()
            return False
        return True

    def _list_page(self) -> bool:
        resource, cp = self.resource, self.state.checkpoint
        items, last = self._walk_page(
            resource.list_path,
            {"itemsPerPage": resource.list_page_size},
            resource.list_items_key,
        )
        seen: dict[str, dt.datetime | None] = {}
        for item in items:
            key = item.get(resource.api_key) if isinstance(item, dict) else None
            if not isinstance(key, str | int) or isinstance(key, bool) or key == "":
                self.state.record_item_error(
                    "?", f"list item without {resource.api_key}"
                )
                continue
            try:
                changed = parse_time(item.get("changeTime"), "changeTime")
            except ItemError:
                changed = None
            seen[str(key)] = changed
        stored = self._fetch_newer(seen)
        # Rows seen but not refetched are still at Shoptet: the end-of-copy delete must keep them.
        self.model._default_manager.filter(
            eshop=self.eshop, **{f"{resource.key_field}__in": list(seen)}
        ).exclude(**{f"{resource.key_field}__in": stored}).update(
            synced_at=timezone.now()
        )
        self.state.items_done += len(items)
        self._report(self.state.items_done, self.state.items_total, "items")
        if not last:
            cp["page"] += 1
            self._save()
            return False
        if not self._end_of_walk():
            return False
        self._finish_full(clean=not cp["moved"])
        return False  # the incremental catch-up runs next

    def _finish_full(self, *, clean: bool) -> None:
        state = self.state
        copy_started = _from_iso(state.checkpoint["copy_started"])
        if clean:
            gone, _ = self.model._default_manager.filter(
                eshop=self.eshop, synced_at__lt=copy_started
            ).delete()
            state.items_deleted += gone
        # What changed while the copy ran (a delete after we stored the order, say) is caught up
        # by an incremental walk from the copy's start, in this same run.
        state.changes_from = copy_started
        state.last_full_at = timezone.now()
        state.phase = SyncState.Phase.IDLE
        state.checkpoint = {}
        self._save()

    # --- incremental through /changes ---

    def _changes_page(self) -> bool:
        resource, cp = self.resource, self.state.checkpoint
        window_start = _from_iso(cp["window_start"])
        changes, last = self._walk_page(
            resource.changes_path,
            # requests percent-encodes the "+" of the offset (a raw + would read as a space).
            {"from": cp["from"], "itemsPerPage": resource.changes_page_size},
            "changes",
        )
        newest: dict[str, tuple[str, dt.datetime | None]] = {}
        for change in changes:
            key = change.get(resource.api_key) if isinstance(change, dict) else None
            kind = change.get("changeType") if isinstance(change, dict) else None
            if not isinstance(key, str | int) or isinstance(key, bool) or key == "":
                self.state.record_item_error("?", "change without a key")
                continue
            try:
                when = parse_time(change.get("changeTime"), "changeTime")
            except ItemError:
                when = None
            if when is not None and when >= window_start:
                cp["moved"] = True  # changed during this walk: the walk is repeated
            newest[str(key)] = (str(kind), when)
        deleted = [key for key, (kind, _) in newest.items() if kind == "delete"]
        if deleted:
            self._delete(deleted)
        changed = {
            key: when for key, (kind, when) in newest.items() if kind != "delete"
        }
        if len(changed) >= SNAPSHOT_FETCH_MIN and self._filtered_snapshots_possible():
            wanted = self._wanted(changed)
            if len(wanted) >= SNAPSHOT_FETCH_MIN:
                # Many changed items: filtered snapshot jobs (6 drops per 50) instead of one
                # detail call each (50 drops per 50). The page ends when they are stored.
                cp["fetch"] = {"keys": wanted, "last": last, "count": len(changes)}
                self._save()
                return False
        self._fetch_newer(changed)
        return self._end_of_changes_page(last=last, count=len(changes))

    def _end_of_changes_page(self, *, last: bool, count: int) -> bool:
        """Everything the page named is stored: move on (True when the walk is complete)."""
        cp = self.state.checkpoint
        window_start = _from_iso(cp["window_start"])
        self.state.items_done += count
        self._report(self.state.items_done, self.state.items_total, "items")
        if not last:
            cp["page"] += 1
            self._save()
            return False
        if not self._end_of_walk():
            return False
        if not cp["moved"]:
            # Everything changed before the walk started is stored: only now may `from` move on.
            self.state.changes_from = window_start
        return True

    # --- fetching and storing ---

    def _fetch_newer(self, seen: dict[str, dt.datetime | None]) -> list[str]:
        """Fetch the detail of every key the mirror lacks or holds older; store them. Keys stored."""
        if not seen:
            return []
        items, gone = [], []
        for key in self._wanted(seen):
            item = self.fetch_detail(key)
            if item is None:
                gone.append(key)
            else:
                items.append(item)
        if gone:
            self._delete(gone)
        return self.store(items)

    def _wanted(self, seen: dict[str, dt.datetime | None]) -> list[str]:
        """The keys whose change the mirror does not hold yet."""
        key_field = self.resource.key_field
        have = {
            key: (changed, synced)
            for key, changed, synced in self.model._default_manager.filter(
                eshop=self.eshop, **{f"{key_field}__in": list(seen)}
            ).values_list(key_field, "change_time", "synced_at")
        }
        return [
            key
            for key, changed in seen.items()
            if not self._current(have.get(key), changed)
        ]

    @staticmethod
    def _current(
        have: tuple[dt.datetime | None, dt.datetime] | None, changed: dt.datetime | None
    ) -> bool:
        """Whether the stored row already holds the change at `changed` (so: fetched once).

        Times have one-second resolution: an equal changeTime is only proof when we fetched the
        row at least a second after it (a second edit in the same second looks identical).
        """
        if have is None or changed is None:
            return False
        stored_change, synced = have
        if stored_change is None:
            return False
        return stored_change > changed or (
            stored_change == changed and synced >= changed + SAME_SECOND
        )

    def fetch_detail(self, key: str) -> dict[str, Any] | None:
        """The item's detail, or None when Shoptet no longer has it (404)."""
        path = self.resource.detail_path.format(key=quote(key, safe=""))
        try:
            data = self.client.get(path, params=self.resource.detail_params or None)
        except ShoptetNotFound:
            return None
        item = self.resource.unwrap_detail(data)
        if not isinstance(item, dict):
            raise ShoptetInvalidResponse("detail answer has no item", endpoint=path)
        return item

    def _delete(self, keys: list[str]) -> None:
        gone, _ = self.model._default_manager.filter(
            eshop=self.eshop, **{f"{self.resource.key_field}__in": keys}
        ).delete()
        self.state.items_deleted += gone

    def store(self, items: Iterable[Any]) -> list[str]:
        """Upsert items in bulk; bad ones are recorded as item errors. Returns the keys stored."""
        now = timezone.now()
        rows: dict[str, Any] = {}
        key_field = self.resource.key_field
        for item in items:
            key_hint = (
                str(item.get(self.resource.api_key, "?"))
                if isinstance(item, dict)
                else "?"
            )
            try:
                if not isinstance(item, dict):
                    raise ItemError("item is not an object")
                fields = self.resource.to_fields(item)
                if "\\u0000" in json.dumps(item):
                    raise ItemError("item contains a NUL character")
            except ItemError as exc:
                self.state.record_item_error(key_hint, str(exc))
                logger.warning(
                    "eshop_id=%s %s %s: not stored: %s",
                    self.eshop.eshop_id,
                    self.resource.name,
                    key_hint[:100],
                    exc,
                )
                continue
            rows[fields[key_field]] = self.model(
                eshop=self.eshop, data=item, synced_at=now, **fields
            )
        if rows:
            with transaction.atomic():
                self.model._default_manager.bulk_create(
                    list(rows.values()),
                    update_conflicts=True,
                    unique_fields=["eshop", key_field],
                    update_fields=self.resource.update_fields,
                )
            self.state.items_stored += len(rows)
        return list(rows)

    # --- full copy through a snapshot job ---

    def _snapshot_step(self) -> Outcome:
        """Start the job, wait for it, or download its result. DONE when the copy is complete."""
        cp = self.state.checkpoint
        if not cp.get("job_id"):
            return self._start_job()
        if not cp.get("result_url"):
            return self._wait_for_job(cp, self._retry_job)
        return self._download()

    def _wait_for_job(
        self, job: dict[str, Any], failed: Callable[[str], Outcome]
    ) -> Outcome:
        """Wait for the job in `job` (a checkpoint part): its webhook, a due poll or its timeout."""
        now = time.time()
        if now - job["started_at"] > settings.SYNC_JOB_TIMEOUT_SECONDS:
            return failed("job never finished")
        finished = bool(
            get_redis().exists(
                sync_job_finished_key(self.eshop.eshop_id, job["job_id"])
            )
        )
        next_poll = job.get("next_poll_at")
        if not finished and (next_poll is None or now < next_poll):
            self.wait_seconds = max(1.0, (next_poll or now + 60) - now)
            return Outcome.WAITING
        return self._read_job(finished=finished, cp=job, failed=failed)

    def _start_job(self) -> Outcome:
        cp = self.state.checkpoint
        path = self.resource.snapshot_path
        assert path is not None  # noqa: S101 - only called when snapshots are possible
        try:
            data = self.client.get(path)
        except ShoptetForbidden as exc:
            # job:finished is not registered after all (or no right): page through the list.
            logger.warning(
                "eshop_id=%s %s: snapshot refused (%s); paging the list instead",
                self.eshop.eshop_id,
                path,
                exc.error_code,
            )
            self._fall_back_to_list()
            return Outcome.MORE
        job_id = data.get("jobId") if isinstance(data, dict) else None
        if not isinstance(job_id, str) or not job_id or len(job_id) > 64:
            raise ShoptetInvalidResponse("snapshot answer has no jobId", endpoint=path)
        started = time.time()
        cp.update(
            job_id=job_id,
            started_at=started,
            polls=0,
            next_poll_at=started + settings.SYNC_JOB_POLL_DELAYS[0],
            line=0,
        )
        self._save()
        return Outcome.MORE

    def _fall_back_to_list(self) -> None:
        copy_started = self.state.checkpoint["copy_started"]
        self.state.phase = SyncState.Phase.LISTING
        self.state.checkpoint = self._new_walk(copy_started=copy_started)
        self._save()

    def _retry_job(self, why: str) -> Outcome:
        cp = self.state.checkpoint
        logger.warning(
            "eshop_id=%s %s: snapshot job %s: %s",
            self.eshop.eshop_id,
            self.resource.name,
            cp.get("job_id"),
            why,
        )
        if cp.get("attempt", 1) >= MAX_SNAPSHOT_ATTEMPTS:
            self._fall_back_to_list()
            return Outcome.MORE
        self.state.checkpoint = {
            "copy_started": cp["copy_started"],
            "attempt": cp.get("attempt", 1) + 1,
        }
        self._save()
        return Outcome.MORE

    @staticmethod
    def _max_polls() -> int:
        return min(len(settings.SYNC_JOB_POLL_DELAYS), MAX_UNFINISHED_JOB_POLLS)

    # Reference: https://api.docs.shoptet.com/shoptet-api/openapi/jobs/getjobdetail
    def _read_job(
        self,
        *,
        finished: bool,
        cp: dict[str, Any],
        failed: Callable[[str], Outcome],
    ) -> Outcome:
        if not finished:
            # Shoptet refuses the 11th detail poll of an unfinished job: we stop before it,
            # however many delays are configured.
            if cp["polls"] >= self._max_polls():
                cp["next_poll_at"] = None
                self._save()
                self.wait_seconds = 60.0
                return Outcome.WAITING
            cp["polls"] += 1
        job = self.client.get(f"/api/system/jobs/{quote(cp['job_id'], safe='')}")
        job = job.get("job", job) if isinstance(job, dict) else None
        status = job.get("status") if isinstance(job, dict) else None
        if status in DONE_STATUSES and isinstance(job, dict):
            url = job.get("resultUrl")
            if not isinstance(url, str):
                return failed("completed without a resultUrl")
            cp["result_url"] = url
            self._save()
            return Outcome.MORE
        if status in FAILED_STATUSES:
            return failed(f"status {status}")
        delays = settings.SYNC_JOB_POLL_DELAYS
        if cp["polls"] < self._max_polls():
            cp["next_poll_at"] = time.time() + delays[cp["polls"]]
        else:
            cp["next_poll_at"] = None  # only the webhook or the sweeper now
        self._save()
        self.wait_seconds = max(
            1.0, (cp["next_poll_at"] or time.time() + 60) - time.time()
        )
        return Outcome.WAITING

    def _download(self) -> Outcome:
        cp = self.state.checkpoint
        done_line = int(cp.get("line", 0))
        batch: list[Any] = []
        last_line = done_line

        def flush() -> None:
            self.store(batch)
            batch.clear()
            cp["line"] = last_line
            self.state.items_done = last_line
            self._save()

        try:
            for line in download.stream_lines(
                cp["result_url"],
                shop_url=self.eshop.url,
                progress=lambda got, total: self._report(got, total, "bytes"),
            ):
                if line.number <= done_line:
                    continue
                last_line = line.number
                parsed, item = self._item_of(line)
                if not parsed:
                    continue
                batch.append(item)
                if len(batch) >= STORE_BATCH:
                    flush()
                    if self.lost():
                        raise SyncStopped("the sync lease was lost")
        except download.DownloadError as exc:
            # An expired result (404) will not come back: a new job at once. Anything else
            # (refused URL, too large, too slow) is reported and tried once more first.
            if exc.gone or cp.get("download_failures", 0) >= 1:
                return self._retry_job(str(exc))
            cp["download_failures"] = cp.get("download_failures", 0) + 1
            self._save()
            raise
        flush()
        self._finish_full(clean=True)
        return Outcome.MORE  # the incremental catch-up runs next

    def _item_of(self, line: download.Line) -> tuple[bool, Any]:
        """(parsed, item) of one result line; a line that is no item is recorded as its error."""
        if line.data is None:
            self.state.record_item_error(
                f"line {line.number}", "line longer than SYNC_MAX_LINE_BYTES"
            )
            return False, None
        try:
            return True, json.loads(line.data)
        except ValueError:
            self.state.record_item_error(f"line {line.number}", "not JSON")
            return False, None

    # --- incremental: changed items through filtered snapshot jobs ---

    def _filtered_snapshots_possible(self) -> bool:
        return bool(self.resource.snapshot_filter) and self._snapshots_possible()

    def _fetch_step(self) -> Outcome:
        """One step of fetching a /changes page's items by snapshots: start, wait, download."""
        fetch = self.state.checkpoint["fetch"]
        path, name = self.resource.snapshot_path, self.resource.snapshot_filter
        assert path is not None  # noqa: S101 - checked when chosen
        assert name is not None  # noqa: S101
        batch = fetch["keys"][:SNAPSHOT_FILTER_MAX]
        if not fetch.get("job_id"):
            try:
                data = self.client.get(path, params={name: ",".join(batch)})
            except ShoptetForbidden:
                return self._fetch_batch_by_details("snapshot refused")
            job_id = data.get("jobId") if isinstance(data, dict) else None
            if not isinstance(job_id, str) or not job_id or len(job_id) > 64:
                raise ShoptetInvalidResponse(
                    "snapshot answer has no jobId", endpoint=path
                )
            started = time.time()
            fetch.update(
                job_id=job_id,
                started_at=started,
                polls=0,
                next_poll_at=started + settings.SYNC_JOB_POLL_DELAYS[0],
            )
            self._save()
            return Outcome.MORE
        if not fetch.get("result_url"):
            return self._wait_for_job(fetch, self._fetch_batch_by_details)
        items: list[Any] = []
        try:
            for line in download.stream_lines(
                fetch["result_url"], shop_url=self.eshop.url
            ):
                parsed, item = self._item_of(line)
                if parsed:
                    items.append(item)
                if len(items) > SNAPSHOT_FILTER_MAX:
                    raise download.DownloadError("result has more items than asked for")
        except download.DownloadError as exc:
            return self._fetch_batch_by_details(str(exc))
        self.store(items)
        return self._fetch_batch_done()

    def _fetch_batch_by_details(self, why: str) -> Outcome:
        """The batch's job failed or was refused: one detail call per key instead."""
        logger.warning(
            "eshop_id=%s %s: filtered snapshot: %s; fetching details",
            self.eshop.eshop_id,
            self.resource.name,
            why,
        )
        fetch = self.state.checkpoint["fetch"]
        self._fetch_newer(dict.fromkeys(fetch["keys"][:SNAPSHOT_FILTER_MAX]))
        return self._fetch_batch_done()

    def _fetch_batch_done(self) -> Outcome:
        cp = self.state.checkpoint
        fetch = cp["fetch"]
        keys = fetch["keys"][SNAPSHOT_FILTER_MAX:]
        if keys:
            cp["fetch"] = {"keys": keys, "last": fetch["last"], "count": fetch["count"]}
            self._save()
            return Outcome.MORE
        del cp["fetch"]
        finished = self._end_of_changes_page(last=fetch["last"], count=fetch["count"])
        return Outcome.DONE if finished else Outcome.MORE
