"""Snapshot jobs: 202 + jobId, job detail and its poll limit, job:finished, the streamed result."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from shoptet_emulator import data, schemas
from shoptet_emulator.snapshots import ABSURD_DATE, HUGE_LINE_BYTES


@pytest.fixture
def shop(emu_client, hook_receiver):
    """An installed shop with 120 orders, 30 products and job:finished registered."""
    url, _ = hook_receiver
    eshop_id, token = emu_client.api_token()
    emu_client.emu.add_orders(eshop_id, 120)
    emu_client.emu.add_products(eshop_id, 30)
    emu_client.emu.add_webhook(eshop_id, "job:finished", url + "/hook", None)
    return eshop_id, token


def _start(emu_client: Any, token: str, resource: str = "orders", **params: Any) -> str:
    response = emu_client.api("GET", f"/api/{resource}/snapshot", token, params=params)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["data"]["jobId"]
    return job_id


def _job(emu_client: Any, token: str, job_id: str) -> requests.Response:
    response: requests.Response = emu_client.api(
        "GET", f"/api/system/jobs/{job_id}", token
    )
    return response


def _wait_done(
    emu_client: Any, token: str, job_id: str, hook_receiver: Any
) -> dict[str, Any]:
    """Wait for job:finished (as a client should), then read the job detail."""
    _, received = hook_receiver
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(json.loads(body)["eventInstance"] == job_id for _, _, body in received):
            break
        time.sleep(0.025)
    response = _job(emu_client, token, job_id)
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()["data"]["job"]
    return job


def _lines(content: bytes) -> list[dict[str, Any]]:
    if content[:2] == b"\x1f\x8b":
        content = gzip.decompress(content)
    return [json.loads(line) for line in content.splitlines()]


def _validate_order(line: dict[str, Any]) -> None:
    body = {"data": {"order": line}, "errors": None, "metadata": {"requestId": "x"}}
    schemas.validate_response(body, path="/api/orders/{code}", method="GET", status=200)


def test_without_job_finished_a_snapshot_is_403_and_no_job_is_queued(emu_client):
    eshop_id, token = emu_client.api_token()

    response = emu_client.api("GET", "/api/orders/snapshot", token)

    assert response.status_code == 403
    schemas.validate_response(
        response.json(), path="/api/orders/snapshot", method="GET", status=403
    )
    assert emu_client.emu.jobs == []
    assert emu_client.emu.stats.snapshot_jobs[eshop_id] == 0


def test_a_snapshot_costs_five_drops(emu_client, shop):
    eshop_id, token = shop
    emu_client.emu.bucket_leak_per_second = 0.0

    response = emu_client.api("GET", "/api/orders/snapshot", token)

    assert response.status_code == 202
    assert response.headers["X-RateLimit-Bucket-Filling"] == "5/200"
    assert emu_client.emu.stats.snapshot_jobs[eshop_id] == 1


def test_finished_job_sends_signed_job_finished_and_serves_gzip_jsonl(
    emu_client, shop, hook_receiver
):
    eshop_id, token = shop
    key = emu_client.emu.renew_signature_key(eshop_id)
    job_id = _start(emu_client, token)

    job = _wait_done(emu_client, token, job_id, hook_receiver)
    result = emu_client.http.get(job["resultUrl"], timeout=10)

    schemas.validate_response(
        {"data": {"job": job}, "errors": None, "metadata": {"requestId": "x"}},
        path="/api/system/jobs/{jobId}",
        method="GET",
        status=200,
    )
    assert job["status"] == "completed"
    assert job["endpoint"] == "/api/orders/snapshot"
    assert job["resultUrl"].startswith(emu_client.emu.shop_url(eshop_id))
    assert job["validUntil"] is not None
    _, received = hook_receiver
    _, headers, body = received[-1]
    assert json.loads(body)["event"] == "job:finished"
    assert json.loads(body)["eventInstance"] == job_id
    expected = hmac.new(key.encode(), body, hashlib.sha1).hexdigest()
    assert headers["Shoptet-Webhook-Signature"] == expected
    assert result.status_code == 200
    assert result.content[:2] == b"\x1f\x8b"
    assert int(result.headers["Content-Length"]) == len(result.content)
    lines = _lines(result.content)
    assert sorted(line["code"] for line in lines) == sorted(
        data.order_code(n) for n in range(1, 121)
    )
    for line in lines[:5]:
        _validate_order(line)


def test_a_plain_result_is_jsonl_sent_chunked_when_its_length_is_not_measured(
    emu_client, shop, hook_receiver
):
    _, token = shop
    emu_client.emu.result_gzip = False
    emu_client.emu.result_content_length = False
    job_id = _start(emu_client, token, "products")

    job = _wait_done(emu_client, token, job_id, hook_receiver)
    result = emu_client.http.get(job["resultUrl"], timeout=10)

    assert result.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in result.headers
    assert result.content[:1] == b"{"
    products = _lines(result.content)
    assert len(products) == 30
    schemas.validate_response(
        {"data": products[0], "errors": None, "metadata": {"requestId": "x"}},
        path="/api/products/{guid}",
        method="GET",
        status=200,
    )


def test_the_order_codes_filter_exports_only_those_live_orders(
    emu_client, shop, hook_receiver
):
    eshop_id, token = shop
    codes = [data.order_code(n) for n in (3, 7, 9)]
    emu_client.emu.delete_order(eshop_id, codes[1])

    job_id = _start(emu_client, token, orderCodes=",".join(codes))
    job = _wait_done(emu_client, token, job_id, hook_receiver)
    lines = _lines(emu_client.http.get(job["resultUrl"], timeout=10).content)

    assert [line["code"] for line in lines] == [codes[0], codes[2]]


def test_more_than_fifty_order_codes_is_400(emu_client, shop):
    _, token = shop
    codes = ",".join(data.order_code(n) for n in range(1, 52))

    response = emu_client.api(
        "GET", "/api/orders/snapshot", token, params={"orderCodes": codes}
    )

    assert response.status_code == 400
    schemas.validate_response(
        response.json(), path="/api/orders/snapshot", method="GET", status=400
    )
    assert "but 51 given" in response.json()["errors"][0]["message"]


def test_a_snapshot_exports_the_shop_as_it_was_when_the_job_started(
    emu_client, shop, hook_receiver
):
    eshop_id, token = shop
    emu_client.emu.job_latency = 0.3
    job_id = _start(emu_client, token, orderCodes=data.order_code(1))

    emu_client.emu.edit_order(eshop_id, data.order_code(1), paid=None)
    job = _wait_done(emu_client, token, job_id, hook_receiver)
    lines = _lines(emu_client.http.get(job["resultUrl"], timeout=10).content)

    assert lines[0]["paid"] is False


def test_the_eleventh_poll_of_an_unfinished_job_is_refused(emu_client, shop):
    eshop_id, token = shop
    emu_client.emu.job_outcome = "never"
    job_id = _start(emu_client, token)

    polls = [_job(emu_client, token, job_id) for _ in range(11)]

    assert [p.status_code for p in polls] == [200] * 10 + [403]
    assert {p.json()["data"]["job"]["status"] for p in polls[:10]} == {"pending"}
    refused = polls[-1].json()
    schemas.validate_response(
        refused, path="/api/system/jobs/{jobId}", method="GET", status=403
    )
    assert refused["errors"][0]["errorCode"] == "job-detail-try-counter-exceeded-limit"
    assert emu_client.emu.stats.job_polls[eshop_id] == 11


def test_a_job_that_never_reports_is_failed_after_the_timeout_without_webhook(
    emu_client, shop, hook_receiver
):
    _, token = shop
    emu_client.emu.job_outcome = "never"
    job_id = _start(emu_client, token)
    emu_client.emu.job_timeout = 0.0

    job = _job(emu_client, token, job_id).json()["data"]["job"]

    assert job["status"] == "failed"
    assert job["resultUrl"] is None
    assert hook_receiver[1] == []


def test_a_failing_job_still_sends_job_finished(emu_client, shop, hook_receiver):
    _, token = shop
    emu_client.emu.job_outcome = "fail"
    job_id = _start(emu_client, token)

    job = _wait_done(emu_client, token, job_id, hook_receiver)

    assert job["status"] == "failed"
    assert job["resultUrl"] is None
    assert job["log"]


def test_a_slow_job_is_pending_and_has_no_result_yet(emu_client, shop):
    _, token = shop
    emu_client.emu.job_latency = 600.0
    job_id = _start(emu_client, token)

    job = _job(emu_client, token, job_id).json()["data"]["job"]

    assert job["status"] == "pending"
    assert job["resultUrl"] is None
    assert job["completionTime"] is None


def test_an_expired_result_is_gone(emu_client, shop, hook_receiver):
    _, token = shop
    job_id = _start(emu_client, token)
    job = _wait_done(emu_client, token, job_id, hook_receiver)

    emu_client.emu.expire_job_result(job_id)
    detail = _job(emu_client, token, job_id).json()["data"]["job"]
    result = emu_client.http.get(job["resultUrl"], timeout=10)

    assert detail["status"] == "expired"
    assert result.status_code == 404


def test_another_shops_job_and_result_are_not_found(emu_client, shop, hook_receiver):
    _, token = shop
    job_id = _start(emu_client, token)
    job = _wait_done(emu_client, token, job_id, hook_receiver)
    other_id, other_token = emu_client.api_token()

    detail = _job(emu_client, other_token, job_id)
    foreign_url = job["resultUrl"].replace(
        emu_client.emu.shop_url(shop[0]), emu_client.emu.shop_url(other_id)
    )

    assert detail.status_code == 404
    assert detail.json()["errors"][0]["errorCode"] == "job-not-found"
    assert emu_client.http.get(foreign_url, timeout=10).status_code == 404


@pytest.mark.parametrize("kind", ["missing-field", "absurd-date"])
def test_a_bad_line_replaces_one_item(emu_client, shop, hook_receiver, kind):
    _, token = shop
    emu_client.emu.result_bad_line = kind
    emu_client.emu.result_bad_line_at = 2
    job_id = _start(emu_client, token)

    job = _wait_done(emu_client, token, job_id, hook_receiver)
    lines = _lines(emu_client.http.get(job["resultUrl"], timeout=10).content)

    assert len(lines) == 120
    bad = lines[2]
    if kind == "missing-field":
        assert "code" not in bad
    else:
        assert bad["creationTime"] == ABSURD_DATE
    assert all("code" in line for index, line in enumerate(lines) if index != 2)


def test_a_fifty_megabyte_line_is_streamed(emu_client, shop, hook_receiver):
    _, token = shop
    emu_client.emu.result_bad_line = "huge-line"
    emu_client.emu.result_bad_line_at = 0
    job_id = _start(emu_client, token, orderCodes=data.order_code(1))
    job = _wait_done(emu_client, token, job_id, hook_receiver)

    inflate = zlib.decompressobj(31)
    longest = current = 0
    with emu_client.http.get(job["resultUrl"], stream=True, timeout=30) as result:
        for chunk in result.iter_content(1 << 16):
            *ended, rest = inflate.decompress(chunk).split(b"\n")
            for part in ended:
                longest = max(longest, current + len(part))
                current = 0
            current += len(rest)

    assert longest > HUGE_LINE_BYTES
    assert current == 0  # the file ends with a newline


def test_result_files_are_removed_when_they_expire_and_on_reset(
    emu_client, shop, hook_receiver
):
    _, token = shop
    first = _start(emu_client, token)
    _wait_done(emu_client, token, first, hook_receiver)
    second = _start(emu_client, token)
    _wait_done(emu_client, token, second, hook_receiver)
    paths = [Path(emu_client.emu.job(job_id).path) for job_id in (first, second)]
    assert all(path.is_file() for path in paths)

    emu_client.emu.expire_job_result(first)
    assert not paths[0].exists()
    assert paths[1].exists()
    emu_client.emu.reset()
    assert not paths[1].exists()


def test_change_time_from_exports_only_what_changed_since(
    emu_client, shop, hook_receiver
):
    eshop_id, token = shop
    emu_client.emu.add_orders(eshop_id, 5, history_days=10)  # orders 121..125
    since = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S%z")
    emu_client.emu.edit_order(eshop_id, data.order_code(122), paid=True)

    job_id = _start(emu_client, token, changeTimeFrom=since)
    job = _wait_done(emu_client, token, job_id, hook_receiver)
    lines = _lines(emu_client.http.get(job["resultUrl"], timeout=10).content)
    bad = emu_client.api(
        "GET", "/api/orders/snapshot", token, params={"changeTimeFrom": "today"}
    )

    # The 120 orders of the fixture were created now; of the 5 spread over 10 days
    # only the newest is within the day, and order 122 was edited.
    codes = {line["code"] for line in lines}
    assert len(codes) == 122
    assert {data.order_code(122), data.order_code(125)} <= codes
    assert data.order_code(121) not in codes
    assert bad.status_code == 400
