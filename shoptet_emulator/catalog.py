"""Orders and products of one emulated e-shop, stored compactly.

A shop can hold 100,000 orders, so nothing is stored per item unless a knob
touched it. Items are numbered 1, 2, ... in creation order; a *batch* (one
``add_orders`` call) records only its first number, size and creation times, and
the payloads are rebuilt from the number by ``data.py``. Edits keep only the
changed fields; deletes keep the number in a sorted list. The ``/changes`` log
is derived from batches and the explicit changes, and cached until the next
mutation.

Nothing here locks: ``EmulatorState`` calls it under its own lock.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

ChangeType = Literal["add", "edit", "delete"]


@dataclass(frozen=True)
class Batch:
    """Items ``first .. first + count - 1``, created from ``start`` every ``step`` seconds."""

    first: int
    count: int
    start: float
    step: float

    def created(self, number: int) -> float:
        return self.start + (number - self.first) * self.step


@dataclass
class Catalog:
    """One resource (orders or products) of one shop."""

    count: int = 0
    batches: list[Batch] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)  # sorted
    overlay: dict[int, dict[str, Any]] = field(default_factory=dict)
    # number -> (epoch seconds, change type) of its latest explicit change
    changes: dict[int, tuple[float, ChangeType]] = field(default_factory=dict)
    last_change: float = 0.0
    _log: list[tuple[float, int, ChangeType]] | None = field(default=None, repr=False)

    # -- writes -------------------------------------------------------------

    def add(self, count: int, now: float, history_seconds: float) -> range:
        """Create ``count`` items, spread evenly over the ``history_seconds`` before ``now``."""
        first = self.count + 1
        step = history_seconds / count if history_seconds > 0 else 0.0
        start = now - step * (count - 1) if step else now
        self.batches.append(Batch(first, count, start, step))
        self.count += count
        self.last_change = max(self.last_change, now)
        self._log = None
        return range(first, first + count)

    def edit(self, number: int, fields: dict[str, Any], now: float) -> float:
        """Apply ``fields`` to a live item; the change time (never before the last one)."""
        self.overlay.setdefault(number, {}).update(fields)
        return self._record(number, "edit", now)

    def delete(self, number: int, now: float) -> float:
        bisect.insort(self.deleted, number)
        self.overlay.pop(number, None)
        return self._record(number, "delete", now)

    def _record(self, number: int, kind: ChangeType, now: float) -> float:
        # Change times never go backwards, so the log stays sorted by time.
        moment = max(now, self.last_change)
        self.last_change = moment
        self.changes[number] = (moment, kind)
        self._log = None
        return moment

    # -- reads --------------------------------------------------------------

    def is_live(self, number: int) -> bool:
        if not 1 <= number <= self.count:
            return False
        index = bisect.bisect_left(self.deleted, number)
        return not (index < len(self.deleted) and self.deleted[index] == number)

    @property
    def live_count(self) -> int:
        return self.count - len(self.deleted)

    def newest(self, offset: int) -> int:
        """The number of the ``offset``-th live item, newest first (0-based)."""
        return self._nth_ascending(self.live_count - 1 - offset)

    def _nth_ascending(self, k: int) -> int:
        # The smallest x with x - (deleted numbers <= x) == k + 1.
        low, high = 1, self.count
        while low < high:
            middle = (low + high) // 2
            if middle - bisect.bisect_right(self.deleted, middle) >= k + 1:
                high = middle
            else:
                low = middle + 1
        return low

    def created(self, number: int) -> float:
        index = bisect.bisect_right([b.first for b in self.batches], number) - 1
        return self.batches[index].created(number)

    def changed(self, number: int) -> float:
        """When the item last changed (its creation if never edited)."""
        entry = self.changes.get(number)
        return entry[0] if entry is not None else self.created(number)

    def log(self) -> list[tuple[float, int, ChangeType]]:
        """Every item with its latest change, oldest first (ties by number).

        A creation never changed since is an ``add`` here; the API shows it as
        ``edit`` unless ``creation_change_type`` says otherwise.
        """
        if self._log is None:
            entries: list[tuple[float, int, ChangeType]] = [
                (batch.created(number), number, "add")
                for batch in self.batches
                for number in range(batch.first, batch.first + batch.count)
                if number not in self.changes
            ]
            entries.extend(
                (moment, number, kind)
                for number, (moment, kind) in self.changes.items()
            )
            entries.sort()
            self._log = entries
        return self._log

    def log_since(self, since: float) -> list[tuple[float, int, ChangeType]]:
        log = self.log()
        return log[bisect.bisect_left(log, (since, -1, "add")) :]


def frozen(catalog: Catalog) -> Catalog:
    """A copy later knobs do not change (what a snapshot job exports)."""
    return Catalog(
        count=catalog.count,
        batches=list(catalog.batches),
        deleted=list(catalog.deleted),
        overlay={number: dict(fields) for number, fields in catalog.overlay.items()},
        changes=dict(catalog.changes),
        last_change=catalog.last_change,
    )


def live_numbers(catalog: Catalog) -> Iterator[int]:
    """Every live item number, oldest first."""
    gone = set(catalog.deleted)
    return (number for number in range(1, catalog.count + 1) if number not in gone)
