"""Every error the Shoptet seam raises, and the one function that maps an answer to one of them.

Retry code asks `exc.retryable`; nothing else decides. No message, str() or repr() ever contains a
token, a client secret or request headers.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import re
from typing import Any, ClassVar

import requests

from shoptet_api.types import ResponseShapeError, load_json

logger = logging.getLogger(__name__)

# How much of an unexpected body an exception keeps for operators.
RAW_BODY_LIMIT = 2000
# How much of a code (`error`, `errorCode`), request id and message the other side sent is kept.
CODE_LIMIT = 100
MESSAGE_LIMIT = 500


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters (marked with …) and with control characters replaced."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return (
        text
        if text.isprintable()
        else "".join(char if char.isprintable() else "?" for char in text)
    )


class ShoptetAPIError(Exception):
    """Base class; `status_code` is None when no response arrived."""

    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str = "",
        *,
        status_code: int | None = None,
        error_code: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        request_id: str | None = None,
        body: Any = None,
        raw_body: str = "",
        endpoint: str | None = None,
        retry_after: dt.datetime | None = None,
    ) -> None:
        # Codes, messages and ids come from the other side: bounded and printable before they
        # reach a log line or a page (a 100 kB `error` must not be reflected whole).
        message = clip(message, MESSAGE_LIMIT)
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_code = None if error_code is None else clip(error_code, CODE_LIMIT)
        self.errors = errors or []
        self.request_id = None if request_id is None else clip(request_id, CODE_LIMIT)
        self.body = body
        self.raw_body = raw_body[:RAW_BODY_LIMIT]
        self.endpoint = endpoint
        # When trying again makes sense (429 `Retry-After`, or the next free token slot).
        self.retry_after = retry_after

    def __str__(self) -> str:
        parts = []
        if self.status_code is not None:
            parts.append(f"HTTP {self.status_code}")
        if self.endpoint:
            parts.append(self.endpoint)
        head = " ".join(parts)
        detail = (
            f"{self.error_code}: {self.message}" if self.error_code else self.message
        )
        text = f"{head}: {detail}" if head and detail else head or detail
        if self.request_id:
            text += f" (request id {self.request_id})"
        return text

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status_code={self.status_code!r}, "
            f"error_code={self.error_code!r}, request_id={self.request_id!r})"
        )


# --- Transport: no response arrived ---------------------------------------------------------


class ShoptetConnectionError(ShoptetAPIError):
    """DNS, connect or read failure: no answer from Shoptet.

    `request_sent` is False only when the connection was never made, so even a POST is safe to repeat.
    """

    retryable = True

    def __init__(
        self, message: str = "", *, request_sent: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(message, **kwargs)
        self.request_sent = request_sent


class ShoptetTimeoutError(ShoptetConnectionError):
    """Shoptet did not answer within the timeout."""


class ShoptetInvalidResponse(ShoptetAPIError):
    """Shoptet answered, but not in the documented shape (not JSON, missing fields)."""

    retryable = True


# --- OAuth servers (`{"error": ...}` bodies) ---------------------------------------------------


class ShoptetOAuthError(ShoptetAPIError):
    """An OAuth server said no: bad or used code, bad client, revoked OAuth token."""


class ShoptetMaxTokensReached(ShoptetOAuthError):
    """`maximum_tokens_reached`: five API tokens are valid already. Reuse one; never mint around it."""

    retryable = True


class AddonNotInstalled(ShoptetOAuthError):
    """`addon_not_installed`: the e-shop removed the addon. Permanent."""


class AddonSuspended(ShoptetOAuthError):
    """`addon_suspended`, or the API's "Addon installation is not approved.". Permanent until approve."""


class ProcessingPaused(ShoptetAPIError):
    """An operator paused API calls and jobs for this e-shop (refused locally; nothing was sent)."""


# --- The REST API (`{data, errors, metadata}` envelopes) -----------------------------------------


class ShoptetBadRequest(ShoptetAPIError):
    """400, 409, 413, 422: the request itself is wrong; retrying it changes nothing."""


class ShoptetInvalidToken(ShoptetAPIError):
    """401 `expired-token` / `invalid-token`: get a fresh API token and retry once."""


class ShoptetForbidden(ShoptetAPIError):
    """403 `invalid-token-no-rights` / `missing-module`: the e-shop did not approve this endpoint."""


class ShoptetNotFound(ShoptetAPIError):
    """404: wrong endpoint, or the entity in the URL does not exist."""


class ShoptetLocked(ShoptetAPIError):
    """423: the same write URL is being processed (at most 5 s)."""

    retryable = True


class ShoptetRateLimited(ShoptetAPIError):
    """429: connection limit or full leaky bucket; `retry_after` is when to try again."""

    retryable = True


class ShoptetPartialSuccess(ShoptetAPIError):
    """A 2xx whose `errors` list is not empty: some records were skipped. `data` holds what succeeded."""

    def __init__(self, message: str = "", *, data: Any = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.data = data


class ShoptetServerError(ShoptetAPIError):
    """5xx: a Shoptet-side failure or maintenance."""

    retryable = True


_OAUTH_ERRORS: dict[str, type[ShoptetOAuthError]] = {
    "maximum_tokens_reached": ShoptetMaxTokensReached,
    "addon_not_installed": AddonNotInstalled,
    "addon_suspended": AddonSuspended,
}

_API_STATUS_ERRORS: dict[int, type[ShoptetAPIError]] = {
    400: ShoptetBadRequest,
    401: ShoptetInvalidToken,
    403: ShoptetForbidden,
    404: ShoptetNotFound,
    409: ShoptetBadRequest,
    413: ShoptetBadRequest,
    422: ShoptetBadRequest,
    423: ShoptetLocked,
    429: ShoptetRateLimited,
}

# Shoptet (reference §7): an API `invalid-token` with this message means the addon is suspended
# or not yet approved, not that the token expired. Renewing would not help.
ADDON_NOT_APPROVED_MESSAGE = "addon installation is not approved"


# Plain seconds: ASCII digits only, at most five (~28 h); anything longer is not a retry hint.
_SECONDS = re.compile(r"[0-9]{1,5}")


def _http_date(value: str) -> dt.datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def parse_retry_after(
    value: str | None, *, date: str | None = None
) -> dt.datetime | None:
    """Parse `Retry-After` into a moment on *our* clock.

    Shoptet sends an HTTP date (plain seconds are tolerated too). The date is on Shoptet's clock, so
    it is measured against the answer's own `Date` header and the difference is added to our now:
    a wrong clock on either side does not turn "in 20 s" into "now" or "in an hour".
    """
    if not value:
        return None
    value = value.strip()
    now = dt.datetime.now(tz=dt.UTC)
    if _SECONDS.fullmatch(value):
        return now + dt.timedelta(seconds=int(value))
    parsed = _http_date(value)
    if parsed is None:
        logger.warning("unparseable Retry-After header ignored: %.60r", value)
        return None
    sent_at = _http_date(date.strip()) if date else None
    if sent_at is None:
        return parsed
    return now + (parsed - sent_at)


def _json_or_none(response: requests.Response) -> Any:
    try:
        return load_json(response.content)
    except ResponseShapeError:
        return None


def request_id_of(response: requests.Response, body: Any = None) -> str | None:
    """Shoptet's request id: `metadata.requestId`, else the `X-Request-ID` header."""
    if isinstance(body, dict):
        metadata = body.get("metadata")
        if (
            isinstance(metadata, dict)
            and isinstance(metadata.get("requestId"), str)
            and metadata["requestId"]
        ):
            return str(metadata["requestId"])
    return response.headers.get("X-Request-ID")


def envelope_errors(body: Any) -> list[dict[str, Any]]:
    """The `errors` list of an envelope, as sent (only dict items kept)."""
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        return [item for item in body["errors"] if isinstance(item, dict)]
    return []


def error_from_response(
    response: requests.Response, *, endpoint: str | None = None
) -> ShoptetAPIError:
    """Map a non-success answer from an OAuth server or the API to its exception class.

    The provider's own code decides first (`error` from OAuth servers, the first `errorCode` from
    the API); the HTTP status is the fallback, because Shoptet does not document the statuses of
    its addon errors.
    """
    body = _json_or_none(response)
    status = response.status_code
    common: dict[str, Any] = {
        "status_code": status,
        "request_id": request_id_of(response, body),
        "body": body,
        "raw_body": response.text if body is None else "",
        "endpoint": endpoint,
    }

    # OAuth servers: {"error": "...", "error_description": "..."}
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code = body["error"]
        description = body.get("error_description")
        message = description if isinstance(description, str) else code
        if code in _OAUTH_ERRORS:
            return _OAUTH_ERRORS[code](message, error_code=code, **common)
        if status >= 500:
            # The OAuth server failed (e.g. `server_error`); that is not a refusal.
            return ShoptetServerError(message, error_code=code, **common)
        return ShoptetOAuthError(message, error_code=code, **common)

    errors = envelope_errors(body)
    first = errors[0] if errors else {}
    error_code = (
        first.get("errorCode") if isinstance(first.get("errorCode"), str) else None
    )
    message = first.get("message") if isinstance(first.get("message"), str) else ""
    if not message:
        message = response.reason or f"HTTP {status}"
    kwargs = {**common, "error_code": error_code, "errors": errors}

    if error_code == "invalid-token" and ADDON_NOT_APPROVED_MESSAGE in message.lower():
        return AddonSuspended(message, **kwargs)
    if status >= 500:
        return ShoptetServerError(message, **kwargs)
    if status == 429:
        return ShoptetRateLimited(
            message,
            retry_after=parse_retry_after(
                response.headers.get("Retry-After"), date=response.headers.get("Date")
            ),
            **kwargs,
        )
    api_cls = _API_STATUS_ERRORS.get(status, ShoptetAPIError)
    return api_cls(message, **kwargs)
