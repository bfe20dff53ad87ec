"""Template filters of the operators' console."""

from __future__ import annotations

import datetime as dt

from django import template
from django.utils import dateformat

from addon_project.formats.en.formats import DATETIME_FORMAT

register = template.Library()


def format_utc(value: dt.datetime | None, *, empty: str = "-") -> str:
    """`2026-12-01 04:15:09 UTC`: the one time format of the console; `empty` for None.

    Raises ValueError for a naive datetime: its zone is unknown, so no honest UTC time exists.
    """
    if value is None:
        return empty
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"cannot show a naive datetime as UTC: {value!r}")
    return dateformat.format(value.astimezone(dt.UTC), DATETIME_FORMAT)


@register.filter
def utc(value: dt.datetime | None) -> str:
    """`{{ when|utc }}`: see `format_utc`."""
    return format_utc(value)
