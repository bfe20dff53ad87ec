"""Publishing received webhooks: rows that arrive together share one task message, and the
worker runs each row on its own under the request id that received it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from addon_project import background, logging_context
from addon_project.celery import app as celery_app
from shoptet_api import tasks, webhooks


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[list[Any]]]]:
    """The batches `process_webhooks.delay` was given, published by the real background thread."""
    monkeypatch.setitem(celery_app.conf, "task_always_eager", False)
    batches: list[list[list[Any]]] = []
    with mock.patch.object(tasks.process_webhooks, "delay", side_effect=batches.append):
        yield batches


def hold_background() -> threading.Event:
    """Keep the background thread busy (a slow broker) until the returned event is set."""
    release, started = threading.Event(), threading.Event()

    def hang() -> None:
        started.set()
        release.wait(10)

    background.in_background(hang)
    assert started.wait(10)
    return release


def test_rows_received_while_a_publish_waits_share_one_message(
    published: list[list[list[Any]]],
) -> None:
    release = hold_background()
    for pk, request_id in ((11, "req-a"), (12, "req-b"), (13, None)):
        with logging_context.bound(request_id=request_id):
            webhooks._enqueue(pk)
    release.set()
    background._queue.join()

    assert published == [[[11, "req-a"], [12, "req-b"], [13, None]]]


def test_a_later_row_gets_a_message_of_its_own(
    published: list[list[list[Any]]],
) -> None:
    webhooks._enqueue(21)
    background._queue.join()
    webhooks._enqueue(22)
    background._queue.join()

    assert published == [[[21, None]], [[22, None]]]


def test_a_message_carries_at_most_publish_batch_rows(
    published: list[list[list[Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks, "PUBLISH_BATCH", 2)
    release = hold_background()
    for pk in range(1, 6):
        webhooks._enqueue(pk)
    release.set()
    background._queue.join()

    assert [[pk for pk, _ in batch] for batch in published] == [[1, 2], [3, 4], [5]]


def test_the_worker_runs_each_row_under_its_own_request_id_and_one_failure_stops_nothing() -> (
    None
):
    seen: list[tuple[int, object]] = []

    def process_event(event_pk: int) -> None:
        seen.append((event_pk, logging_context.current().get("request_id")))
        if event_pk == 32:
            raise RuntimeError("database went away")

    with mock.patch.object(webhooks, "process_event", side_effect=process_event):
        tasks.process_webhooks.apply(args=([[31, "req-1"], [32, "req-2"], [33, None]],))

    assert [pk for pk, _ in seen] == [31, 32, 33]
    assert seen[0][1] == "req-1"
    assert seen[1][1] == "req-2"


def test_a_row_that_fails_schedules_its_own_retry_only() -> None:
    with (
        mock.patch.object(
            webhooks, "process_event", side_effect=lambda pk: 30.0 if pk == 42 else None
        ),
        mock.patch.object(tasks.process_webhook, "apply_async") as schedule,
    ):
        tasks.process_webhooks.apply(args=([[41, None], [42, None], [43, None]],))

    schedule.assert_called_once_with((42,), countdown=30.0)


def test_a_publish_the_background_dropped_is_scheduled_again_by_the_next_row(
    published: list[list[list[Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    handed_over = background.in_background
    calls = iter(
        [False]
    )  # the first hand-over is dropped (a full queue), the rest go through

    def in_background(work: Any, *args: Any) -> bool:
        return next(calls, None) is not False and handed_over(work, *args)

    monkeypatch.setattr(webhooks, "in_background", in_background)
    webhooks._enqueue(51)
    webhooks._enqueue(52)
    background._queue.join()

    assert published == [[[51, None], [52, None]]]


def test_the_batchs_time_limit_ends_the_batch() -> None:
    seen: list[int] = []

    def process_event(event_pk: int) -> None:
        seen.append(event_pk)
        if event_pk == 62:
            raise SoftTimeLimitExceeded

    with (
        mock.patch.object(webhooks, "process_event", side_effect=process_event),
        pytest.raises(SoftTimeLimitExceeded),
    ):
        tasks.process_webhooks.apply(
            args=([[61, None], [62, None], [63, None]],), throw=True
        )

    assert seen == [61, 62]  # 63 waits for redeliver_webhooks
