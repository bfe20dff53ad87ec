"""Hourly line charts as inline SVG, rendered on the server: no JavaScript, no CDN, no chart library.

An operator reads a trend from a picture: `hourly_chart()` draws one line per series over the hour
slots (oldest left, the current and still partial hour right, shaded), a y axis with round ticks,
hour labels in UTC, a legend with each series' total, and a hover title per hour with the exact
counts. Every text that reaches the SVG is escaped.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

# viewBox units; the SVG scales to its panel's width (console.css).
WIDTH = 440
HEIGHT = 200
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 30, 26
_COLOR = re.compile(r"#[0-9a-fA-F]{3}|#[0-9a-fA-F]{6}")


@dataclass(frozen=True)
class Series:
    """One line: its legend label, one count per hour, and a `#rgb` / `#rrggbb` colour."""

    label: str
    values: Sequence[int]
    color: str


def nice_scale(maximum: int) -> tuple[int, int]:
    """(top, step) of a y axis from 0 that holds `maximum`: integer steps of 1, 2 or 5 x 10^k, 2-5 ticks."""
    if maximum < 0:
        raise ValueError(f"counts are never negative, got a maximum of {maximum}")
    if maximum == 0:
        return 1, 1
    raw = maximum / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(1, round(step))
    return step * math.ceil(maximum / step), step


def hourly_chart(
    *, title: str, hours: Sequence[dt.datetime], series: Sequence[Series]
) -> SafeString:
    """An SVG line chart of `series` over the hour slots starting at `hours` (aware, oldest first)."""
    _check(hours, series)
    slots = len(hours)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot_w = plot_w / slots
    maximum = max((max(s.values, default=0) for s in series), default=0)
    top, step = nice_scale(maximum)

    def x(index: float) -> str:
        return f"{LEFT + (index + 0.5) * slot_w:.1f}"

    def y(value: float) -> str:
        return f"{TOP + plot_h - value / top * plot_h:.1f}"

    parts: list[SafeString] = [
        format_html("<title>{}</title>", title),
        format_html(
            "<desc>{}</desc>",
            "; ".join(f"{s.label}: {sum(s.values)} in {slots} h" for s in series),
        ),
        # The current hour is still being counted: shade it so a low last point reads as partial.
        format_html(
            '<rect class="chart-now" x="{}" y="{}" width="{}" height="{}" fill="#f3f4f6">'
            "<title>current hour (still counting)</title></rect>",
            f"{LEFT + (slots - 1) * slot_w:.1f}",
            TOP,
            f"{slot_w:.1f}",
            plot_h,
        ),
    ]
    for tick in range(0, top + 1, step):
        parts.append(
            format_html(
                '<line x1="{}" x2="{}" y1="{}" y2="{}" stroke="#d0d5dd" stroke-width="1"/>'
                '<text class="chart-tick" x="{}" y="{}" text-anchor="end" font-size="11" '
                'fill="#555">{}</text>',
                LEFT,
                WIDTH - RIGHT,
                y(tick),
                y(tick),
                LEFT - 6,
                f"{float(y(tick)) + 4:.1f}",
                tick,
            )
        )
    every = 1 if slots <= 8 else 3
    for index, start in enumerate(hours):
        utc_start = start.astimezone(dt.UTC)
        if utc_start.hour % every == 0 or slots <= 8:
            parts.append(
                format_html(
                    '<text class="chart-hour" x="{}" y="{}" text-anchor="middle" '
                    'font-size="11" fill="#555">{}</text>',
                    x(index),
                    HEIGHT - BOTTOM + 15,
                    f"{utc_start:%H}:00",
                )
            )
    for item in series:
        points = " ".join(f"{x(i)},{y(v)}" for i, v in enumerate(item.values))
        parts.append(
            format_html(
                '<polyline class="chart-line" points="{}" fill="none" stroke="{}" '
                'stroke-width="2" stroke-linejoin="round"/>',
                points,
                item.color,
            )
        )
        parts.extend(
            format_html(
                '<circle cx="{}" cy="{}" r="2.2" fill="{}"/>', x(i), y(v), item.color
            )
            for i, v in enumerate(item.values)
            if v
        )
    # Hover targets: one transparent column per hour with the exact counts.
    for index, start in enumerate(hours):
        utc_start = start.astimezone(dt.UTC)
        counts = ", ".join(f"{s.label} {s.values[index]}" for s in series)
        parts.append(
            format_html(
                '<rect class="chart-slot" x="{}" y="{}" width="{}" height="{}" '
                'fill="transparent"><title>{}</title></rect>',
                f"{LEFT + index * slot_w:.1f}",
                TOP,
                f"{slot_w:.1f}",
                plot_h,
                f"{utc_start:%Y-%m-%d %H}:00 to {(utc_start + dt.timedelta(hours=1)):%H}:00 UTC: "
                + counts,
            )
        )
    legend_x = LEFT
    for item in series:
        text = f"{item.label} ({sum(item.values)})"
        parts.append(
            format_html(
                '<rect x="{}" y="8" width="10" height="10" fill="{}"/>'
                '<text class="chart-legend" x="{}" y="17" font-size="12" fill="#333">{}</text>',
                legend_x,
                item.color,
                legend_x + 14,
                text,
            )
        )
        legend_x += 24 + 7 * len(text)
    if maximum == 0:
        parts.append(
            format_html(
                '<text class="chart-empty" x="{}" y="{}" text-anchor="middle" '
                'font-size="13" fill="#777">nothing counted in these {} hours</text>',
                f"{LEFT + plot_w / 2:.1f}",
                f"{TOP + plot_h / 2:.1f}",
                slots,
            )
        )
    return format_html(
        '<svg class="hourly-chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {} {}" '
        'role="img" aria-label="{}">{}</svg>',
        WIDTH,
        HEIGHT,
        title,
        format_html_join("", "{}", ((part,) for part in parts)),
    )


def _check(hours: Sequence[dt.datetime], series: Sequence[Series]) -> None:
    if not hours:
        raise ValueError("a chart needs at least one hour")
    if any(h.tzinfo is None or h.utcoffset() is None for h in hours):
        raise ValueError("hour starts must be timezone-aware")
    if not series:
        raise ValueError("a chart needs at least one series")
    for item in series:
        if len(item.values) != len(hours):
            raise ValueError(
                f"series {item.label!r} has {len(item.values)} values for {len(hours)} hours"
            )
        # type() rather than isinstance(): True is an int too, but no count.
        if any(type(v) is not int or v < 0 for v in item.values):
            raise ValueError(f"series {item.label!r} holds a value that is not a count")
        if not _COLOR.fullmatch(item.color):
            raise ValueError(
                f"series {item.label!r}: colour must be #rgb or #rrggbb, not {item.color!r}"
            )
