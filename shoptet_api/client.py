"""`ShoptetClient`: the per-tenant Shoptet API client (envelopes, tokens, retries, limits)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import requests
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from addon_project import metrics
from addon_project.logging_context import eshop_scoped
from shoptet_api import retry, verdicts
from shoptet_api.errors import (
    AddonNotInstalled,
    AddonSuspended,
    ProcessingPaused,
    ShoptetAPIError,
    ShoptetConnectionError,
    ShoptetForbidden,
    ShoptetInvalidResponse,
    ShoptetInvalidToken,
    ShoptetNotFound,
    ShoptetPartialSuccess,
    envelope_errors,
    error_from_response,
    request_id_of,
)
from shoptet_api.limiter import request_slot
from shoptet_api.tokens import get_api_access_token, invalidate_api_token
from shoptet_api.transport import Timeout, default_timeout, new_session, send
from shoptet_api.types import ResponseShapeError, load_json

if TYPE_CHECKING:
    from eshops.models import Eshop

logger = logging.getLogger(__name__)

# --- The per-tenant API client -------------------------------------------------------------------

# Safe to repeat after a 5xx or a dropped answer. Not POST, and not PATCH: some Shoptet PATCHes are
# relative (a stock movement's `amountChange`), so repeating one could apply it twice.
# How often a long-lived client re-reads its tenant's status from the database.
STATE_RECHECK_SECONDS = 10.0
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})
# Numeric ids, order codes and GUIDs in paths: collapsed so missing-rights records stay per endpoint.
_PATH_ID = re.compile(r"/(?=[^/]*\d)[^/]+")


def endpoint_label(method: str, path: str) -> str:
    """`GET /api/orders/2024000123` → `GET /api/orders/{id}`: a secret-free, low-cardinality label."""
    return f"{method} {_PATH_ID.sub('/{id}', path.split('?', 1)[0])}"


class Pages:
    """Items across all pages of a list endpoint; `total_count_changed` tells whether the list moved.

    Shoptet pages with `page` (from 1) and `itemsPerPage`. If `paginator.totalCount` changes during
    the walk, items may have shifted between pages (skipped or seen twice): we log it and flag it.
    """

    def __init__(
        self,
        client: ShoptetClient,
        path: str,
        params: dict[str, Any] | None,
        items_key: str | None,
    ) -> None:
        self.client = client
        self.path = path
        self.params = dict(params or {})
        self.items_key = items_key
        self.total_count: int | None = None
        self.total_count_changed = False
        self.pages_read = 0

    def __iter__(self) -> Iterator[Any]:
        params = dict(self.params)
        page = int(params.pop("page", 1))
        self.total_count, self.total_count_changed, self.pages_read = None, False, 0
        while True:
            try:
                data = self.client.get(self.path, params={**params, "page": page})
            except ShoptetNotFound as exc:
                if page > 1 and exc.error_code == "page-not-found":
                    # The list shrank under us: the pages we counted on are gone.
                    self._changed(page, "fewer pages than announced")
                    return
                raise
            if not isinstance(data, dict) or not isinstance(
                data.get("paginator"), dict
            ):
                raise ShoptetInvalidResponse(
                    "list answer has no paginator", status_code=200, endpoint=self.path
                )
            paginator = data["paginator"]
            self.pages_read += 1
            total = paginator.get("totalCount")
            if self.total_count is None:
                self.total_count = total
            elif total != self.total_count:
                self._changed(page, f"totalCount {self.total_count} -> {total}")
                self.total_count = total
            yield from self._items(data)
            if page >= int(paginator.get("pageCount") or 0):
                return
            page += 1

    def _changed(self, page: int, what: str) -> None:
        logger.warning(
            "eshop_id=%s %s: list changed mid-walk at page %s (%s); items may be skipped or repeated",
            self.client.eshop.eshop_id,
            self.path,
            page,
            what,
        )
        self.total_count_changed = True

    def _items(self, data: dict[str, Any]) -> list[Any]:
        if self.items_key is not None:
            items = data.get(self.items_key)
        else:
            lists = [
                value
                for key, value in data.items()
                if key != "paginator" and isinstance(value, list)
            ]
            if len(lists) != 1:
                raise ShoptetInvalidResponse(
                    "cannot tell which key holds the items; pass items_key",
                    endpoint=self.path,
                )
            items = lists[0]
        if not isinstance(items, list):
            raise ShoptetInvalidResponse(
                f"{self.items_key!r} is not a list", endpoint=self.path
            )
        return items


class ShoptetClient:
    """Calls the Shoptet API for one e-shop; methods return the envelope's `data`.

    Handles tokens (renew once on 401), 403 rights records, backoff on 423/429/5xx/network errors
    (bounded by attempts and total time), the shared 3-in-flight limit and bucket pacing. Every
    failure is a `ShoptetAPIError` subclass.
    """

    def __init__(
        self,
        eshop: Eshop,
        *,
        max_attempts: int | None = None,
        max_time: float | None = None,
        timeout: Timeout | None = None,
    ) -> None:
        self.eshop = eshop
        self.max_attempts = max_attempts or settings.SHOPTET_RETRY_MAX_ATTEMPTS
        self.max_time = (
            max_time if max_time is not None else settings.SHOPTET_RETRY_MAX_TIME
        )
        self.timeout = timeout or default_timeout()
        self.base_url = settings.SHOPTET_API_URL.rstrip("/")
        self._state_checked_at = time.monotonic()
        self.session = new_session()
        self.session.headers.update(
            {
                "Content-Type": "application/json",
                "Accept": "application/json",
            }
        )

    def __repr__(self) -> str:
        return f"<ShoptetClient eshop_id={self.eshop.eshop_id}>"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ShoptetClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Any:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Any:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Any:
        return self.request("DELETE", path, **kwargs)

    def paginate(
        self,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        items_key: str | None = None,
    ) -> Pages:
        """Iterate the items of every page of a list endpoint (see `Pages`)."""
        return Pages(self, path, params, items_key)

    @eshop_scoped
    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        max_attempts: int | None = None,
        max_time: float | None = None,
        timeout: Timeout | None = None,
    ) -> Any:
        """Send one API call with the retry policy; return `data` or raise a `ShoptetAPIError`.

        A 200 whose `errors` list is not empty (multi-record writes that skipped rows) raises
        `ShoptetPartialSuccess`, which still carries `data`.
        """
        method = method.upper()
        if not path.startswith("/api/"):
            # Never send the tenant's token anywhere but the configured API host.
            raise ValueError(f"path must start with /api/, got {path[:80]!r}")
        label = endpoint_label(method, path)
        attempts = max_attempts or self.max_attempts
        budget = self.max_time if max_time is None else max_time
        timeout = timeout or self.timeout
        started = time.monotonic()
        deadline = started + budget
        renewed = False
        attempt = 0
        while True:
            attempt += 1
            self._refuse_inactive_tenant()
            outcome = self._attempt(
                method,
                path,
                label,
                params=params,
                json=json,
                timeout=timeout,
                deadline=deadline,
            )
            if not isinstance(outcome, ShoptetAPIError):
                return outcome
            error = outcome
            if isinstance(error, ShoptetInvalidToken) and not renewed:
                # Expired or revoked token: it was dropped; retry at once with a fresh one. A
                # second 401 raises.
                logger.info(
                    "eshop_id=%s %s: %s; renewing token and retrying once",
                    self.eshop.eshop_id,
                    label,
                    error.error_code,
                )
                metrics.observe_api_retry(error)
                renewed = True
                attempt -= 1
                continue
            if not error.retryable:
                raise error
            wait = retry.client_wait(error, attempt)
            if attempt >= attempts or time.monotonic() + wait > deadline:
                logger.warning(
                    "eshop_id=%s %s: giving up after %s attempts: %s",
                    self.eshop.eshop_id,
                    label,
                    attempt,
                    error,
                )
                raise error
            metrics.observe_api_retry(error)
            logger.info(
                "eshop_id=%s %s: %s; retry %s in %.2f s",
                self.eshop.eshop_id,
                label,
                error,
                attempt,
                wait,
            )
            retry.sleep(wait)

    # --- internals ---

    def _attempt(
        self,
        method: str,
        path: str,
        label: str,
        *,
        params: dict[str, Any] | None,
        json: Any,
        timeout: Timeout,
        deadline: float,
    ) -> Any:
        """One try: the envelope's data, or the error to decide on (returned, not raised).

        Errors that must not be retried for this method come back as non-retryable, so the
        loop above has one rule: retry what is retryable.
        """
        # A failure to get a token ends the request, whatever its kind: retrying here would call
        # getAccessToken again, and one request mints at most once (a burst of OAuth-server 5xx must
        # not turn into a burst of mints). The caller's own retry (a task's backoff) comes later.
        token = get_api_access_token(self.eshop)
        try:
            response = self._send_once(
                method,
                path,
                token,
                label,
                params=params,
                json=json,
                timeout=timeout,
                deadline=deadline,
            )
        except ShoptetConnectionError as exc:
            if exc.request_sent and method not in IDEMPOTENT_METHODS:
                raise  # it may have been applied; repeating a POST could do it twice
            return exc
        if 200 <= response.status_code < 300:
            return self._data(response, label)
        error = error_from_response(response, endpoint=label)
        if isinstance(error, ShoptetInvalidToken):
            invalidate_api_token(self.eshop, token)
            return error
        self._record(error, label)
        if response.status_code >= 500 and method not in IDEMPOTENT_METHODS:
            raise error  # a 5xx after a POST may still have applied it
        return error

    def _refuse_inactive_tenant(self) -> None:
        now = time.monotonic()
        if (
            not self.eshop._state.adding  # unsaved tenants (benchmarks) have no row to re-read
            and now - self._state_checked_at > STATE_RECHECK_SECONDS
        ):
            # A long sync job must notice a suspend, uninstall or operator pause that happened
            # after it loaded the tenant.
            self.eshop.refresh_from_db(
                fields=["status", "processing_paused_at", "processing_paused_by"]
            )
            self._state_checked_at = now
        refusal = self.eshop.api_refusal
        if refusal == "paused":
            raise ProcessingPaused(
                f"e-shop {self.eshop.eshop_id}: API calls paused by operator {self.eshop.processing_paused_by or '?'}"
            )
        if refusal == self.eshop.Status.SUSPENDED:
            raise AddonSuspended(
                f"e-shop {self.eshop.eshop_id} is suspended; API calls are stopped"
            )
        if refusal is not None:
            raise AddonNotInstalled(
                f"e-shop {self.eshop.eshop_id} is {refusal}; API calls are stopped"
            )

    @sensitive_variables("token")
    def _send_once(
        self,
        method: str,
        path: str,
        token: str,
        label: str,
        *,
        params: dict[str, Any] | None,
        json: Any,
        timeout: Timeout,
        deadline: float,
    ) -> requests.Response:
        eshop_id = self.eshop.eshop_id
        with request_slot(
            eshop_id, deadline=deadline, lease_seconds=timeout[0] + timeout[1] + 5
        ) as slot:
            sent_at = time.monotonic()
            try:
                response = send(
                    method,
                    f"{self.base_url}{path}",
                    params=params,
                    json=json,
                    headers={"Shoptet-Access-Token": token},
                    timeout=timeout,
                    endpoint=label,
                    session=self.session,
                )
            except ShoptetConnectionError:
                metrics.observe_api_call(label, "error", time.monotonic() - sent_at)
                raise
            metrics.observe_api_call(
                label, response.status_code, time.monotonic() - sent_at
            )
            slot.bucket_filling = response.headers.get("X-RateLimit-Bucket-Filling")
        logger.debug(
            "eshop_id=%s %s -> %s in %d ms request_id=%s",
            eshop_id,
            label,
            response.status_code,
            (time.monotonic() - sent_at) * 1000,
            response.headers.get("X-Request-ID"),
            extra={"shoptet_request_id": response.headers.get("X-Request-ID")},
        )
        for header in ("X-Shoptet-Deprecated", "Sunset"):
            if header in response.headers:
                logger.warning(
                    "eshop_id=%s %s: %s: %.200s",
                    eshop_id,
                    label,
                    header,
                    response.headers[header],
                )
        return response

    def _data(self, response: requests.Response, label: str) -> Any:
        if response.status_code == 204 or not response.content:
            return None
        try:
            body = load_json(response.content)
        except ResponseShapeError as exc:
            raise ShoptetInvalidResponse(
                f"the answer is {exc}",
                status_code=response.status_code,
                raw_body=response.text,
                endpoint=label,
                request_id=request_id_of(response),
            ) from None
        if not isinstance(body, dict):
            raise ShoptetInvalidResponse(
                "the answer is not an envelope",
                status_code=response.status_code,
                endpoint=label,
            )
        errors = envelope_errors(body)
        if errors:
            raise ShoptetPartialSuccess(
                f"{len(errors)} item(s) failed",
                status_code=response.status_code,
                error_code=errors[0].get("errorCode"),
                errors=errors,
                request_id=request_id_of(response, body),
                body=body,
                endpoint=label,
                data=body.get("data"),
            )
        return body.get("data")

    def _record(self, error: ShoptetAPIError, label: str) -> None:
        if isinstance(error, ShoptetForbidden):
            logger.warning(
                "eshop_id=%s %s: no rights (%s); recorded for operators",
                self.eshop.eshop_id,
                label,
                error.error_code,
                extra={"shoptet_request_id": error.request_id},
            )
            self.eshop.record_missing_right(label)
        else:
            verdicts.apply_verdict(self.eshop, error)
