"""Proactive renewal in chunks: the sweep queues bounded chunks of due shops, the chunk task renews
each shop once (skipping tenants that may no longer call the API) and survives one shop failing,
and a real worker renewing a chunk while request paths in other processes renew too stays
within the cap and mints once per shop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import redis
from celery.signals import task_postrun
from cryptography.fernet import Fernet

from addon_project.redis_client import get_redis
from eshops.models import Eshop
from shoptet_api import tasks, tokens
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import (
    ShoptetConnectionError,
    ShoptetMaxTokensReached,
    ShoptetServerError,
)
from shoptet_api.oauth import fetch_api_access_token
from shoptet_api.tokens import chunk
from shoptet_api.tokens.store import store_token as store_token_in_redis
from shoptet_emulator import ShoptetEmulator

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
GET_TOKEN = "/action/ApiOAuthServer/getAccessToken"
# The name the broker calls getAccessToken by.
FETCH = "shoptet_api.tokens.renewal.fetch_api_access_token"
STORE_TOKEN = "shoptet_api.tokens.store.store_token"


def issued(emulator: ShoptetEmulator, eshop: Eshop) -> int:
    return emulator.stats.api_tokens_issued.get(eshop.eshop_id, 0)


def test_renewal_chunks_are_bounded_and_keep_shops_due_far_apart_apart() -> None:
    due = [(1, 0.0), (2, 0.5), (3, 1.0), (4, 4.0), (5, 30.0), (6, 30.2), (7, 2.0)]

    chunks = tokens.renewal_chunks(due, size=3, window=5.0)

    assert chunks == [([1, 2, 3], 0.0), ([7, 4], 2.0), ([5, 6], 30.0)]


def test_the_sweep_queues_bounded_chunks_covering_exactly_the_due_active_shops(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop], settings: Any
) -> None:
    settings.SHOPTET_TOKEN_RENEW_CHUNK = 3
    # Due together: the chunks are then cut by size alone (a random jitter made their count vary).
    settings.SHOPTET_TOKEN_RENEW_JITTER = 0.0
    shoptet_settings.token_lifetime = 30  # expires before the next sweep
    due = [install() for _ in range(7)]
    suspended = install()
    for eshop in [*due, suspended]:
        tokens.get_api_access_token(eshop)
    shoptet_settings.token_lifetime = 1800
    fresh = install()
    tokens.get_api_access_token(fresh)
    Eshop.objects.filter(pk=suspended.pk).update(status=Eshop.Status.SUSPENDED)

    with mock.patch.object(
        tasks.renew_token_chunk, "apply_async", autospec=True
    ) as queue:
        scheduled = tasks.renew_expiring_tokens.apply().result

    chunks = [call.args[0][0] for call in queue.call_args_list]
    queued = [eshop_id for chunk in chunks for eshop_id in chunk]
    assert scheduled == 7
    assert sorted(queued) == sorted(eshop.eshop_id for eshop in due)
    assert all(1 <= len(chunk) <= 3 for chunk in chunks)
    assert len(chunks) == 3


def test_the_chunk_task_renews_each_shop_once_and_skips_tenants_that_may_not_call_the_api(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    # 20 s left is inside margin + jitter (20 s) + 5 s: every shop is due.
    shoptet_settings.token_lifetime = 20
    due = [install() for _ in range(3)]
    paused, suspended = install(), install()
    for eshop in [*due, paused, suspended]:
        tokens.get_api_access_token(eshop)
    paused.pause(by="operator")
    Eshop.objects.filter(pk=suspended.pk).update(status=Eshop.Status.SUSPENDED)
    gone = 987_654
    shoptet_settings.token_lifetime = 1800  # the new tokens are not due

    outcomes = tasks.renew_token_chunk.apply(
        args=([e.eshop_id for e in [*due, paused, suspended]] + [gone],)
    ).result

    assert outcomes == {"renewed": 3, "skipped": 3}
    assert [issued(shoptet_settings, e) for e in due] == [2, 2, 2]
    assert issued(shoptet_settings, paused) == 1
    assert issued(shoptet_settings, suspended) == 1
    # Run again: every token is fresh now, nothing more is minted.
    again = tasks.renew_token_chunk.apply(args=([e.eshop_id for e in due],)).result
    assert again == {"fresh": 3}
    assert [issued(shoptet_settings, e) for e in due] == [2, 2, 2]


def test_a_tenant_whose_oauth_token_cannot_be_decrypted_fails_alone_in_its_chunk(
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rotated, fine = install(), install()  # no token yet: both are due
    # Its OAuth token was encrypted under a key that has since left FIELD_ENCRYPTION_KEYS.
    keys = settings.FIELD_ENCRYPTION_KEYS
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    Eshop.objects.filter(pk=rotated.pk).update(oauth_access_token="rotated-away")
    settings.FIELD_ENCRYPTION_KEYS = keys

    outcomes = tasks.renew_token_chunk.apply(
        args=([rotated.eshop_id, fine.eshop_id],)
    ).result

    assert outcomes == {"failed": 1, "renewed": 1}
    assert [issued(shoptet_settings, e) for e in (rotated, fine)] == [0, 1]
    assert f"eshop_id={rotated.eshop_id}: token renewal failed" in caplog.text


def fetch_failing_for(
    failures: dict[str, Exception],
) -> Callable[..., Any]:
    """getAccessToken that raises `failures[oauth_token]` for those shops, else asks the emulator."""

    def fetch(*, oauth_token: str) -> Any:
        if oauth_token in failures:
            raise failures[oauth_token]
        return fetch_api_access_token(oauth_token=oauth_token)

    return fetch


def test_one_shop_failing_never_stops_the_chunk(
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken, flaky, fine = install(), install(), install()
    fetch = fetch_failing_for(
        {
            str(broken.oauth_access_token): RuntimeError("a bug"),
            str(flaky.oauth_access_token): ShoptetServerError("503", status_code=503),
        }
    )

    with (
        mock.patch(FETCH, side_effect=fetch),
        mock.patch.object(
            tasks.renew_api_token, "apply_async", autospec=True
        ) as retried,
    ):
        outcomes = tasks.renew_token_chunk.apply(
            args=([broken.eshop_id, flaky.eshop_id, fine.eshop_id],)
        ).result

    assert outcomes == {"failed": 1, "retrying": 1, "renewed": 1}
    assert issued(shoptet_settings, fine) == 1
    # The retryable failure is retried alone, by the per-shop task and its backoff.
    (args,), kwargs = retried.call_args
    assert args == (flaky.eshop_id,)
    assert kwargs["countdown"] > 0
    assert f"eshop_id={broken.eshop_id}: token renewal failed" in caplog.text
    # Failures are what operators see; every lock is released.
    assert [
        tokens.token_health(e.eshop_id)["failures"] for e in (broken, flaky, fine)
    ] == [1, 1, 0]
    assert not any(
        get_redis().exists(tokens.renew_lock_key(e.eshop_id))
        for e in (broken, flaky, fine)
    )


# --- The bulk steps ---------------------------------------------------------------------------------


def renew_chunk(eshops: list[Eshop]) -> dict[int, Any]:
    # round_trips counts what these pool threads send too (conftest.COUNTED_THREADS).
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="counted-") as pool:
        return tokens.renew_chunk_ahead(eshops, pool=pool)


@pytest.mark.parametrize("size", [3, 9])
def test_a_chunk_takes_two_redis_round_trips_and_one_per_new_token(
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    round_trips: list[str],
    size: int,
) -> None:
    eshops = [install() for _ in range(size)]  # no token yet: every shop is due
    round_trips.clear()

    results = renew_chunk(eshops)

    # Locks and expiries; reservations; then each new token's store, as soon as its call
    # returns (nothing is left for a last step). (redis-py checks the scripts of a pipeline with
    # one SCRIPT EXISTS before sending it, and loads a script once if Redis does not know it.)
    assert [trip for trip in round_trips if trip != "SCRIPT LOAD"] == [
        "pipeline",
        "pipeline",
    ] + ["EVALSHA"] * size
    assert results == {e.eshop_id: True for e in eshops}
    assert [issued(shoptet_settings, e) for e in eshops] == [1] * size
    tokens.clear_process_cache()
    for eshop in eshops:
        # The stored token is the new one, and the API takes it.
        with ShoptetClient(eshop) as client:
            client.get("/api/eshop")
        assert issued(shoptet_settings, eshop) == 1
        assert not get_redis().exists(tokens.renew_lock_key(eshop.eshop_id))


def test_a_chunk_with_nothing_due_mints_nothing_and_releases_its_locks(
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    round_trips: list[str],
) -> None:
    eshops = [install() for _ in range(3)]
    for eshop in eshops:
        tokens.get_api_access_token(eshop)  # 1800 s tokens: far from due
    round_trips.clear()

    results = renew_chunk(eshops)

    assert results == {e.eshop_id: False for e in eshops}
    assert round_trips == ["pipeline", "pipeline"]
    assert [issued(shoptet_settings, e) for e in eshops] == [1, 1, 1]
    assert not any(
        get_redis().exists(tokens.renew_lock_key(e.eshop_id)) for e in eshops
    )


def test_a_chunk_stores_each_new_token_while_its_other_calls_still_run(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    quick, slow = install(), install()
    quick_stored = threading.Event()
    seen: dict[str, bool] = {}

    def store_token(client: Any, eshop_id: int, *args: Any, **kwargs: Any) -> None:
        store_token_in_redis(client, eshop_id, *args, **kwargs)
        if eshop_id == quick.eshop_id:
            quick_stored.set()

    def fetch(*, oauth_token: str) -> Any:
        if oauth_token == str(slow.oauth_access_token):
            # The slow call answers only once the quick shop's token is stored (the timeout
            # only keeps a broken build from hanging).
            seen["stored"] = quick_stored.wait(timeout=10)
            r = get_redis()
            seen["in_redis"] = bool(r.exists(tokens.token_key(quick.eshop_id)))
            seen["lock_held"] = bool(r.exists(tokens.renew_lock_key(quick.eshop_id)))
        return fetch_api_access_token(oauth_token=oauth_token)

    with (
        mock.patch(FETCH, side_effect=fetch),
        mock.patch(STORE_TOKEN, side_effect=store_token),
    ):
        results = renew_chunk([quick, slow])

    # A token held back for the slowest call could outlive its lock (another process would
    # then mint a second one) while request paths wait for it.
    assert seen == {"stored": True, "in_redis": True, "lock_held": False}
    assert results == {quick.eshop_id: True, slow.eshop_id: True}
    assert [issued(shoptet_settings, e) for e in (quick, slow)] == [1, 1]


def test_a_slow_first_step_shortens_the_time_a_chunk_may_still_start_calls(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop], settings: Any
) -> None:
    eshops = [install(), install()]
    # Step 1 (locks and expiries) takes so long that only the call's timeouts are left of the
    # locks' lifetime: no room to store a token, so no call may start.
    took = (
        settings.SHOPTET_TOKEN_LOCK_TTL
        - settings.SHOPTET_CONNECT_TIMEOUT
        - settings.SHOPTET_TOKEN_READ_TIMEOUT
    )
    clock = {"offset": 0.0}
    send_pipeline: Any = redis.client.Pipeline.execute

    def slow_first_pipeline(self: Any, *args: Any, **kwargs: Any) -> Any:
        answers = send_pipeline(self, *args, **kwargs)
        clock["offset"] = took
        return answers

    fake_time = mock.Mock(
        time=time.time, monotonic=lambda: time.monotonic() + clock["offset"]
    )
    with (
        mock.patch.object(chunk, "time", fake_time),
        mock.patch.object(redis.client.Pipeline, "execute", slow_first_pipeline),
        mock.patch(
            "shoptet_api.tokens.chunk.renew_if_expiring",
            side_effect=tokens.renew_if_expiring,
        ) as alone,
    ):
        results = renew_chunk(eshops)

    # The calls were left to the per-shop path, which takes each lock afresh.
    assert sorted(call.args[0].eshop_id for call in alone.call_args_list) == sorted(
        e.eshop_id for e in eshops
    )
    assert results == {e.eshop_id: True for e in eshops}
    assert [issued(shoptet_settings, e) for e in eshops] == [1, 1]


def test_a_shop_whose_lock_another_process_holds_is_left_to_the_per_shop_path(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    busy, free = install(), install()
    # Another process is renewing `busy`; its lock lapses soon (it crashed, say).
    get_redis().set(tokens.renew_lock_key(busy.eshop_id), "someone-else", px=300)
    with mock.patch(
        "shoptet_api.tokens.chunk.renew_if_expiring",
        side_effect=tokens.renew_if_expiring,
    ) as alone:
        results = renew_chunk([busy, free])

    # The bulk steps never minted beside the other holder: the per-shop path waited its lock out.
    assert [call.args[0].eshop_id for call in alone.call_args_list] == [busy.eshop_id]
    assert results == {busy.eshop_id: True, free.eshop_id: True}
    assert [issued(shoptet_settings, e) for e in (busy, free)] == [1, 1]


def test_at_the_cap_a_chunk_keeps_a_valid_token_and_refuses_without_one(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop], settings: Any
) -> None:
    settings.SHOPTET_TOKEN_CAP = 1
    settings.SHOPTET_TOKEN_RENEW_JITTER = 0.0
    kept, refused = install(), install()
    for eshop in (kept, refused):
        tokens.get_api_access_token(eshop)
    # `kept` has 30 s left (due, still valid); `refused` has no stored token at all.
    get_redis().hset(tokens.token_key(kept.eshop_id), "exp", time.time() + 30)
    get_redis().delete(tokens.token_key(refused.eshop_id))

    results = renew_chunk([kept, refused])

    assert results[kept.eshop_id] is False
    assert isinstance(results[refused.eshop_id], ShoptetMaxTokensReached)
    assert [issued(shoptet_settings, e) for e in (kept, refused)] == [1, 1]
    assert not any(
        get_redis().exists(tokens.renew_lock_key(e.eshop_id)) for e in (kept, refused)
    )


def test_in_a_chunk_a_definite_failure_frees_its_slot_and_a_lost_answer_keeps_it(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop], settings: Any
) -> None:
    refused, lost = install(), install()
    fetch = fetch_failing_for(
        {
            str(refused.oauth_access_token): ShoptetServerError("503", status_code=503),
            # The connection dropped after the request went out: Shoptet may have minted.
            str(lost.oauth_access_token): ShoptetConnectionError(
                "reset", request_sent=True
            ),
        }
    )

    with mock.patch(FETCH, side_effect=fetch):
        results = renew_chunk([refused, lost])

    assert isinstance(results[refused.eshop_id], ShoptetServerError)
    assert isinstance(results[lost.eshop_id], ShoptetConnectionError)
    r = get_redis()
    assert r.zcard(tokens.issued_key(refused.eshop_id)) == 0
    entries: list[Any] = r.zrange(
        tokens.issued_key(lost.eshop_id), 0, -1, withscores=True
    )
    [(member, expires_at)] = entries
    assert b":pending:" in member
    # A token Shoptet minted lives from its mint, up to the call's timeouts after the reservation.
    assert expires_at - time.time() > (
        settings.SHOPTET_TOKEN_DEFAULT_LIFETIME
        + settings.SHOPTET_CONNECT_TIMEOUT
        + settings.SHOPTET_TOKEN_READ_TIMEOUT
    )
    assert not any(r.exists(tokens.renew_lock_key(e.eshop_id)) for e in (refused, lost))


@pytest.mark.django_db(transaction=True)
def test_getaccesstoken_401s_in_chunks_count_toward_suspension(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    shoptet_settings.token_lifetime = 20  # post-install's first token is due at once
    eshop = install()
    shoptet_settings.revoke_oauth_token(eshop.eshop_id)

    statuses = []
    for _ in range(tokens.OAUTH_REJECTIONS_BEFORE_SUSPEND):
        outcomes = tasks.renew_token_chunk.apply(args=([eshop.eshop_id],)).result
        assert outcomes == {"failed": 1}
        statuses.append(Eshop.objects.get(pk=eshop.pk).status)

    assert statuses[-1] == Eshop.Status.SUSPENDED
    assert set(statuses[:-1]) == {Eshop.Status.ACTIVE}


def test_a_chunk_without_redis_fails_its_shops_in_one_line_and_mints_nothing(
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    caplog: pytest.LogCaptureFixture,
) -> None:
    eshops = [install() for _ in range(3)]
    unreachable = redis.Redis(port=1, socket_connect_timeout=0.2)

    with mock.patch.object(chunk, "get_redis", return_value=unreachable):
        outcomes = tasks.renew_token_chunk.apply(
            args=([e.eshop_id for e in eshops],)
        ).result

    assert outcomes == {"failed": 3}
    assert caplog.text.count("token store unreachable") == 1
    assert [issued(shoptet_settings, e) for e in eshops] == [0, 0, 0]


# The verdict is written from a renewal thread, on a connection of its own: it must see committed rows.
@pytest.mark.django_db(transaction=True)
def test_a_chunk_task_applies_a_shoptet_verdict_and_goes_on(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    shoptet_settings.token_lifetime = 20  # post-install's first tokens are due at once
    gone, fine = install(), install()
    shoptet_settings.set_addon_state(gone.eshop_id, "not_installed")

    outcomes = tasks.renew_token_chunk.apply(
        args=([gone.eshop_id, fine.eshop_id],)
    ).result

    assert outcomes == {"stopped": 1, "renewed": 1}
    assert Eshop.objects.get(pk=gone.pk).status == Eshop.Status.UNINSTALLED
    assert issued(shoptet_settings, fine) == 2


# --- A real worker and request paths in other processes, at once --------------------------------

# A request path in its own process: get a token for each shop once, from a common start time.
REQUEST_PATH = """
import collections, json, os, sys, time
import django
django.setup()
from eshops.models import Eshop
from shoptet_api import tokens

shops = json.loads(os.environ["WORKER_SHOPS"])
outcomes = collections.Counter()
print("ready", flush=True)
start_at = float(sys.stdin.readline())
time.sleep(max(0.0, start_at - time.time()))
for eshop_id, oauth_token in shops:
    try:
        tokens.get_api_access_token(Eshop(eshop_id=eshop_id, oauth_access_token=oauth_token))
        outcomes["ok"] += 1
    except Exception as exc:
        outcomes[type(exc).__name__] += 1
print(json.dumps(outcomes))
"""


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("real_worker")
def test_a_worker_renewing_a_chunk_while_request_paths_renew_mints_once_per_shop(
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    settings: Any,
) -> None:
    shops = [
        install() for _ in range(6)
    ]  # no token yet: the chunk and the requests all need one
    # Each mint takes a while, so the worker and the request paths meet at the renewal locks.
    shoptet_settings.set_latency(0.2, path_prefix=GET_TOKEN)
    env = {
        **os.environ,
        "SHOPTET_REDIS_PREFIX": settings.SHOPTET_REDIS_PREFIX,
        "SHOPTET_CLIENT_ID": shoptet_settings.client_id,
        "SHOPTET_CLIENT_SECRET": shoptet_settings.client_secret,
        "SHOPTET_OAUTH_URL": shoptet_settings.oauth_url,
        "SHOPTET_API_URL": shoptet_settings.api_url,
        "SHOPTET_REDIRECT_URI": shoptet_settings.redirect_uri,
        "SHOPTET_ALLOW_HTTP": "true",
        "SHOPTET_TOKEN_CAP": str(settings.SHOPTET_TOKEN_CAP),
        "WORKER_SHOPS": json.dumps([[e.eshop_id, e.oauth_access_token] for e in shops]),
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", REQUEST_PATH],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready", process.stderr

    start_at = time.time() + 0.1
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(f"{start_at}\n")
        process.stdin.flush()
    chunk_done = threading.Event()

    def finished(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "name", None) == "shoptet_api.renew_token_chunk":
            chunk_done.set()

    task_postrun.connect(finished, weak=False)
    try:
        tasks.renew_token_chunk.delay([e.eshop_id for e in shops])
        results = []
        for process in processes:
            out, err = process.communicate(timeout=60)
            assert process.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
        # The worker (a thread of this process) ran the chunk; 30 s only bounds a stuck worker.
        assert chunk_done.wait(30)
    finally:
        task_postrun.disconnect(finished)

    assert all(result == {"ok": len(shops)} for result in results)
    stats = shoptet_settings.stats
    # One token per shop, whoever minted it: the others found it stored and fresh.
    assert [issued(shoptet_settings, e) for e in shops] == [1] * len(shops)
    assert max(stats.max_valid_tokens_seen[e.eshop_id] for e in shops) == 1
    assert sum(stats.cap_rejections.values()) == 0
    assert all(get_redis().exists(tokens.token_key(e.eshop_id)) for e in shops)
