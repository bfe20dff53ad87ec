"""Celery tasks: post-install setup, proactive renewal and the pending-install sweep."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from unittest import mock

import pytest
from celery.exceptions import Retry
from django.utils import timezone

from addon_project.redis_client import get_redis
from eshops.models import Eshop
from shoptet_api import retry, tasks, tokens
from shoptet_api.errors import ShoptetBadRequest, ShoptetRateLimited
from shoptet_emulator import ShoptetEmulator

pytestmark = pytest.mark.django_db

TOKEN_PATH = "/action/ApiOAuthServer/getAccessToken"


def token_calls(emulator: ShoptetEmulator) -> int:
    return sum(
        1 for _, path, _ in emulator.stats.requests if path.startswith(TOKEN_PATH)
    )


def test_post_install_fetches_eshop_details(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install()

    tasks.post_install.apply(args=(eshop.eshop_id,))

    eshop.refresh_from_db()
    assert eshop.name == shoptet_settings.get_eshop(eshop.eshop_id).name
    assert eshop.setup_completed_at is not None
    assert shoptet_settings.stats.api_tokens_issued[eshop.eshop_id] == 1


def test_post_install_skips_an_inactive_tenant(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install()
    Eshop.objects.filter(pk=eshop.pk).update(status=Eshop.Status.SUSPENDED)

    tasks.post_install.apply(args=(eshop.eshop_id,))

    assert token_calls(shoptet_settings) == 0
    assert Eshop.objects.get(pk=eshop.pk).setup_completed_at is None


def test_renewal_task_does_not_retry_when_addon_is_not_installed(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install()
    shoptet_settings.set_addon_state(eshop.eshop_id, "not_installed")

    result = tasks.renew_api_token.apply(args=(eshop.eshop_id,))

    assert result.successful()
    assert token_calls(shoptet_settings) == 1
    assert Eshop.objects.get(pk=eshop.pk).status == Eshop.Status.UNINSTALLED


def test_renewal_task_retries_a_transient_failure(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install()
    shoptet_settings.fail_next(1, status=503, path_prefix=TOKEN_PATH)

    result = tasks.renew_api_token.apply(args=(eshop.eshop_id,))

    assert result.successful()
    assert token_calls(shoptet_settings) == 2
    assert get_redis().hget(tokens.token_key(eshop.eshop_id), "exp") is not None


def test_sweep_renews_only_recently_active_tenants_whose_token_is_due(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    fresh, due, idle = install(), install(), install()
    shoptet_settings.token_lifetime = 1800
    tokens.get_api_access_token(fresh)
    shoptet_settings.token_lifetime = 30  # expires before the next sweep
    tokens.get_api_access_token(due)

    with mock.patch.object(
        tasks.renew_token_chunk, "apply_async", autospec=True
    ) as schedule:
        scheduled = tasks.renew_expiring_tokens.apply().result

    assert scheduled == 1
    (args,), kwargs = schedule.call_args
    assert args == ([due.eshop_id],)
    assert 0 <= kwargs["countdown"] <= 30
    queued = {i for call in schedule.call_args_list for i in call.args[0][0]}
    assert idle.eshop_id not in queued


def test_proactive_renewal_replaces_a_token_inside_the_margin(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install()
    # 20 s left is inside margin (0.8 s) + jitter (20 s) + 5 s: the task renews it.
    shoptet_settings.token_lifetime = 20
    old = tokens.get_api_access_token(eshop)

    tasks.renew_api_token.apply(args=(eshop.eshop_id,))
    tokens.clear_process_cache()

    assert tokens.get_api_access_token(eshop) != old
    assert shoptet_settings.stats.api_tokens_issued[eshop.eshop_id] == 2


def test_pending_install_sweep_completes_setup_that_never_ran(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install()
    Eshop.objects.filter(pk=eshop.pk).update(
        last_installed_at=timezone.now() - dt.timedelta(minutes=10)
    )

    assert tasks.complete_pending_installs.apply().result == 1

    assert Eshop.objects.get(pk=eshop.pk).setup_completed_at is not None
    assert tasks.complete_pending_installs.apply().result == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("real_worker")
def test_install_runs_post_install_through_a_real_worker(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install()  # commits, and on_commit publishes post_install to Redis

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        eshop.refresh_from_db()
        if eshop.setup_completed_at is not None:
            break
        time.sleep(0.1)

    assert eshop.setup_completed_at is not None
    assert eshop.name == shoptet_settings.get_eshop(eshop.eshop_id).name


# --- EshopTask: one base class for every per-e-shop task --------------------------------------------


@pytest.mark.parametrize(
    "task", [tasks.post_install, tasks.renew_api_token, tasks.sync_eshop_webhooks]
)
def test_every_per_eshop_task_is_an_eshop_task(task: object) -> None:
    assert isinstance(task, tasks.EshopTask)


def test_an_eshop_task_skips_a_tenant_that_is_gone_and_says_so(
    shoptet_settings: ShoptetEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    with mock.patch.object(tokens, "renew_ahead", autospec=True) as work:
        result = tasks.renew_api_token.apply(args=(987_654,))

    assert result.successful()
    work.assert_not_called()
    assert "eshop_id=987654 is gone; shoptet_api.renew_api_token skipped" in caplog.text


def test_an_eshop_task_skips_a_paused_tenant(
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    caplog: pytest.LogCaptureFixture,
) -> None:
    eshop = install()
    Eshop.objects.filter(pk=eshop.pk).update(processing_paused_at=timezone.now())

    with mock.patch.object(tokens, "renew_ahead", autospec=True) as work:
        tasks.renew_api_token.apply(args=(eshop.eshop_id,))

    work.assert_not_called()
    assert f"eshop_id={eshop.eshop_id} is paused" in caplog.text


def test_an_eshop_task_does_not_retry_an_error_that_is_not_retryable(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install()
    refused = ShoptetBadRequest("bad", status_code=400)

    with (
        mock.patch.object(tokens, "renew_ahead", side_effect=refused) as work,
        mock.patch.object(tasks.renew_api_token, "retry", autospec=True) as retried,
    ):
        result = tasks.renew_api_token.apply(args=(eshop.eshop_id,))

    assert result.failed()
    assert result.result is refused
    assert work.call_count == 1
    retried.assert_not_called()


def test_an_eshop_task_retries_a_rate_limit_after_its_retry_after_within_the_cap(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install()
    limited = ShoptetRateLimited(
        "slow down",
        status_code=429,
        retry_after=dt.datetime.now(tz=dt.UTC) + dt.timedelta(days=1),
    )

    with (
        mock.patch.object(tokens, "renew_ahead", side_effect=limited),
        mock.patch.object(
            tasks.renew_api_token, "retry", side_effect=Retry()
        ) as retried,
    ):
        tasks.renew_api_token.apply(args=(eshop.eshop_id,))

    retried.assert_called_once_with(
        exc=limited, countdown=retry.MAX_COUNTDOWN, max_retries=tasks.MAX_RETRIES
    )
