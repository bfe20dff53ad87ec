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


def test_work_beyond_the_waiting_limit_is_dropped_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(celery_app.conf, "task_always_eager", False)
    warning = mock.Mock()
    monkeypatch.setattr(background.logger, "warning", warning)
    # A fresh, small queue of this process (its thread starts on first use).
    monkeypatch.setattr(background, "MAX_WAITING", 3)
    monkeypatch.setattr(background, "_owner_pid", None)
    monkeypatch.setattr(background, "_queue", background._queue)  # restored afterwards
    monkeypatch.setattr(background, "_thread", background._thread)
    release, started = threading.Event(), threading.Event()
    ran: list[int] = []

    def hang() -> None:  # a broker that hangs: the thread is stuck on this item
        started.set()
        release.wait(10)

    in_background(hang)
    assert started.wait(10)
    for number in range(5):
        in_background(ran.append, number)
    dropped_while_full = warning.call_count
    assert in_background(ran.append, 99) is False  # the caller learns it was dropped
    release.set()
    background._queue.join()  # every item taken has been run

    assert ran == [0, 1, 2]  # three waited; the fourth and fifth were dropped
    assert dropped_while_full == 2
    dropped = [c for c in warning.call_args_list if "dropped" in c.args[0]]
    assert len(dropped) == 3
    assert dropped[0].args[1:] == (3, "append")


def test_a_dead_background_thread_is_started_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(celery_app.conf, "task_always_eager", False)
    done = threading.Event()
    in_background(done.set)
    assert done.wait(10)
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    monkeypatch.setattr(background, "_thread", dead)  # as if the thread had died
    again = threading.Event()

    assert in_background(again.set) is True
    assert again.wait(10)
    assert background._thread is not dead
