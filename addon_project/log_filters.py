"""Logging filters: request lines must not carry credentials from query strings."""

from __future__ import annotations

import logging
import re

# Shoptet sends install and settings-page codes as `?code=`; OAuth flows may add `access_token`.
_SECRET_QUERY_VALUE = re.compile(
    r"(?i)([?&](?:code|access_token|token|client_secret)=)[^&\s\"]*"
)


def redact(text: str) -> str:
    """Replace the values of secret-bearing query parameters with `[redacted]`."""
    return _SECRET_QUERY_VALUE.sub(r"\1[redacted]", text)


class RedactQuerySecrets(logging.Filter):
    """Rewrites a record's message so `?code=…` values never reach a log line (runserver's access log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
