"""Full copies through snapshot jobs, end to end against the emulator over loopback."""

from __future__ import annotations

import datetime as dt
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from eshops.models import Eshop
from shoptet_api.models import WebhookEvent
from shoptet_emulator import ShoptetEmulator
from sync import download
from sync.download import DownloadError, check_result_url
from sync.engine import MAX_UNFINISHED_JOB_POLLS, Outcome
from sync.handlers import job_finished
from sync.models import Order, SyncState
from sync.service import run_resource
from sync.tasks import sweep_jobs
from tests.sync.helpers import live_codes, mirrored_codes, requests_to

pytestmark = pytest.mark.django_db

WEBHOOK_URL = (
    "http://127.0.0.1:9/webhooks/shoptet/"  # nobody listens: deliveries fail fast
)


@pytest.fixture
def snap_shop(
    install: Callable[..., Eshop], shoptet_settings: ShoptetEmulator, settings: Any
) -> Eshop:
    """A tenant with job:finished registered at Shoptet and known to us: snapshots are on."""
    settings.SHOPTET_WEBHOOK_URL = WEBHOOK_URL
    shoptet_settings.auto_webhooks = False  # tests deliver job:finished themselves
    shop = install()
    hook = shoptet_settings.add_webhook(
        shop.eshop_id, "job:finished", WEBHOOK_URL, None
    )
    assert hook is not None
    Eshop.objects.filter(pk=shop.pk).update(webhooks={"job:finished": hook.id})
    shop.refresh_from_db()
    return shop


def state_of(shop: Eshop, resource: str = "orders") -> SyncState:
    return SyncState.objects.get(eshop=shop, resource=resource)


def wait_for_job(emulator: ShoptetEmulator, job_id: str) -> str:
    """The emulated job's status once it is no longer pending (bounded)."""
    for _ in range(200):
        job = emulator.job(job_id)
        assert job is not None
        if job.status != "pending":
            return job.status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still pending")


def deliver_job_finished(emulator: ShoptetEmulator, shop: Eshop) -> None:
    """What the webhook view does with a verified job:finished (the slice it queues is ours)."""
    cp = state_of(shop).checkpoint
    job_id = cp["job_id"] if "job_id" in cp else cp["fetch"]["job_id"]
    wait_for_job(emulator, job_id)
    event = WebhookEvent(
        eshop=shop, event="job:finished", event_instance=job_id, raw_body="{}"
    )
    assert "resumed" in job_finished(event)


def complete(emulator: ShoptetEmulator, shop: Eshop, resource: str = "orders") -> None:
    """Run until done, delivering job:finished whenever a job is waited for."""
    for _ in range(20):
        outcome, _ = run_resource(shop, resource)
        if outcome is Outcome.DONE:
            return
        if outcome is Outcome.WAITING:
            deliver_job_finished(emulator, shop)
    raise AssertionError("the sync did not complete")


@pytest.mark.parametrize("gzip", [True, False], ids=["gzip", "plain"])
def test_full_copy_through_a_snapshot(
    gzip: bool, snap_shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    shoptet_settings.result_gzip = gzip
    # Created over the last day: the /changes catch-up after the copy has nothing to refetch.
    shoptet_settings.add_orders(snap_shop.eshop_id, 1200, history_days=1)

    complete(shoptet_settings, snap_shop)

    assert mirrored_codes(snap_shop) == live_codes(shoptet_settings, snap_shop)
    assert len(mirrored_codes(snap_shop)) == 1200
    eshop_id = snap_shop.eshop_id
    assert shoptet_settings.stats.snapshot_jobs[eshop_id] == 1
    assert shoptet_settings.stats.result_downloads[eshop_id] == 1
    # job:finished arrived: the detail was read once, not polled on a timer.
    assert shoptet_settings.stats.job_polls[eshop_id] == 1
    # The copy never paged the list (only /changes caught up after it).
    assert not [
        r for r in requests_to(shoptet_settings, "/api/orders") if r[1] == "/api/orders"
    ]
    state = state_of(snap_shop)
    assert state.phase == SyncState.Phase.IDLE
    assert state.last_full_at is not None
    assert state.items_stored >= 1200
    order = Order.objects.filter(eshop=snap_shop).first()
    assert order is not None
    assert order.data["code"] == order.code


def test_a_chunked_result_without_content_length_is_read_too(
    snap_shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    shoptet_settings.result_content_length = False
    shoptet_settings.add_orders(snap_shop.eshop_id, 300, history_days=1)
    declared: list[int | None] = []
    real_chunks = download._chunks

    def spy(response: Any, max_bytes: int, total: int | None, *args: Any) -> Any:
        declared.append(total)
        return real_chunks(response, max_bytes, total, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(download, "_chunks", spy)
        complete(shoptet_settings, snap_shop)

    # The result really came without a Content-Length (chunked), and was read whole.
    assert declared
    assert set(declared) == {None}
    assert mirrored_codes(snap_shop) == live_codes(shoptet_settings, snap_shop)


def test_without_job_finished_the_job_is_polled_with_growing_spacing_never_an_11th_time(
    snap_shop: Eshop, shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    # Even configured with more delays than Shoptet allows polls, the engine stops in time.
    settings.SYNC_JOB_POLL_DELAYS = [float(2**n) for n in range(12)]
    shoptet_settings.job_outcome = (
        "never"  # no webhook, never done (Shoptet's lost job)
    )
    shoptet_settings.add_orders(snap_shop.eshop_id, 5, history_days=1)
    spacings = []

    for _ in range(15):
        outcome, wait = run_resource(snap_shop, "orders")
        assert outcome is Outcome.WAITING
        cp = state_of(snap_shop).checkpoint
        if cp["next_poll_at"] is None:
            break
        spacings.append(wait)
        # Time passes: the next slice finds its poll due.
        SyncState.objects.filter(eshop=snap_shop).update(
            checkpoint={**cp, "next_poll_at": time.time() - 1}
        )

    polls = shoptet_settings.stats.job_polls[snap_shop.eshop_id]
    assert polls == MAX_UNFINISHED_JOB_POLLS
    assert polls < shoptet_settings.max_job_polls + 1  # never the refused 11th
    assert spacings == sorted(spacings)
    assert spacings[-1] > spacings[0] * 10
    assert state_of(snap_shop).last_error == ""  # no 403 was met
    # Further slices wait for the webhook or the sweeper without polling again.
    outcome, _ = run_resource(snap_shop, "orders")
    assert outcome is Outcome.WAITING
    assert shoptet_settings.stats.job_polls[snap_shop.eshop_id] == polls


def test_the_sweeper_restarts_a_job_that_never_reports(
    snap_shop: Eshop,
    shoptet_settings: ShoptetEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shoptet_settings.job_outcome = "never"
    shoptet_settings.add_orders(snap_shop.eshop_id, 40, history_days=1)
    assert run_resource(snap_shop, "orders")[0] is Outcome.WAITING
    first_job = state_of(snap_shop).checkpoint["job_id"]
    woken: list[tuple[int, str]] = []
    monkeypatch.setattr(
        "sync.tasks.run_slice.delay", lambda *args: woken.append(tuple(args))
    )
    assert sweep_jobs() == 0  # a young job is left alone

    # Three hours later (Shoptet marks it failed and sends nothing).
    state = state_of(snap_shop)
    cp = {**state.checkpoint, "started_at": time.time() - 4 * 3600}
    SyncState.objects.filter(pk=state.pk).update(checkpoint=cp)
    shoptet_settings.job_outcome = "complete"

    assert sweep_jobs() == 1
    assert woken == [(snap_shop.eshop_id, "orders")]
    complete(shoptet_settings, snap_shop)  # what the woken slice does

    assert state_of(snap_shop).checkpoint == {}
    assert shoptet_settings.stats.snapshot_jobs[snap_shop.eshop_id] == 2
    assert shoptet_settings.job(first_job) is not None
    assert mirrored_codes(snap_shop) == live_codes(shoptet_settings, snap_shop)


def test_an_expired_result_starts_a_new_job(
    snap_shop: Eshop,
    shoptet_settings: ShoptetEmulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shoptet_settings.add_orders(snap_shop.eshop_id, 30, history_days=1)
    assert run_resource(snap_shop, "orders")[0] is Outcome.WAITING
    job_id = state_of(snap_shop).checkpoint["job_id"]
    wait_for_job(shoptet_settings, job_id)
    # The worker died after reading the detail; the result expired before anyone came back.
    state = state_of(snap_shop)
    result_url = f"{snap_shop.url.rstrip('/')}/api-results/{shoptet_settings.job(job_id).file_name}"  # type: ignore[union-attr]
    SyncState.objects.filter(pk=state.pk).update(
        checkpoint={**state.checkpoint, "result_url": result_url},
        updated_at=timezone.now() - dt.timedelta(hours=1),
    )
    shoptet_settings.expire_job_result(job_id)
    woken: list[tuple[int, str]] = []
    monkeypatch.setattr(
        "sync.tasks.run_slice.delay", lambda *args: woken.append(tuple(args))
    )

    assert sweep_jobs() == 1
    assert woken == [(snap_shop.eshop_id, "orders")]
    complete(shoptet_settings, snap_shop)

    assert shoptet_settings.stats.snapshot_jobs[snap_shop.eshop_id] == 2
    assert mirrored_codes(snap_shop) == live_codes(shoptet_settings, snap_shop)


def _with_result_url(
    emulator: ShoptetEmulator, shop: Eshop, rewrite: Callable[[str], str]
) -> None:
    """Finish a job and put a (rewritten) resultUrl in the checkpoint, as a job detail would."""
    assert run_resource(shop, "orders")[0] is Outcome.WAITING
    state = state_of(shop)
    job = emulator.job(state.checkpoint["job_id"])
    assert job is not None
    wait_for_job(emulator, job.job_id)
    url = f"{shop.url.rstrip('/')}/api-results/{job.file_name}"
    SyncState.objects.filter(pk=state.pk).update(
        checkpoint={**state.checkpoint, "result_url": rewrite(url)}
    )


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda url: url.replace("127.0.0.1", "localhost"),  # same server, foreign host
        lambda url: url.replace("http://", "http://127.0.0.1@localhost", 1),
        lambda url: "https://files.example.com/" + url.rsplit("/", 1)[1],
    ],
    ids=["foreign-host", "userinfo", "foreign-https"],
)
def test_a_result_url_on_a_foreign_host_is_never_fetched(
    rewrite: Callable[[str], str], snap_shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    shoptet_settings.add_orders(snap_shop.eshop_id, 3, history_days=1)
    _with_result_url(shoptet_settings, snap_shop, rewrite)

    with pytest.raises(DownloadError, match=r"host"):
        run_resource(snap_shop, "orders")

    assert shoptet_settings.stats.result_downloads[snap_shop.eshop_id] == 0
    assert not requests_to(shoptet_settings, "/shop/")
    assert "DownloadError" in state_of(snap_shop).last_error
    assert not Order.objects.filter(eshop=snap_shop).exists()


def test_http_result_url_is_refused_without_shoptet_allow_http(
    snap_shop: Eshop, shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    shoptet_settings.add_orders(snap_shop.eshop_id, 3, history_days=1)
    _with_result_url(shoptet_settings, snap_shop, lambda url: url)
    settings.SHOPTET_ALLOW_HTTP = False

    with pytest.raises(DownloadError, match="scheme 'http' is not allowed"):
        download.stream_lines(
            state_of(snap_shop).checkpoint["result_url"], shop_url=snap_shop.url
        ).__next__()

    assert shoptet_settings.stats.result_downloads[snap_shop.eshop_id] == 0


@pytest.mark.parametrize(
    ("url", "shop_url", "allowed"),
    [
        ("https://shop.cz/api-results/a.json", "https://shop.cz/", True),
        ("https://cdn.myshoptet.com/a.json", "https://shop.cz/", True),
        ("https://shop.cz:8443/a.json", "https://shop.cz/", False),
        ("https://evilmyshoptet.com/a.json", "https://shop.cz/", False),
        ("https://myshoptet.com.evil.io/a.json", "https://shop.cz/", False),
        ("https://user@shop.cz/a.json", "https://shop.cz/", False),
        ("ftp://shop.cz/a.json", "https://shop.cz/", False),
        ("https://[::1/a.json", "https://shop.cz/", False),
    ],
)
def test_which_result_urls_are_allowed(url: str, shop_url: str, allowed: bool) -> None:
    if allowed:
        check_result_url(url, shop_url)
    else:
        with pytest.raises(DownloadError):
            check_result_url(url, shop_url)


@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
def test_an_oversized_result_is_refused(
    sized: bool, snap_shop: Eshop, shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    shoptet_settings.result_content_length = sized
    shoptet_settings.result_gzip = False
    shoptet_settings.add_orders(
        snap_shop.eshop_id, 200, history_days=1
    )  # ~500 kB of JSON Lines
    settings.SYNC_DOWNLOAD_MAX_BYTES = 100_000
    assert run_resource(snap_shop, "orders")[0] is Outcome.WAITING
    deliver_job_finished(shoptet_settings, snap_shop)

    with pytest.raises(DownloadError, match="cap"):
        run_resource(snap_shop, "orders")

    state = state_of(snap_shop)
    assert state.phase == SyncState.Phase.SNAPSHOT  # not taken for a complete copy
    assert state.last_success_at is None
    assert state.checkpoint["download_failures"] == 1


def test_a_trickling_result_ends_at_the_download_deadline(
    snap_shop: Eshop, shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    shoptet_settings.add_orders(snap_shop.eshop_id, 3, history_days=1)
    _with_result_url(shoptet_settings, snap_shop, lambda url: url)
    url = state_of(snap_shop).checkpoint["result_url"]
    # One byte every 0.2 s: the status line and headers alone take a minute, and every read
    # gets its byte within the read timeout. Only a wall-clock deadline ends this.
    shoptet_settings.trickle_next(1, 0.2, f"/shop/{snap_shop.eshop_id}/api-results/")
    settings.SYNC_DOWNLOAD_DEADLINE_SECONDS = 1.0
    outcome: list[BaseException | int] = []

    def consume() -> None:
        try:
            outcome.append(
                len(list(download.stream_lines(url, shop_url=snap_shop.url)))
            )
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    worker.join(timeout=30)  # a generous bound: the trickle alone would take minutes

    assert not worker.is_alive(), "the download was not cut off by its deadline"
    assert len(outcome) == 1
    assert isinstance(outcome[0], DownloadError)
    assert "deadline" in str(outcome[0])


def test_a_trickling_body_after_quick_headers_ends_at_the_deadline(
    snap_shop: Eshop, shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    shoptet_settings.add_orders(snap_shop.eshop_id, 3, history_days=1)
    _with_result_url(shoptet_settings, snap_shop, lambda url: url)
    url = state_of(snap_shop).checkpoint["result_url"]
    settings.SYNC_DOWNLOAD_DEADLINE_SECONDS = 1.0
    lines = download.stream_lines(url, shop_url=snap_shop.url)
    shoptet_settings.trickle_next(1, 0.2, f"/shop/{snap_shop.eshop_id}/api-results/")

    with pytest.raises(DownloadError, match="deadline"):
        list(lines)


@pytest.mark.parametrize("bad", ["missing-field", "absurd-date", "huge-line"])
def test_bad_lines_are_item_errors_and_the_run_completes(
    bad: str, snap_shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    shoptet_settings.result_bad_line = bad  # type: ignore[assignment]
    shoptet_settings.result_bad_line_at = 3
    shoptet_settings.add_orders(snap_shop.eshop_id, 20, history_days=1)

    complete(shoptet_settings, snap_shop)

    state = state_of(snap_shop)
    assert state.item_errors == 1
    assert len(state.recent_item_errors) == 1
    message = state.recent_item_errors[0]["error"]
    expected = {
        "missing-field": "missing code",
        "absurd-date": "not a date-time",
        "huge-line": "longer than SYNC_MAX_LINE_BYTES",
    }[bad]
    assert expected in message
    assert state.phase == SyncState.Phase.IDLE
    assert state.last_success_at is not None
    assert state.last_error == ""
    # The other 19 are stored; the bad one is fetched by the /changes catch-up or stays out.
    assert len(mirrored_codes(snap_shop)) >= 19


def test_memory_stays_flat_while_streaming_a_large_result(
    snap_shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    # ~110 MB of orders plus one 50 MB line, gzip: the parts we hold are a chunk and a line.
    shoptet_settings.result_bad_line = "huge-line"
    shoptet_settings.result_bad_line_at = 1000
    shoptet_settings.add_orders(snap_shop.eshop_id, 40_000, history_days=1)
    _with_result_url(shoptet_settings, snap_shop, lambda url: url)
    url = state_of(snap_shop).checkpoint["result_url"]
    lines = uncompressed = 0

    tracemalloc.start()
    try:
        for line in download.stream_lines(url, shop_url=snap_shop.url):
            lines += 1
            uncompressed += len(line.data or b"")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert lines == 40_000
    assert uncompressed > 100_000_000
    # Generous: 16 MiB against 150+ MB streamed (a held result would be over 100%).
    assert peak < 16 * 1024 * 1024, f"peak {peak} bytes"
    assert peak / (uncompressed + 50 * 1024 * 1024) < 0.1


def test_a_snapshot_refused_with_403_falls_back_to_paging(
    snap_shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    # We believe job:finished is registered; Shoptet no longer has it (deleted by hand).
    for hook in shoptet_settings.webhooks_of(snap_shop.eshop_id):
        shoptet_settings.delete_webhook(snap_shop.eshop_id, hook.id)
    shoptet_settings.add_orders(snap_shop.eshop_id, 60, history_days=1)

    complete(shoptet_settings, snap_shop)

    assert mirrored_codes(snap_shop) == live_codes(shoptet_settings, snap_shop)
    assert shoptet_settings.stats.snapshot_jobs[snap_shop.eshop_id] == 0
    assert any(
        r[1] == "/api/orders" for r in requests_to(shoptet_settings, "/api/orders")
    )


@pytest.mark.django_db(transaction=True)
def test_job_finished_delivered_over_http_resumes_the_run(
    live_server: Any, shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    from oauth.services import install_addon

    settings.SHOPTET_WEBHOOK_URL = f"{live_server.url}/webhooks/shoptet/"
    settings.SYNC_ENABLED = True
    emulated = shoptet_settings.add_eshop()
    shoptet_settings.add_orders(emulated.eshop_id, 120, history_days=1)
    # A committed install: post_install (eager) registers job:finished at our live URL.
    shop = install_addon(code=shoptet_settings.issue_install_code(emulated.eshop_id))
    shop.refresh_from_db()
    assert "job:finished" in shop.webhooks

    outcome, wait = run_resource(shop, "orders")
    assert outcome is Outcome.WAITING
    assert wait >= 1  # the first timed poll is a minute away

    # The emulated job finishes, POSTs a signed job:finished to /webhooks/shoptet/; the
    # handler queues the slice (eager here) that reads the job and downloads the result.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not state_of(shop).last_success_at:
        time.sleep(0.1)

    assert state_of(shop).last_success_at is not None
    assert mirrored_codes(shop) == live_codes(shoptet_settings, shop)
    event = WebhookEvent.objects.get(event="job:finished")
    assert event.status == WebhookEvent.Status.PROCESSED
    assert "resumed" in event.result
    assert shoptet_settings.stats.job_polls[shop.eshop_id] == 1


# --- Incremental: many changed items through snapshots filtered by orderCodes ---------------


def _edited(emulator: ShoptetEmulator, shop: Eshop, count: int) -> list[str]:
    codes = emulator.add_orders(shop.eshop_id, 100, history_days=1)
    complete(emulator, shop)  # the first copy (a snapshot)
    for code in codes[:count]:
        emulator.edit_order(shop.eshop_id, code, paid=True)
    # Change times have one-second resolution: a walk started in the edits' own second would
    # (rightly) walk again. Start it in the next second.
    time.sleep(1.1)
    emulator.stats.requests.clear()
    return codes[:count]


def _detail_calls(emulator: ShoptetEmulator, codes: list[str]) -> int:
    paths = {f"/api/orders/{code}" for code in codes}
    return sum(1 for r in emulator.stats.requests if r[1] in paths)


def test_many_changed_orders_are_fetched_by_filtered_snapshots(
    snap_shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    edited = _edited(shoptet_settings, snap_shop, 60)
    jobs_before = shoptet_settings.stats.snapshot_jobs[snap_shop.eshop_id]
    drops_before = shoptet_settings.stats.drops[snap_shop.eshop_id]

    complete(shoptet_settings, snap_shop)

    assert shoptet_settings.stats.snapshot_jobs[snap_shop.eshop_id] - jobs_before == 2
    assert _detail_calls(shoptet_settings, edited) == 0
    assert all(
        Order.objects.get(eshop=snap_shop, code=code).paid is True for code in edited
    )
    # 2 jobs (5 + 1 poll each) and the /changes page: far below one drop per order.
    assert shoptet_settings.stats.drops[snap_shop.eshop_id] - drops_before < 20
    state = state_of(snap_shop)
    assert state.mode == SyncState.Mode.INCREMENTAL
    assert "fetch" not in state.checkpoint
    assert mirrored_codes(snap_shop) == live_codes(shoptet_settings, snap_shop)


def test_few_changed_orders_are_fetched_by_details(
    snap_shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    edited = _edited(shoptet_settings, snap_shop, 3)
    jobs_before = shoptet_settings.stats.snapshot_jobs[snap_shop.eshop_id]

    complete(shoptet_settings, snap_shop)

    assert shoptet_settings.stats.snapshot_jobs[snap_shop.eshop_id] == jobs_before
    assert _detail_calls(shoptet_settings, edited) == 3
    assert all(
        Order.objects.get(eshop=snap_shop, code=code).paid is True for code in edited
    )


def test_a_failed_filtered_snapshot_falls_back_to_details(
    snap_shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    edited = _edited(shoptet_settings, snap_shop, 30)
    shoptet_settings.job_outcome = "fail"

    complete(shoptet_settings, snap_shop)

    assert _detail_calls(shoptet_settings, edited) == 30
    assert all(
        Order.objects.get(eshop=snap_shop, code=code).paid is True for code in edited
    )
    assert "fetch" not in state_of(snap_shop).checkpoint
