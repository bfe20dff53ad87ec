"""The token broker against the emulator and real Redis: single flight, the cap, 401 handling,
margins, lifecycle answers and a Redis outage in the middle of a run."""

from __future__ import annotations

import base64
import io
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest import mock

import pytest
import redis
from django.core.management import call_command

from addon_project.encryption import decrypt, encrypt
from addon_project.redis_client import get_redis
from eshops.models import Eshop
from oauth.services import install_addon
from shoptet_api import tokens
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import (
    AddonNotInstalled,
    AddonSuspended,
    ShoptetInvalidToken,
    ShoptetMaxTokensReached,
    ShoptetOAuthError,
)
from shoptet_api.tokens import renewal
from shoptet_emulator import ShoptetEmulator

pytestmark = pytest.mark.django_db


def minted(emulator: ShoptetEmulator, eshop: Eshop) -> int:
    return int(emulator.stats.api_tokens_issued.get(eshop.eshop_id, 0))


def in_threads(count: int, work: Callable[[], Any]) -> list[Any]:
    barrier = threading.Barrier(count)

    def run() -> Any:
        barrier.wait()
        return work()

    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(run) for _ in range(count)]
        return [future.result() for future in futures]


def test_token_is_fetched_once_and_reused(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()

    first = tokens.get_api_access_token(eshop)
    tokens.clear_process_cache()  # a different process: reads Redis, not memory
    second = tokens.get_api_access_token(eshop)

    assert first == second
    assert minted(shoptet_settings, eshop) == 1


def test_token_is_stored_encrypted_in_redis(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    token = tokens.get_api_access_token(eshop)

    raw: dict[Any, Any] = get_redis().hgetall(tokens.token_key(eshop.eshop_id))
    stored: dict[bytes, bytes] = raw

    assert token.encode() not in b"".join(stored.keys()) + b"".join(stored.values())
    # A Fernet token, stored raw in two parts (version byte 0x80 first).
    fernet_token = base64.urlsafe_b64encode(stored[b"c1"] + stored[b"c2"])
    assert fernet_token.startswith(b"gAAAA")
    assert decrypt(fernet_token.decode()) == token
    # Every value fits a compact hash (listpack): half the memory of a hash table.
    assert max(len(value) for value in stored.values()) <= 64
    assert (
        get_redis().object("encoding", tokens.token_key(eshop.eshop_id)) == b"listpack"
    )


def store_the_earlier_way(eshop_id: int, token: str) -> None:
    """What a process of the earlier release writes: the Fernet token as base64 text in `ct`."""
    get_redis().hset(tokens.token_key(eshop_id), "ct", encrypt(token))


def test_a_token_an_earlier_release_stored_is_read(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    token = tokens.get_api_access_token(eshop)
    r = get_redis()
    key = tokens.token_key(eshop.eshop_id)
    r.hdel(key, "c1", "c2")
    store_the_earlier_way(eshop.eshop_id, token)
    tokens.clear_process_cache()

    assert tokens.get_api_access_token(eshop) == token
    assert minted(shoptet_settings, eshop) == 1


def test_a_stored_token_leaves_no_ct_field_an_earlier_release_would_misread(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    old = tokens.get_api_access_token(eshop)
    store_the_earlier_way(eshop.eshop_id, old)

    assert tokens.renew_if_expiring(eshop, within=10**9) is True

    # An earlier release's process reads `ct` as text: finding none, it renews under the lock.
    assert not get_redis().hexists(tokens.token_key(eshop.eshop_id), "ct")


def test_a_token_an_earlier_release_stored_after_ours_is_preferred(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    ours = tokens.get_api_access_token(eshop)
    # An earlier release's process renewed after us: it wrote `ct` and left our `c1` + `c2`.
    theirs = "token-an-earlier-release-minted-0123456789"
    store_the_earlier_way(eshop.eshop_id, theirs)
    tokens.clear_process_cache()

    got = tokens.get_api_access_token(eshop)

    assert got == theirs != ours
    assert minted(shoptet_settings, eshop) == 1


def test_fifty_threads_cause_one_fetch(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    shoptet_settings.set_latency(
        0.2, path_prefix="/action/ApiOAuthServer/getAccessToken"
    )

    results = in_threads(50, lambda: tokens.get_api_access_token(eshop))

    assert len(set(results)) == 1
    assert minted(shoptet_settings, eshop) == 1


def test_token_keys_share_one_hash_tag() -> None:
    keys = [tokens.token_key(7), tokens.issued_key(7), tokens.renew_lock_key(7)]

    assert {key[key.index("{") : key.index("}") + 1] for key in keys} == {"{eshop:7}"}


def test_margin_scales_with_the_lifetime(settings: Any) -> None:
    settings.SHOPTET_TOKEN_RENEW_MARGIN = 60
    settings.SHOPTET_TOKEN_RENEW_MARGIN_FRACTION = 0.04

    assert tokens.renew_margin(1800) == 60
    assert tokens.renew_margin(8) == pytest.approx(0.32)


def test_short_lived_token_is_reused_for_most_of_its_life_then_renewed(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    shoptet_settings.token_lifetime = 2
    eshop = install()

    first = tokens.get_api_access_token(eshop)
    tokens.clear_process_cache()
    again = tokens.get_api_access_token(eshop)
    time.sleep(2.1)
    renewed = tokens.get_api_access_token(eshop)

    assert again == first
    assert renewed != first
    assert minted(shoptet_settings, eshop) == 2


def test_invalidate_drops_only_the_token_that_failed(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    old = tokens.get_api_access_token(eshop)
    tokens.invalidate_api_token(eshop, old)
    new = tokens.get_api_access_token(eshop)

    # Nine more workers report the same 401 on the old token: the new one stays.
    for _ in range(9):
        tokens.invalidate_api_token(eshop, old)
    tokens.clear_process_cache()

    assert tokens.get_api_access_token(eshop) == new
    assert minted(shoptet_settings, eshop) == 2


def test_ten_workers_hitting_the_same_401_cause_one_renewal(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    with ShoptetClient(eshop) as client:
        client.get("/api/eshop")
    shoptet_settings.expire_api_tokens(eshop.eshop_id)

    def call() -> Any:
        with ShoptetClient(eshop) as client:
            return client.get("/api/eshop")

    in_threads(10, call)

    assert minted(shoptet_settings, eshop) == 2


def test_cap_is_never_exceeded_under_concurrency_with_short_lifetimes(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop], settings: Any
) -> None:
    settings.SHOPTET_TOKEN_CAP = 2
    shoptet_settings.token_lifetime = 1
    eshop = install()
    stop = time.monotonic() + 4.0
    errors: list[BaseException] = []
    second_401s: list[ShoptetInvalidToken] = []

    def worker() -> None:
        with ShoptetClient(eshop) as client:
            while time.monotonic() < stop:
                try:
                    client.get("/api/eshop")
                except ShoptetMaxTokensReached:
                    time.sleep(0.05)  # at the cap: wait for a slot instead of minting
                except ShoptetInvalidToken as exc:
                    # The renewed token was revoked too before its retry: raised by design.
                    second_401s.append(exc)
                except Exception as exc:
                    errors.append(exc)
                    return

    def revoker() -> None:
        # Shoptet revoking tokens mid-run forces renewals on top of expiries.
        while time.monotonic() < stop:
            time.sleep(1.2)
            shoptet_settings.expire_api_tokens(eshop.eshop_id)

    threads = [threading.Thread(target=worker) for _ in range(16)] + [
        threading.Thread(target=revoker)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert shoptet_settings.stats.max_valid_tokens_seen[eshop.eshop_id] <= 2
    assert shoptet_settings.stats.cap_rejections.get(eshop.eshop_id, 0) == 0
    assert minted(shoptet_settings, eshop) >= 4  # it really renewed many times


def test_maximum_tokens_reached_reuses_the_current_token(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    current = tokens.get_api_access_token(eshop)
    # Shoptet counts tokens we do not know of (another deployment, a flushed Redis).
    shoptet_settings.fail_next(
        1,
        status=429,
        body={"error": "maximum_tokens_reached"},
        path_prefix="/action/ApiOAuthServer/getAccessToken",
    )

    # Refused: nothing new was minted, and the current token is kept.
    assert tokens.renew_if_expiring(eshop, within=10_000) is False
    assert tokens.get_api_access_token(eshop) == current
    assert minted(shoptet_settings, eshop) == 1


@pytest.mark.parametrize(
    ("state", "error", "status"),
    [
        ("suspended", AddonSuspended, Eshop.Status.SUSPENDED),
        ("not_installed", AddonNotInstalled, Eshop.Status.UNINSTALLED),
    ],
)
def test_oauth_server_lifecycle_answers_change_the_tenant_status(
    shoptet_settings: ShoptetEmulator,
    install: Callable[[], Eshop],
    state: str,
    error: type[Exception],
    status: str,
) -> None:
    eshop = install()
    shoptet_settings.set_addon_state(eshop.eshop_id, state)  # type: ignore[arg-type]

    with pytest.raises(error):
        tokens.get_api_access_token(eshop)

    eshop.refresh_from_db()
    assert eshop.status == status
    assert "getAccessToken" in eshop.status_reason


def test_repeated_oauth_token_refusals_suspend_the_tenant_without_wiping_it(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    oauth_token = eshop.oauth_access_token
    shoptet_settings.revoke_oauth_token(eshop.eshop_id)

    statuses = []
    for _ in range(tokens.OAUTH_REJECTIONS_BEFORE_SUSPEND):
        with pytest.raises(ShoptetOAuthError) as excinfo:
            tokens.get_api_access_token(eshop)
        assert excinfo.value.status_code == 401
        statuses.append(Eshop.objects.get(pk=eshop.pk).status)

    assert statuses == [Eshop.Status.ACTIVE] * (
        tokens.OAUTH_REJECTIONS_BEFORE_SUSPEND - 1
    ) + [Eshop.Status.SUSPENDED]
    stored = Eshop.objects.get(pk=eshop.pk)
    assert stored.oauth_access_token == oauth_token  # reversible: nothing was wiped
    assert "401" in stored.status_reason
    assert (
        tokens.token_health(eshop.eshop_id)["failures"]
        == tokens.OAUTH_REJECTIONS_BEFORE_SUSPEND
    )


def test_a_token_encrypted_under_a_retired_key_is_renewed_not_fatal(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop], settings: Any
) -> None:
    from cryptography.fernet import Fernet

    eshop = install()
    old_token = tokens.get_api_access_token(eshop)
    new_key = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [new_key, *settings.FIELD_ENCRYPTION_KEYS]
    call_command("reencrypt_secrets", stdout=io.StringIO())
    settings.FIELD_ENCRYPTION_KEYS = [
        new_key
    ]  # the README's rotation: the old key is gone
    tokens.clear_process_cache()
    eshop.refresh_from_db()

    assert tokens.get_api_access_token(eshop) != old_token
    assert minted(shoptet_settings, eshop) == 2


def test_answer_about_a_replaced_oauth_token_does_not_change_the_tenant(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    stale = install()
    # A reinstall stored a new OAuth token after `stale` was loaded; the old one is now refused.
    install_addon(code=shoptet_settings.issue_install_code(stale.eshop_id))

    with pytest.raises(ShoptetOAuthError):
        tokens.get_api_access_token(stale)

    assert Eshop.objects.get(pk=stale.pk).status == Eshop.Status.ACTIVE


def test_reinstall_forgets_the_previous_install_tokens(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    tokens.get_api_access_token(eshop)

    tokens.forget_tokens(eshop.eshop_id)

    assert not get_redis().exists(
        tokens.token_key(eshop.eshop_id), tokens.issued_key(eshop.eshop_id)
    )


def test_no_token_reaches_the_logs(
    shoptet_settings: ShoptetEmulator,
    install: Callable[[], Eshop],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    eshop = install()
    token = tokens.get_api_access_token(eshop)
    tokens.invalidate_api_token(eshop, token)
    renewed = tokens.get_api_access_token(eshop)

    text = caplog.text + "".join(repr(record.args) for record in caplog.records)
    assert "new API token" in text
    for secret in (token, renewed, eshop.oauth_access_token):
        assert secret
        assert secret not in text


# --- Redis outage: a private redis-server we can stop and start -----------------------------------


class PrivateRedis:
    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def private_redis(settings: Any) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not installed")
    server = PrivateRedis()
    server.start()
    settings.REDIS_URL = server.url
    get_redis.cache_clear()
    yield server
    server.stop()
    get_redis.cache_clear()


def test_redis_stopped_mid_run_keeps_serving_within_the_cap_and_recovers(
    shoptet_settings: ShoptetEmulator,
    install: Callable[[], Eshop],
    private_redis: PrivateRedis,
) -> None:
    eshop = install()
    with ShoptetClient(eshop) as client:
        client.get("/api/eshop")
        assert minted(shoptet_settings, eshop) == 1

        private_redis.stop()
        tokens.clear_process_cache()
        during = in_threads(20, lambda: ShoptetClient(eshop).get("/api/eshop"))

        # One process, Redis down: one fallback token for all 20 threads, and the calls succeed.
        assert all(
            data["contactInformation"]["eshopId"] == eshop.eshop_id for data in during
        )
        assert minted(shoptet_settings, eshop) == 2
        assert shoptet_settings.stats.peak_concurrency[eshop.eshop_id] <= 3

        private_redis.start()
        tokens.clear_process_cache()
        client.get("/api/eshop")

    # Back on the shared store: the token lives in Redis again.
    assert get_redis().exists(tokens.token_key(eshop.eshop_id))
    assert shoptet_settings.stats.max_valid_tokens_seen[eshop.eshop_id] <= 3


def test_concurrent_forced_renewals_mint_one_token(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    tokens.get_api_access_token(eshop)
    shoptet_settings.set_latency(
        0.2, path_prefix="/action/ApiOAuthServer/getAccessToken"
    )

    # Ten operators press "renew now" at once: one new token, not ten. "At once" is made exact:
    # every call has taken its start time before any goes on (on a loaded machine a late thread
    # would otherwise start after the first mint began, and rightly want a newer token).
    started = threading.Barrier(10)
    renew_shared = renewal._renew_shared

    def after_all_started(*args: Any, **kwargs: Any) -> Any:
        started.wait(10)
        return renew_shared(*args, **kwargs)

    with mock.patch.object(renewal, "_renew_shared", after_all_started):
        results = in_threads(10, lambda: tokens.renew_if_expiring(eshop, within=10**9))

    assert all(results)
    assert minted(shoptet_settings, eshop) == 2
