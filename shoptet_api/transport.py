"""The one outbound-HTTP choke point to Shoptet: pooled sessions, timeouts, transport errors.

`shoptet_api.client` (the API) and `shoptet_api.oauth` (the OAuth servers) both send through here;
no other module imports `requests` for Shoptet.
"""

from __future__ import annotations

import threading
from typing import Any

import requests
import urllib3.exceptions
from django.conf import settings

from shoptet_api.errors import ShoptetConnectionError, ShoptetTimeoutError

USER_AGENT = "shoptet-addon-platform/0.1 (+python-requests)"

Timeout = tuple[float, float]

_local = threading.local()


def http_session() -> requests.Session:
    """A pooled `requests.Session` per thread (Sessions are not documented as thread-safe)."""
    session: requests.Session | None = getattr(_local, "session", None)
    if session is None:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        # Never pick up proxies or .netrc credentials from the environment for Shoptet calls.
        session.trust_env = False
        _local.session = session
    return session


def default_timeout() -> Timeout:
    return (settings.SHOPTET_CONNECT_TIMEOUT, settings.SHOPTET_READ_TIMEOUT)


def send(
    method: str,
    url: str,
    *,
    timeout: Timeout,
    endpoint: str,
    session: requests.Session | None = None,
    **kwargs: Any,
) -> requests.Response:
    """Send one request; transport failures become `ShoptetConnectionError`/`ShoptetTimeoutError`.

    `endpoint` is a short, secret-free label ("POST oauth/token") used in errors and logs; the URL
    itself may carry query parameters and is never logged.
    """
    try:
        return (session or http_session()).request(
            method, url, timeout=timeout, allow_redirects=False, **kwargs
        )
    except requests.ConnectTimeout:
        raise ShoptetTimeoutError(
            f"no connection within {timeout[0]:g} s",
            endpoint=endpoint,
            request_sent=False,
        ) from None
    except requests.Timeout:
        raise ShoptetTimeoutError(
            f"no answer within {timeout[1]:g} s", endpoint=endpoint
        ) from None
    except requests.RequestException as exc:
        # The exception text can contain the URL; keep only its class name.
        raise ShoptetConnectionError(
            f"connection failed ({type(exc).__name__})",
            endpoint=endpoint,
            request_sent=not _never_connected(exc),
        ) from None


def _never_connected(exc: requests.RequestException) -> bool:
    """True when the failure happened before any byte of the request left (safe to repeat a POST)."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(
        reason,
        urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError,
    )
