"""What one webhook delivery costs the receiver, counted (never timed): SQL statements and columns.

The receiver is the hottest path Shoptet drives (bench/ingest.py measures it under gunicorn);
these counts keep it from growing back: one SELECT of the few columns verification needs, one
INSERT that also deduplicates, nothing else on the request's clock.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from pytest_django import DjangoCaptureOnCommitCallbacks

from eshops.models import Eshop
from shoptet_api.models import WebhookEvent

pytestmark = pytest.mark.django_db

RECEIVER = "/webhooks/shoptet/"
KEY = "a1" * 20


def delivery(eshop: Eshop, instance: str) -> tuple[bytes, str]:
    body = json.dumps(
        {
            "eshopId": eshop.eshop_id,
            "event": "order:create",
            "eventCreated": timezone.now().strftime("%Y-%m-%dT%H:%M:%S%z"),
            "eventInstance": instance,
        }
    ).encode()
    return body, hmac.new(KEY.encode(), body, hashlib.sha1).hexdigest()


def post(client: Client, body: bytes, signature: str) -> Any:
    return client.post(
        RECEIVER,
        data=body,
        content_type="application/json",
        HTTP_SHOPTET_WEBHOOK_SIGNATURE=signature,
    )


@pytest.fixture
def keyed(eshop_factory: Callable[..., Eshop]) -> Eshop:
    return eshop_factory(webhook_signature_key=KEY)


def test_a_new_delivery_costs_one_select_and_one_insert(
    client: Client,
    keyed: Eshop,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    body, signature = delivery(keyed, "2026000001")
    with (
        CaptureQueriesContext(connection) as queries,
        django_capture_on_commit_callbacks() as callbacks,
    ):
        response = post(client, body, signature)

    assert response.status_code == 200
    assert response.json() == {"status": "accepted"}
    statements = [query["sql"] for query in queries.captured_queries]
    assert len(statements) == 2, statements
    select, insert = statements
    # The tenant's OAuth token and JSON columns are neither fetched nor decrypted.
    assert select.startswith("SELECT")
    assert "oauth_access_token" not in select
    assert '"webhooks"' not in select
    assert insert.startswith("INSERT")
    assert "ON CONFLICT" in insert
    # One task queued, after the row is committed.
    assert len(callbacks) == 1
    row = WebhookEvent.objects.get()
    assert row.raw_body == body.decode()
    assert row.status == WebhookEvent.Status.RECEIVED
    assert row.received_at is not None
    assert row.headers["Shoptet-Webhook-Signature"] == signature


def test_a_redelivery_writes_nothing_and_queues_nothing(
    client: Client,
    keyed: Eshop,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    body, signature = delivery(keyed, "2026000002")
    with django_capture_on_commit_callbacks(execute=False):
        assert post(client, body, signature).json() == {"status": "accepted"}
    first = WebhookEvent.objects.get()

    with (
        CaptureQueriesContext(connection) as queries,
        django_capture_on_commit_callbacks() as callbacks,
    ):
        response = post(client, body, signature)

    assert response.json() == {"status": "duplicate"}
    assert (
        len(queries.captured_queries) == 3
    )  # lookup, insert that did nothing, read back
    assert callbacks == []
    assert list(WebhookEvent.objects.values_list("pk", flat=True)) == [first.pk]


def test_a_wrong_signature_reads_the_tenant_and_writes_nothing(
    client: Client, keyed: Eshop
) -> None:
    body, _ = delivery(keyed, "2026000003")
    with CaptureQueriesContext(connection) as queries:
        response = post(client, body, "0" * 40)

    assert response.status_code == 401
    assert [query["sql"].split()[0] for query in queries.captured_queries] == ["SELECT"]
    assert not WebhookEvent.objects.exists()
