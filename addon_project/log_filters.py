"""Logging filters: request lines must not carry credentials from query strings."""

from __future__ import annotations

import logging
import re

# Shoptet sends install and settings-page codes as `?code=`; OAuth flows may add `access_token`;
# `s` is our settings-page session.
_SECRET_QUERY_VALUE = re.compile(
    r"(?i)([?&](?:code|access_token|token|client_secret|s)=)[^&\s\"]*"
)


def redact(text: str) -> str:
    """Replace the values of secret-bearing query parameters with `[redacted]`."""
    return _SECRET_QUERY_VALUE.sub(r"\1[redacted]", text)


class RedactQuerySecrets(logging.Filter):
    """Rewrites a record's message so `?code=…` values never reach a log line (runserver's access log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (
            Exception
        ):  # a malformed log call is the handler's to report, not the caller's crash
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
