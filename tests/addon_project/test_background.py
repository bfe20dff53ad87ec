"""Work handed to the background: one long-lived thread per process runs it, in order."""

from __future__ import annotations

import threading
from unittest import mock

import pytest

from addon_project import background
from addon_project.background import in_background
from addon_project.celery import app as celery_app


def test_background_work_runs_in_order_on_one_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(celery_app.conf, "task_always_eager", False)
    ran: list[tuple[int, str]] = []
    done = threading.Event()

    def work(number: int) -> None:
        ran.append((number, threading.current_thread().name))
        if number == 49:
            done.set()

    for number in range(50):
        in_background(work, number)

    assert done.wait(10)
    assert [number for number, _ in ran] == list(range(50))
    assert {name for _, name in ran} == {"background"}
    assert [t.name for t in threading.enumerate()].count("background") == 1


def test_a_failing_piece_of_work_does_not_stop_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(celery_app.conf, "task_always_eager", False)
    # The module's logger itself: another test's logging configuration may stop propagation.
    warning = mock.Mock()
    monkeypatch.setattr(background.logger, "warning", warning)
    done = threading.Event()

    def broken() -> None:
        raise ConnectionError("broker went away")

    in_background(broken)
    in_background(done.set)

    assert done.wait(10)
    warning.assert_called_once()
    assert warning.call_args.args[1:] == ("broken", (), "ConnectionError")
