"""Proactive renewal in chunks: the sweep queues bounded chunks of due shops, the chunk task renews
each shop once (skipping tenants that may no longer call the API) and survives one shop failing,
and a real worker renewing a chunk while request paths in other processes renew too stays
within the cap and mints once per shop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from addon_project.redis_client import get_redis
from eshops.models import Eshop
from shoptet_api import tasks, tokens
from shoptet_api.errors import ShoptetServerError
from shoptet_emulator import ShoptetEmulator

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
GET_TOKEN = "/action/ApiOAuthServer/getAccessToken"


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
        scheduled = tasks.renew_expiring_tokens.apply().get()

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
    ).get()

    assert outcomes == {"renewed": 3, "skipped": 3}
    assert [issued(shoptet_settings, e) for e in due] == [2, 2, 2]
    assert issued(shoptet_settings, paused) == 1
    assert issued(shoptet_settings, suspended) == 1
    # Run again: every token is fresh now, nothing more is minted.
    again = tasks.renew_token_chunk.apply(args=([e.eshop_id for e in due],)).get()
    assert again == {"fresh": 3}
    assert [issued(shoptet_settings, e) for e in due] == [2, 2, 2]


def test_one_shop_failing_never_stops_the_chunk(
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    caplog: pytest.LogCaptureFixture,
) -> None:
    broken, flaky, fine = install(), install(), install()
    real_renew_ahead = tokens.renew_ahead

    def renew_ahead(eshop: Eshop) -> bool:
        if eshop.eshop_id == broken.eshop_id:
            raise RuntimeError("a bug")
        if eshop.eshop_id == flaky.eshop_id:
            raise ShoptetServerError("503", status_code=503)
        return real_renew_ahead(eshop)

    with (
        mock.patch.object(tokens, "renew_ahead", side_effect=renew_ahead),
        mock.patch.object(
            tasks.renew_api_token, "apply_async", autospec=True
        ) as retried,
    ):
        outcomes = tasks.renew_token_chunk.apply(
            args=([broken.eshop_id, flaky.eshop_id, fine.eshop_id],)
        ).get()

    assert outcomes == {"failed": 1, "retrying": 1, "renewed": 1}
    assert issued(shoptet_settings, fine) == 1
    # The retryable failure is retried alone, by the per-shop task and its backoff.
    (args,), kwargs = retried.call_args
    assert args == (flaky.eshop_id,)
    assert kwargs["countdown"] > 0
    assert f"eshop_id={broken.eshop_id}: token renewal failed" in caplog.text


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
    ).get()

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
    caplog: pytest.LogCaptureFixture,
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
    tasks.renew_token_chunk.delay([e.eshop_id for e in shops])
    results = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    deadline = time.monotonic() + 30
    while "token chunk:" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)

    assert "token chunk:" in caplog.text
    assert all(result == {"ok": len(shops)} for result in results)
    stats = shoptet_settings.stats
    # One token per shop, whoever minted it: the others found it stored and fresh.
    assert [issued(shoptet_settings, e) for e in shops] == [1] * len(shops)
    assert max(stats.max_valid_tokens_seen[e.eshop_id] for e in shops) == 1
    assert sum(stats.cap_rejections.values()) == 0
    assert all(get_redis().exists(tokens.token_key(e.eshop_id)) for e in shops)
