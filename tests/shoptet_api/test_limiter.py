"""The rate governor (`shoptet_api.limiter`) on real Redis: in-flight leases, their release, the
deadline, bucket pacing and its maths, and the per-process fallback while Redis is down."""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from addon_project import redis_keys
from addon_project.redis_client import get_redis
from shoptet_api import limiter
from shoptet_api.errors import ShoptetTimeoutError

LEASE = 30.0


@pytest.fixture
def eshop_id() -> int:
    """An e-shop id of this test's own (the process-local fallback semaphores are per id)."""
    return 10_000_000 + uuid.uuid4().int % 10_000_000


@pytest.fixture(autouse=True)
def _limits(settings: Any) -> None:
    settings.SHOPTET_MAX_IN_FLIGHT = 2
    settings.SHOPTET_BUCKET_SLOWDOWN_AT = 0.75
    settings.SHOPTET_BUCKET_LEAK_PER_SECOND = 10.0


def leases_held(eshop_id: int) -> int:
    """Leases in Redis once this process has sent the ones it gave back (see limiter)."""
    limiter.flush_returned_leases()
    return int(get_redis().zcard(redis_keys.leases_key(eshop_id)))


def soon(seconds: float = 0.2) -> float:
    return time.monotonic() + seconds


# --- parse_bucket_filling ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "reading"),
    [
        ("120/200", (120.0, 200.0)),
        (" 120 / 200 ", (120.0, 200.0)),
        ("0/200", (0.0, 200.0)),
        ("12.5/200", (12.5, 200.0)),
        ("200/200", (200.0, 200.0)),
    ],
)
def test_bucket_filling_is_parsed(header: str, reading: tuple[float, float]) -> None:
    assert limiter.parse_bucket_filling(header) == reading


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "120",
        "/",
        "120/",
        "/200",
        "full/200",
        "120/lots",
        "1/2/3",
        "120/0",
        "120/-200",
        # Hostile or broken values must not turn into a pause: inf would pause every request.
        "inf/200",
        "nan/200",
        "120/inf",
        "120/nan",
    ],
)
def test_a_malformed_bucket_filling_is_ignored(header: str | None) -> None:
    assert limiter.parse_bucket_filling(header) is None


# --- bucket_pause --------------------------------------------------------------------------------


def test_no_pause_at_or_below_the_slowdown_threshold() -> None:
    now = time.time()

    assert limiter.bucket_pause(150, 200, read_at=now, now=now) == 0.0  # exactly 75 %
    assert limiter.bucket_pause(10, 200, read_at=now, now=now) == 0.0


def test_the_pause_drains_the_bucket_down_to_the_threshold() -> None:
    now = time.time()

    # 30 drops above the 150-drop threshold at 10 drops/s: 3 s.
    assert limiter.bucket_pause(180, 200, read_at=now, now=now) == pytest.approx(3.0)


def test_the_time_since_the_reading_counts_as_leaked() -> None:
    now = time.time()

    # Read 2 s ago: 20 drops have leaked since, 10 remain above the threshold.
    assert limiter.bucket_pause(180, 200, read_at=now - 2, now=now) == pytest.approx(
        1.0
    )
    assert limiter.bucket_pause(180, 200, read_at=now - 5, now=now) == 0.0


def test_a_reading_from_the_future_leaks_nothing() -> None:
    # Another host's clock runs ahead: its reading must not make the bucket look fuller (or emptier).
    now = time.time()

    assert limiter.bucket_pause(180, 200, read_at=now + 60, now=now) == pytest.approx(
        3.0
    )


def test_the_pause_is_capped() -> None:
    now = time.time()

    assert limiter.bucket_pause(10_000, 200, read_at=now, now=now) == (
        limiter.MAX_BUCKET_PAUSE
    )


def test_no_pause_when_the_bucket_does_not_leak(settings: Any) -> None:
    settings.SHOPTET_BUCKET_LEAK_PER_SECOND = 0
    now = time.time()

    assert limiter.bucket_pause(200, 200, read_at=now, now=now) == 0.0


# --- In-flight leases ----------------------------------------------------------------------------


def test_leases_are_held_up_to_the_limit_and_the_next_request_is_refused_at_its_deadline(
    eshop_id: int,
) -> None:
    with (
        limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE),
        limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE),
    ):
        assert leases_held(eshop_id) == 2
        with (
            pytest.raises(ShoptetTimeoutError) as caught,
            limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE),
        ):
            pass

    assert caught.value.request_sent is False  # safe to repeat, even a POST
    assert "no free request slot" in str(caught.value)
    assert leases_held(eshop_id) == 0


def test_a_free_slot_is_granted_even_past_the_deadline(eshop_id: int) -> None:
    # The deadline bounds waiting, not the first try.
    with limiter.request_slot(
        eshop_id, deadline=time.monotonic() - 1, lease_seconds=LEASE
    ):
        assert leases_held(eshop_id) == 1


def test_a_waiting_request_gets_the_slot_released_before_its_deadline(
    eshop_id: int, settings: Any
) -> None:
    settings.SHOPTET_MAX_IN_FLIGHT = 1
    waiting = threading.Event()
    outcome: list[str] = []

    def second() -> None:
        waiting.set()
        try:
            with limiter.request_slot(eshop_id, deadline=soon(30), lease_seconds=LEASE):
                outcome.append("acquired")
        except ShoptetTimeoutError:
            outcome.append("timed out")

    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE):
        thread = threading.Thread(target=second)
        thread.start()
        waiting.wait()
    thread.join()

    assert outcome == ["acquired"]
    assert leases_held(eshop_id) == 0


def test_a_crashed_processs_lease_expires_on_its_own(eshop_id: int) -> None:
    r = get_redis()
    clock: tuple[int, int] = r.time()
    seconds, micros = clock
    redis_now = seconds + micros / 1e6
    # Two leases whose holders died: their expiry (by Redis's clock) has passed.
    r.zadd(
        redis_keys.leases_key(eshop_id),
        {"dead-1": redis_now - 1, "dead-2": redis_now - 1},
    )

    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE):
        assert leases_held(eshop_id) == 1


def test_a_lease_lasts_the_request_plus_the_longest_bucket_pause(
    eshop_id: int,
) -> None:
    r = get_redis()
    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE):
        entries: list[Any] = r.zrange(
            redis_keys.leases_key(eshop_id), 0, -1, withscores=True
        )
        [(_, expires_at)] = entries
        clock: tuple[int, int] = r.time()
        seconds, micros = clock
        left = expires_at - (seconds + micros / 1e6)

    # Granted for a request, its longest bucket pause, and requests taking it over afterwards.
    granted = LEASE + limiter.MAX_BUCKET_PAUSE + limiter.REUSE_WINDOW
    assert granted - 1 <= left <= granted


def test_the_lease_is_released_after_the_body_succeeds(eshop_id: int) -> None:
    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE):
        assert leases_held(eshop_id) == 1

    assert leases_held(eshop_id) == 0


def test_the_lease_is_released_when_the_body_raises(eshop_id: int) -> None:
    held: list[int] = []

    def request() -> None:
        with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE):
            held.append(leases_held(eshop_id))
            raise ValueError("caller failed")

    with pytest.raises(ValueError, match="caller failed"):
        request()

    assert held == [1]
    assert leases_held(eshop_id) == 0


def test_releasing_one_lease_keeps_the_others(eshop_id: int) -> None:
    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE):
        with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE):
            assert leases_held(eshop_id) == 2
        assert leases_held(eshop_id) == 1


# --- Bucket pacing through Redis -----------------------------------------------------------------


def test_the_answers_bucket_filling_is_stored_on_release(eshop_id: int) -> None:
    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE) as slot:
        slot.bucket_filling = "120/200"
    limiter.flush_returned_leases()

    stored = get_redis().hgetall(redis_keys.bucket_key(eshop_id))
    assert float(stored[b"level"]) == 120.0
    assert float(stored[b"max"]) == 200.0
    assert abs(float(stored[b"at"]) - time.time()) < 60
    assert 0 < get_redis().ttl(redis_keys.bucket_key(eshop_id)) <= 120


def test_a_malformed_bucket_filling_is_not_stored(eshop_id: int) -> None:
    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE) as slot:
        slot.bucket_filling = "inf/200"

    assert not get_redis().exists(redis_keys.bucket_key(eshop_id))


def test_the_next_request_pauses_when_the_stored_bucket_is_nearly_full(
    eshop_id: int, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # A fast leak keeps the real pause short: 50 drops over the threshold at 1000 drops/s = 0.05 s.
    settings.SHOPTET_BUCKET_LEAK_PER_SECOND = 1000.0
    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE) as slot:
        slot.bucket_filling = "200/200"
    caplog.set_level(logging.INFO, logger="shoptet_api.limiter")

    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE):
        pass

    [pause] = [
        float(found.group(1))
        for record in caplog.records
        if (
            found := re.search(
                r"bucket nearly full, pausing ([0-9.]+) s", record.getMessage()
            )
        )
    ]
    assert 0 < pause <= 0.05


def test_no_pause_when_the_stored_bucket_has_room(
    eshop_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE) as slot:
        slot.bucket_filling = "100/200"
    caplog.set_level(logging.INFO, logger="shoptet_api.limiter")

    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE):
        pass

    assert not [r for r in caplog.records if "bucket nearly full" in r.getMessage()]


def test_the_bucket_pause_sleeps_through_the_patchable_sleep(eshop_id: int) -> None:
    # 200 of 200 with the slowdown at 150 and 10 drops/s leaking: a 5 s pause, not slept here.
    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE) as slot:
        slot.bucket_filling = "200/200"

    with (
        mock.patch("shoptet_api.limiter.sleep", autospec=True) as slept,
        limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE),
    ):
        pass

    [call] = slept.call_args_list
    assert 4.0 < float(call.args[0]) <= 5.0


def test_waiting_for_a_slot_sleeps_through_the_patchable_sleep(
    eshop_id: int, settings: Any
) -> None:
    settings.SHOPTET_MAX_IN_FLIGHT = 1
    with (
        limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE),
        mock.patch("shoptet_api.limiter.sleep", autospec=True) as slept,
        pytest.raises(ShoptetTimeoutError),
        limiter.request_slot(eshop_id, deadline=soon(0.3), lease_seconds=LEASE),
    ):
        pass

    waits = [float(call.args[0]) for call in slept.call_args_list]
    assert waits
    assert all(
        0 < wait <= 0.2 for wait in waits
    )  # 10 ms growing to 100 ms, plus jitter


# --- Redis down: a per-process limit ------------------------------------------------------------


@pytest.fixture
def redis_down() -> Iterator[None]:
    # Nothing listens on port 1; no retries, so each request finds out at once.
    dead = redis.Redis(
        host="127.0.0.1",
        port=1,
        socket_connect_timeout=0.2,
        retry=Retry(NoBackoff(), 0),
    )
    with (
        mock.patch.object(limiter, "get_redis", return_value=dead),
        mock.patch.object(limiter, "_local_semaphores", {}),
    ):
        yield


@pytest.mark.usefixtures("redis_down")
def test_without_redis_the_limit_holds_per_process(
    eshop_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="shoptet_api.limiter")
    with (
        limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE),
        limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE),
    ):
        with (
            pytest.raises(ShoptetTimeoutError) as caught,
            limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE),
        ):
            pass
        assert caught.value.request_sent is False

    assert "limited per process only" in caplog.text
    # Both local slots came back: two more requests fit.
    with (
        limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE),
        limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE),
    ):
        pass


@pytest.mark.usefixtures("redis_down")
def test_without_redis_a_failing_body_returns_its_local_slot(
    eshop_id: int, settings: Any
) -> None:
    settings.SHOPTET_MAX_IN_FLIGHT = 1
    with (
        pytest.raises(ValueError, match="caller failed"),
        limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE),
    ):
        raise ValueError("caller failed")

    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE):
        pass


@pytest.mark.usefixtures("redis_down")
def test_without_redis_the_limit_is_per_eshop(eshop_id: int, settings: Any) -> None:
    settings.SHOPTET_MAX_IN_FLIGHT = 1
    with (
        limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE),
        limiter.request_slot(eshop_id + 1, deadline=soon(), lease_seconds=LEASE),
    ):
        pass


def test_a_redis_error_on_release_does_not_mask_the_callers_result(
    eshop_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The module's logger itself: another test's logging configuration may stop propagation.
    warning = mock.Mock()
    monkeypatch.setattr(limiter.logger, "warning", warning)
    # Idle leases go back in a pipeline (or inside a later acquire's script).
    with mock.patch.object(
        redis.client.Pipeline,
        "execute",
        autospec=True,
        side_effect=redis.ConnectionError("Redis went away"),
    ) as execute:
        with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE):
            result = "done"
        limiter.flush_returned_leases()
        # This flush, or the background thread's if it took the lease first (then it may still
        # be logging): 10 s only bounds a broken thread.
        give_up = time.monotonic() + 10
        while not warning.called and time.monotonic() < give_up:
            time.sleep(0.005)

    assert result == "done"
    assert execute.call_count >= 1
    [call] = warning.call_args_list
    assert "not returned" in call.args[0]
    assert call.args[2:] == ("ConnectionError",)
    assert leases_held(eshop_id) == 1  # not released: it expires on its own


# --- One round trip per request --------------------------------------------------------------------


def test_requests_following_each_other_take_the_idle_lease_over_without_a_round_trip(
    eshop_id: int, round_trips: list[str]
) -> None:
    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE):
        pass
    round_trips.clear()  # the first request asked Redis (and may have loaded the script)
    # Hold the background thread back, as if each request followed within RELEASE_DELAY.
    with mock.patch.object(limiter._idle_leases, "flush"):
        for _ in range(4):
            with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE):
                calls = round_trips[:]
                assert get_redis().zcard(redis_keys.leases_key(eshop_id)) == 1
                round_trips[:] = calls  # the check's own read does not count

    assert round_trips == []
    assert leases_held(eshop_id) == 0  # given back once idle


def test_a_lease_too_old_to_cover_the_request_is_given_back_by_the_next_acquire(
    eshop_id: int, round_trips: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        limiter, "REUSE_WINDOW", 0.0
    )  # no lease covers a second request
    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE) as slot:
        slot.bucket_filling = "120/200"
    round_trips.clear()
    with (
        mock.patch.object(limiter._idle_leases, "flush"),
        limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE),
    ):
        calls = round_trips[:]
        # The old lease and the reading went back inside this request's acquire.
        assert get_redis().zcard(redis_keys.leases_key(eshop_id)) == 1
        level = get_redis().hget(redis_keys.bucket_key(eshop_id), "level")

    assert calls == ["EVALSHA"]
    assert level is not None
    assert float(level) == 120.0
    assert leases_held(eshop_id) == 0


def test_the_last_answers_reading_paces_the_request_that_takes_the_lease_over(
    eshop_id: int, settings: Any
) -> None:
    # 200 of 200 with the slowdown at 150 and 10 drops/s leaking: a 5 s pause, not slept here.
    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE) as slot:
        slot.bucket_filling = "200/200"
    with (
        mock.patch.object(limiter._idle_leases, "flush"),
        mock.patch.object(limiter, "_acquire", autospec=True) as asked_redis,
        mock.patch("shoptet_api.limiter.sleep", autospec=True) as slept,
        limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE),
    ):
        pass

    asked_redis.assert_not_called()
    [call] = slept.call_args_list
    assert 4.0 < float(call.args[0]) <= 5.0
    assert leases_held(eshop_id) == 0


def test_a_lone_returned_lease_reaches_redis_on_its_own(eshop_id: int) -> None:
    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE):
        pass

    # The background sender returns it within milliseconds; 10 s only bounds a broken sender.
    give_up = time.monotonic() + 10
    key = redis_keys.leases_key(eshop_id)
    while get_redis().zcard(key) and time.monotonic() < give_up:
        time.sleep(0.005)
    assert get_redis().zcard(key) == 0


def test_leases_whose_giving_back_may_have_happened_are_never_used_again(
    eshop_id: int, monkeypatch: pytest.MonkeyPatch, round_trips: list[str]
) -> None:
    monkeypatch.setattr(
        limiter, "REUSE_WINDOW", 3600.0
    )  # any idle lease could be taken over
    with limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE) as slot:
        slot.bucket_filling = "120/200"
    run_script = redis.commands.core.Script.__call__

    def answer_lost(*args: Any, **kwargs: Any) -> Any:
        run_script(*args, **kwargs)  # Redis ran it (and took the idle lease back) ...
        raise redis.ConnectionError("... but the answer was lost")

    with (
        mock.patch.object(limiter._idle_leases, "flush"),
        mock.patch.object(redis.commands.core.Script, "__call__", answer_lost),
        # Longer than the idle lease covers: this request asks Redis, carrying the idle lease.
        limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=100 * 3600),
    ):
        pass  # the per-process fallback slot
    round_trips.clear()
    with (
        mock.patch.object(limiter._idle_leases, "flush"),
        limiter.request_slot(eshop_id, deadline=soon(), lease_seconds=LEASE),
    ):
        calls = round_trips[:]

    # The first lease was not taken over: Redis may no longer count it.
    assert calls == ["EVALSHA"]
    # Left: the lease the lost answer granted (it expires on its own), and the reading arrived.
    assert leases_held(eshop_id) == 1
    level = get_redis().hget(redis_keys.bucket_key(eshop_id), "level")
    assert level is not None
    assert float(level) == 120.0
