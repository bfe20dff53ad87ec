"""The broker's promises across real processes: the token cap and the in-flight limit hold when
several OS processes (not threads) share one e-shop, with 5xx answers and dropped connections."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eshops.models import Eshop
from shoptet_api import tokens
from shoptet_emulator import ShoptetEmulator

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]
GET_TOKEN = "/action/ApiOAuthServer/getAccessToken"
PROCESSES = 5

# One worker process: an unsaved tenant (no database needed) and a loop of token reads or API
# calls from a common start time (sent once every process is ready) for the run time; every
# outcome is counted, none is fatal.
WORKER = """
import collections, json, os, sys, time
import django
django.setup()
from eshops.models import Eshop
from shoptet_api import tokens
from shoptet_api.client import ShoptetClient

mode, eshop_id, run_for = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
eshop = Eshop(eshop_id=eshop_id, oauth_access_token=os.environ["WORKER_OAUTH_TOKEN"])
outcomes = collections.Counter()
print("ready", flush=True)
start_at = float(sys.stdin.readline())
time.sleep(max(0.0, start_at - time.time()))
with ShoptetClient(eshop) as client:
    while time.time() < start_at + run_for:
        try:
            if mode == "tokens":
                tokens.get_api_access_token(eshop)
                time.sleep(0.02)
            else:
                client.get("/api/eshop", max_attempts=1)
            outcomes["ok"] += 1
        except Exception as exc:
            outcomes[type(exc).__name__] += 1
print(json.dumps(outcomes))
"""


def run_workers(
    mode: str, eshop: Eshop, emulator: ShoptetEmulator, settings: Any, *, run_for: float
) -> list[dict[str, int]]:
    env = {
        **os.environ,
        "SHOPTET_REDIS_PREFIX": settings.SHOPTET_REDIS_PREFIX,
        "SHOPTET_CLIENT_ID": emulator.client_id,
        "SHOPTET_CLIENT_SECRET": emulator.client_secret,
        "SHOPTET_OAUTH_URL": emulator.oauth_url,
        "SHOPTET_API_URL": emulator.api_url,
        "SHOPTET_REDIRECT_URI": emulator.redirect_uri,
        "SHOPTET_ALLOW_HTTP": "true",
        "SHOPTET_TOKEN_CAP": str(settings.SHOPTET_TOKEN_CAP),
        # Short waits so a process that finds no token moves on within the run.
        "SHOPTET_TOKEN_WAIT_TIMEOUT": "2",
        "SHOPTET_TOKEN_READ_TIMEOUT": "1",
        "WORKER_OAUTH_TOKEN": str(eshop.oauth_access_token),
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, mode, str(eshop.eshop_id), str(run_for)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready", process.stderr
    start_at = time.time() + 0.2
    results = []
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(f"{start_at}\n")
        process.stdin.flush()
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_the_token_cap_holds_across_processes_through_5xx_and_lost_answers(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop], settings: Any
) -> None:
    eshop = install()
    # Tokens live 3 s: every process needs many renewals during the run.
    shoptet_settings.token_lifetime = 3
    shoptet_settings.fail_next(4, status=503, path_prefix=GET_TOKEN)
    shoptet_settings.drop_next(2, path_prefix=GET_TOKEN)

    results = run_workers("tokens", eshop, shoptet_settings, settings, run_for=8.0)

    assert sum(r.get("ok", 0) for r in results) > 100
    stats = shoptet_settings.stats
    assert stats.max_valid_tokens_seen[eshop.eshop_id] <= tokens.token_cap()
    assert stats.cap_rejections.get(eshop.eshop_id, 0) == 0
    # It really renewed across processes (8 s of 3 s tokens), and never minted per process.
    assert 3 <= stats.api_tokens_issued[eshop.eshop_id] <= 12


def test_the_in_flight_limit_holds_across_processes(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop], settings: Any
) -> None:
    eshop = install()
    shoptet_settings.set_latency(0.1, path_prefix="/api/eshop")
    shoptet_settings.fail_next(3, status=503, path_prefix="/api/eshop")

    results = run_workers("api", eshop, shoptet_settings, settings, run_for=4.0)

    assert sum(r.get("ok", 0) for r in results) > 20, results
    stats = shoptet_settings.stats
    assert stats.peak_concurrency[eshop.eshop_id] == settings.SHOPTET_MAX_IN_FLIGHT
    assert stats.concurrency_rejections.get(eshop.eshop_id, 0) == 0
