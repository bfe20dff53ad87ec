"""Shoptet's install callback: `GET /oauth/install/?code=…`."""

from __future__ import annotations

import hashlib
import logging
import re
import time

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_variables
from django.views.decorators.http import require_GET

from addon_project import logging_context, metrics
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

logger = logging.getLogger(__name__)

# Shoptet documents 255-character codes; allow headroom for a format change, refuse absurd sizes.
MAX_CODE_LENGTH = 512
# Printable ASCII without spaces: anything else cannot be a Shoptet code.
CODE_PATTERN = re.compile(r"[\x21-\x7e]+")
# OAuth errors that mean our own client configuration is wrong, not the merchant's code.
CLIENT_CONFIG_ERRORS = {"invalid_client", "unauthorized_client"}


def _result(request: HttpRequest, status: int, title: str, detail: str) -> HttpResponse:
    metrics.observe_install_request(status)
    return render(
        request,
        "oauth/install_result.html",
        {"title": title, "detail": detail, "ok": status == 200},
        status=status,
    )


def _fingerprint(code: str) -> str:
    """A short, irreversible tag for correlating logs about one code without logging the code."""
    return hashlib.sha256(code.encode()).hexdigest()[:12]


@never_cache
@sensitive_variables("code", "codes")
@require_GET
def install(request: HttpRequest) -> HttpResponse:
    """Exchange the code in this request and answer 200 only once the tenant is committed."""
    started = time.monotonic()
    networks = settings.SHOPTET_INSTALL_ALLOWED_NETWORKS
    if networks and not ip_in_networks(client_ip(request), networks):
        logger.warning(
            "install refused: source %s is not in SHOPTET_INSTALL_ALLOWED_NETWORKS",
            client_ip(request),
        )
        return _result(
            request, 403, "Forbidden", "This address may not call the install URL."
        )

    codes = request.GET.getlist("code")
    if len(codes) != 1:
        return _result(
            request, 400, "Bad request", "Exactly one `code` parameter is required."
        )
    code = codes[0]
    if not code:
        return _result(request, 400, "Bad request", "The `code` parameter is empty.")
    if len(code) > MAX_CODE_LENGTH:
        return _result(
            request,
            400,
            "Bad request",
            f"The `code` parameter is longer than {MAX_CODE_LENGTH} characters.",
        )
    if not CODE_PATTERN.fullmatch(code):
        return _result(
            request,
            400,
            "Bad request",
            "The `code` parameter contains invalid characters.",
        )

    missing = missing_install_settings()
    if missing:
        logger.error("install refused: %s not configured", ", ".join(missing))
        return _result(
            request,
            503,
            "Not configured",
            "This addon is not configured for installs yet.",
        )

    # Codes are single-use: check the database before spending the code on an exchange we could
    # not store. Shoptet then sees a failure and the merchant can simply install again.
    try:
        connection.ensure_connection()
    except DatabaseError:
        logger.exception("install refused: database unavailable before the exchange")
        return _result(
            request,
            503,
            "Unavailable",
            "The addon's database is unavailable; please try again.",
        )

    fingerprint = _fingerprint(code)
    try:
        eshop = install_addon(code=code)
    except ShoptetTimeoutError as exc:
        logger.error("install failed: code=%s %s", fingerprint, exc)
        return _result(
            request,
            504,
            "Gateway timeout",
            "Shoptet's OAuth server did not answer in time.",
        )
    except ShoptetConnectionError as exc:
        logger.error("install failed: code=%s %s", fingerprint, exc)
        return _result(
            request, 502, "Bad gateway", "Shoptet's OAuth server could not be reached."
        )
    except ShoptetOAuthError as exc:
        if exc.error_code in CLIENT_CONFIG_ERRORS:
            logger.error(
                "install failed: Shoptet rejected our client credentials: %s", exc
            )
            return _result(
                request,
                502,
                "Bad gateway",
                "Shoptet rejected this addon's client credentials.",
            )
        logger.warning(
            "install failed: code=%s Shoptet refused the code: %s", fingerprint, exc
        )
        return _result(
            request,
            400,
            "Installation refused",
            f"Shoptet refused the installation code ({exc.error_code}).",
        )
    except ShoptetInvalidResponse as exc:
        logger.error("install failed: code=%s %s", fingerprint, exc)
        return _result(
            request,
            502,
            "Bad gateway",
            "Shoptet's OAuth server sent an unexpected answer.",
        )
    except ShoptetAPIError as exc:
        logger.error("install failed: code=%s %s", fingerprint, exc)
        return _result(
            request,
            502,
            "Bad gateway",
            "Shoptet's OAuth server failed to process the installation.",
        )
    except DatabaseError:
        # The token exists at Shoptet but we could not store it; the install must not report success.
        logger.exception(
            "install failed: code=%s database error while storing the tenant",
            fingerprint,
        )
        return _result(
            request,
            503,
            "Unavailable",
            "The addon's database is unavailable; please try again.",
        )

    logging_context.bind(eshop_id=eshop.eshop_id)
    logger.info(
        "install ok: eshop_id=%s code=%s duration_ms=%d",
        eshop.eshop_id,
        fingerprint,
        (time.monotonic() - started) * 1000,
    )
    return _result(
        request,
        200,
        "Installed",
        f"The addon is installed for e-shop {eshop.eshop_id}.",
    )
