"""Shoptet's install callback: `GET /oauth/install/?code=…`."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_GET

from addon_project import logging_context, metrics, redis_keys, throttle
from addon_project.client_ip import client_ip, ip_in_networks
from oauth.services import install_addon
from shoptet_api.errors import (
    ShoptetAPIError,
    ShoptetConnectionError,
    ShoptetInvalidResponse,
    ShoptetOAuthError,
    ShoptetTimeoutError,
)
from shoptet_api.oauth import missing_install_settings
from shoptet_api.types import CODE_PATTERN, MAX_CODE_LENGTH

logger = logging.getLogger(__name__)

# OAuth errors that mean our own client configuration is wrong, not the merchant's code.
CLIENT_CONFIG_ERRORS = {"invalid_client", "unauthorized_client"}


@dataclasses.dataclass
class Refused(Exception):
    """An install that ends before the tenant is stored: the page to answer and the log line."""

    status: int
    title: str
    detail: str
    log: str = ""  # empty: not logged (a bad request is the caller's problem)
    level: int = logging.ERROR
    retry_after: int | None = None


# Each error the install may meet → the answer Shoptet sees. The first matching class wins, so
# subclasses come before their bases. The detail is shown; the log line adds the exception.
FAILURES: list[tuple[type[Exception], Refused]] = [
    (
        ShoptetTimeoutError,
        Refused(
            504, "Gateway timeout", "Shoptet's OAuth server did not answer in time."
        ),
    ),
    (
        ShoptetConnectionError,
        Refused(502, "Bad gateway", "Shoptet's OAuth server could not be reached."),
    ),
    (
        ShoptetInvalidResponse,
        Refused(
            502, "Bad gateway", "Shoptet's OAuth server sent an unexpected answer."
        ),
    ),
    (
        ShoptetAPIError,
        Refused(
            502,
            "Bad gateway",
            "Shoptet's OAuth server failed to process the installation.",
        ),
    ),
    # The token may exist at Shoptet but could not be stored: the install must not report success.
    (
        DatabaseError,
        Refused(
            503, "Unavailable", "The addon's database is unavailable; please try again."
        ),
    ),
]
CLIENT_REJECTED = Refused(
    502, "Bad gateway", "Shoptet rejected this addon's client credentials."
)


def _refusal(exc: Exception) -> Refused:
    if isinstance(exc, Refused):
        return exc
    if isinstance(exc, ShoptetOAuthError):
        if exc.error_code in CLIENT_CONFIG_ERRORS:
            return CLIENT_REJECTED
        # error_code is clipped and made printable by the exception itself.
        detail = f"Shoptet refused the installation code ({exc.error_code})."
        return Refused(400, "Installation refused", detail, level=logging.WARNING)
    return next(refused for cls, refused in FAILURES if isinstance(exc, cls))


@never_cache
@sensitive_variables("code")
@require_GET
def install(request: HttpRequest) -> HttpResponse:
    """Exchange the code in this request and answer 200 only once the tenant is committed."""
    started, code = time.monotonic(), ""
    try:
        code = _checked_code(request)
        _throttle(request)
        _check_database()
        eshop = install_addon(code=code)
    except (Refused, ShoptetAPIError, DatabaseError) as exc:
        refused = _refusal(exc)
        if not isinstance(exc, Refused) or refused.log:
            tag = f"code={_fingerprint(code)} " if code else ""
            logger.log(
                refused.level,
                "install failed: %s%s",
                tag,
                refused.log or exc,
                exc_info=isinstance(exc, DatabaseError),
            )
        return _result(request, refused)
    logging_context.bind(eshop_id=eshop.eshop_id)
    logger.info(
        "install ok: eshop_id=%s code=%s duration_ms=%d",
        eshop.eshop_id,
        _fingerprint(code),
        (time.monotonic() - started) * 1000,
    )
    detail = f"The addon is installed for e-shop {eshop.eshop_id}."
    return _result(request, Refused(200, "Installed", detail))


@sensitive_variables("codes")
def _checked_code(request: HttpRequest) -> str:
    """The one well-formed `code`; refuses everything that cannot be Shoptet's install call."""
    networks = settings.SHOPTET_INSTALL_ALLOWED_NETWORKS
    if networks and not ip_in_networks(client_ip(request), networks):
        log = f"source {client_ip(request)} is not in SHOPTET_INSTALL_ALLOWED_NETWORKS"
        raise Refused(
            403,
            "Forbidden",
            "This address may not call the install URL.",
            log,
            logging.WARNING,
        )
    codes = request.GET.getlist("code")
    if len(codes) != 1:
        raise Refused(400, "Bad request", "Exactly one `code` parameter is required.")
    if not codes[0]:
        raise Refused(400, "Bad request", "The `code` parameter is empty.")
    if len(codes[0]) > MAX_CODE_LENGTH:
        detail = f"The `code` parameter is longer than {MAX_CODE_LENGTH} characters."
        raise Refused(400, "Bad request", detail)
    if not CODE_PATTERN.fullmatch(codes[0]):
        raise Refused(
            400, "Bad request", "The `code` parameter contains invalid characters."
        )
    missing = missing_install_settings()
    if missing:
        log = f"{', '.join(missing)} not configured"
        raise Refused(
            503, "Not configured", "This addon is not configured for installs yet.", log
        )
    return codes[0]


def _throttle(request: HttpRequest) -> None:
    """At most THROTTLE_INSTALL_PER_ADDRESS exchanges per source: each one spends our credentials."""
    source = throttle.source_subject(client_ip(request))
    wait = throttle.hit(
        {
            redis_keys.throttle_key(
                "install", source
            ): settings.THROTTLE_INSTALL_PER_ADDRESS
        },
        what="install",
    )
    if wait is not None:
        log = f"throttled: source {source}, retry in {wait} s"
        raise Refused(
            429,
            "Too many requests",
            "Too many install attempts from this address; please try again later.",
            log,
            logging.WARNING,
            wait,
        )


def _check_database() -> None:
    # Codes are single-use: check the database before spending the code on an exchange we could
    # not store. Shoptet then sees a failure and the merchant can simply install again.
    try:
        connection.ensure_connection()
    except DatabaseError as exc:
        log = f"database unavailable before the exchange ({type(exc).__name__})"
        raise Refused(
            503,
            "Unavailable",
            "The addon's database is unavailable; please try again.",
            log,
        ) from None


def _fingerprint(code: str) -> str:
    """A short, irreversible tag for correlating logs about one code without logging the code."""
    return hashlib.sha256(code.encode()).hexdigest()[:12]


def _result(request: HttpRequest, result: Refused) -> HttpResponse:
    metrics.observe_install_request(result.status)
    response = render(
        request,
        "oauth/install_result.html",
        {"title": result.title, "detail": result.detail, "ok": result.status == 200},
        status=result.status,
    )
    if result.retry_after is not None:
        response["Retry-After"] = str(result.retry_after)
    return response
