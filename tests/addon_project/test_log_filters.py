"""Access-log lines never carry install codes or tokens from query strings."""

from __future__ import annotations

import logging

import pytest

from addon_project.log_filters import RedactQuerySecrets, redact


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '"GET /oauth/install/?code=abc123 HTTP/1.1" 200',
            '"GET /oauth/install/?code=[redacted] HTTP/1.1" 200',
        ),
        (
            "/settings/?eshopId=5&lang=cs&code=XYZ&x=1",
            "/settings/?eshopId=5&lang=cs&code=[redacted]&x=1",
        ),
        ("/cb?access_token=t0k&CODE=c", "/cb?access_token=[redacted]&CODE=[redacted]"),
        ("/oauth/install/?zipcode=12345", "/oauth/install/?zipcode=12345"),
    ],
)
def test_redact_hides_secret_query_values(line: str, expected: str) -> None:
    assert redact(line) == expected


def test_filter_rewrites_formatted_records() -> None:
    record = logging.LogRecord(
        "django.server",
        logging.INFO,
        __file__,
        1,
        '"%s" %s',
        ("GET /oauth/install/?code=s3cret HTTP/1.1", 200),
        None,
    )

    assert RedactQuerySecrets().filter(record) is True
    assert "s3cret" not in record.getMessage()
    assert "code=[redacted]" in record.getMessage()


def test_settings_session_is_redacted_too() -> None:
    assert (
        redact("GET /settings/page/?s=abc:def&saved=1")
        == "GET /settings/page/?s=[redacted]&saved=1"
    )


def test_a_malformed_log_call_does_not_raise_at_the_caller() -> None:
    record = logging.LogRecord(
        "x", logging.WARNING, __file__, 1, "two %s %s", ("only-one",), None
    )

    assert RedactQuerySecrets().filter(record) is True
