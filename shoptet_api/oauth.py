"""Calls to Shoptet's partner OAuth server (`SHOPTET_OAUTH_URL`): one function per endpoint."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.views.decorators.debug import sensitive_variables

from shoptet_api.errors import (
    ShoptetInvalidResponse,
    error_from_response,
    request_id_of,
)
from shoptet_api.transport import OAUTH_MAX_ANSWER_BYTES, send
from shoptet_api.types import (
    MAX_TOKEN_LENGTH,
    ApiAccessToken,
    BasicEshop,
    OAuthGrant,
    ResponseShapeError,
    load_json,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

INSTALL_SETTINGS = (
    "SHOPTET_CLIENT_ID",
    "SHOPTET_CLIENT_SECRET",
    "SHOPTET_OAUTH_URL",
    "SHOPTET_REDIRECT_URI",
)


def missing_install_settings() -> list[str]:
    """Names of the settings an install needs that are empty."""
    return [name for name in INSTALL_SETTINGS if not getattr(settings, name)]


def _send(
    method: str, url: str, *, timeout: tuple[float, float], **kwargs: Any
) -> requests.Response:
    # OAuth answers are small: a token or who is logged in. Anything bigger is not one.
    return send(
        method, url, timeout=timeout, max_bytes=OAUTH_MAX_ANSWER_BYTES, **kwargs
    )


def _parse(response: requests.Response, *, endpoint: str) -> object:
    if response.status_code != 200:
        raise error_from_response(response, endpoint=endpoint)
    try:
        return load_json(response.content)
    except ResponseShapeError as exc:
        raise ShoptetInvalidResponse(
            f"the answer is {exc}",
            status_code=response.status_code,
            raw_body=response.text,
            endpoint=endpoint,
            request_id=request_id_of(response),
        ) from None


def _parse_as(
    response: requests.Response, shape: Callable[[Any], T], *, endpoint: str
) -> T:
    """A success answer parsed strictly into `shape`; a wrong shape is ShoptetInvalidResponse."""
    body = _parse(response, endpoint=endpoint)
    try:
        return shape(body)
    except ResponseShapeError as exc:
        raise ShoptetInvalidResponse(
            f"unexpected answer: {exc}", status_code=200, endpoint=endpoint
        ) from None


# Reference: https://developers.shoptet.com/api/documentation/installing-the-addon/
@sensitive_variables("code", "payload")
def exchange_code(*, code: str) -> OAuthGrant:
    """Exchange an install `code` for the e-shop's OAuth access token (no retry: codes are single-use)."""
    missing = missing_install_settings()
    if missing:
        raise ImproperlyConfigured(f"installs need {', '.join(missing)}")
    endpoint = "POST oauth/token"
    payload = {
        "client_id": settings.SHOPTET_CLIENT_ID,
        "client_secret": settings.SHOPTET_CLIENT_SECRET,
        "code": code,
        "grant_type": "authorization_code",
        "redirect_uri": settings.SHOPTET_REDIRECT_URI,
        "scope": "api",
    }
    # Shoptet waits at most 5 s for the whole install callback: the exchange, connection
    # included, ends within SHOPTET_INSTALL_READ_TIMEOUT (3 s) of wall-clock time whatever the
    # server does, which leaves room for the database.
    budget = settings.SHOPTET_INSTALL_READ_TIMEOUT
    response = _send(
        "POST",
        f"{settings.SHOPTET_OAUTH_URL}token",
        json=payload,
        timeout=(min(settings.SHOPTET_CONNECT_TIMEOUT, 1.0), budget),
        deadline=time.monotonic() + budget,
        endpoint=endpoint,
    )
    return _parse_as(response, OAuthGrant.from_json, endpoint=endpoint)


# Reference: https://developers.shoptet.com/api/documentation/getting-api-access-token/
@sensitive_variables("oauth_token")
def fetch_api_access_token(*, oauth_token: str) -> ApiAccessToken:
    """Mint a new API access token (`GET …/getAccessToken`); callers must respect the 5-token cap."""
    if not settings.SHOPTET_OAUTH_URL:
        raise ImproperlyConfigured("SHOPTET_OAUTH_URL is not set")
    endpoint = "GET oauth/getAccessToken"
    response = _send(
        "GET",
        f"{settings.SHOPTET_OAUTH_URL}getAccessToken",
        headers={"Authorization": f"Bearer {oauth_token}"},
        # Shorter than the renewal lock's lifetime, so a slow answer cannot outlive the lock.
        timeout=(settings.SHOPTET_CONNECT_TIMEOUT, settings.SHOPTET_TOKEN_READ_TIMEOUT),
        endpoint=endpoint,
    )
    return _parse_as(response, ApiAccessToken.from_json, endpoint=endpoint)


# --- Settings-page admin login, on the *customer* e-shop's OAuthServer --------------------------
# The base URL comes from /api/eshop urls[ident=oauth] of the installation the settings URL names,
# never from the request (a URL from the request would send our credentials wherever it points).


# Reference: https://developers.shoptet.com/api/documentation/eshop-verification-using-oauth/
@sensitive_variables("code", "payload", "token")
def exchange_admin_code(*, oauth_url: str, code: str, redirect_uri: str) -> str:
    """Exchange a settings-page `#OAUTH_CODE#` for a short-lived `basic_eshop` token."""
    endpoint = "POST admin-oauth/token"
    payload = {
        "client_id": settings.SHOPTET_CLIENT_ID,
        "client_secret": settings.SHOPTET_CLIENT_SECRET,
        "code": code,
        "grant_type": "authorization_code",
        "redirect_uri": redirect_uri,
        "scope": "basic_eshop",
    }
    response = _send(
        "POST",
        f"{oauth_url}token",
        json=payload,
        timeout=_admin_timeout(),
        endpoint=endpoint,
    )
    body = _parse(response, endpoint=endpoint)
    token = body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise ShoptetInvalidResponse(
            "unexpected token response: no access_token",
            status_code=200,
            endpoint=endpoint,
        )
    return token


# Reference: https://developers.shoptet.com/api/documentation/eshop-verification-using-oauth/
@sensitive_variables("token")
def get_basic_eshop(*, oauth_url: str, token: str) -> BasicEshop:
    """Who is logged in: `resource?method=getBasicEshop` with the `basic_eshop` token."""
    endpoint = "GET admin-oauth/getBasicEshop"
    response = _send(
        "GET",
        f"{oauth_url}resource",
        params={"method": "getBasicEshop"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=_admin_timeout(),
        endpoint=endpoint,
    )
    return _parse_as(response, BasicEshop.from_json, endpoint=endpoint)


def _admin_timeout() -> tuple[float, float]:
    # A person waits in the Shoptet admin: short, no retries.
    return (settings.SHOPTET_CONNECT_TIMEOUT, min(settings.SHOPTET_READ_TIMEOUT, 10.0))
