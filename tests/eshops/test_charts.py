"""The dashboard's server-rendered SVG charts: scale, labels, totals, empty data, escaping, bad input."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import pytest

from eshops import charts
from eshops.charts import Series, hourly_chart, nice_scale

SVG = "{http://www.w3.org/2000/svg}"
START = dt.datetime(2026, 12, 1, 0, tzinfo=dt.UTC)
HOURS = [START + dt.timedelta(hours=n) for n in range(24)]


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # noqa: S314 - our own output, parsed to prove it is well-formed


def texts(root: ET.Element, css_class: str) -> list[str]:
    return [
        el.text or "" for el in root.iter(f"{SVG}text") if el.get("class") == css_class
    ]


@pytest.mark.parametrize(
    ("maximum", "scale"),
    [
        (0, (1, 1)),
        (1, (1, 1)),
        (3, (3, 1)),
        (7, (8, 2)),
        (10, (10, 5)),
        (97, (100, 50)),
        (1234, (1500, 500)),
    ],
)
def test_nice_scale_uses_whole_steps_of_1_2_or_5(
    maximum: int, scale: tuple[int, int]
) -> None:
    assert nice_scale(maximum) == scale


def test_nice_scale_refuses_a_negative_maximum() -> None:
    with pytest.raises(ValueError, match="never negative"):
        nice_scale(-1)


def test_chart_draws_one_line_per_series_with_legend_totals_and_utc_hours() -> None:
    received = [n % 5 for n in range(24)]
    failed = [1 if n == 20 else 0 for n in range(24)]

    root = parse(
        hourly_chart(
            title="Webhooks per hour",
            hours=HOURS,
            series=[
                Series("received", received, "#2563eb"),
                Series("failed", failed, "#dc2626"),
            ],
        )
    )

    lines = list(root.iter(f"{SVG}polyline"))
    assert [line.get("stroke") for line in lines] == ["#2563eb", "#dc2626"]
    assert all(len(line.get("points", "").split()) == 24 for line in lines)
    assert texts(root, "chart-legend") == [f"received ({sum(received)})", "failed (1)"]
    assert texts(root, "chart-hour") == [f"{h:02d}:00" for h in range(0, 24, 3)]
    assert texts(root, "chart-tick") == ["0", "1", "2", "3", "4"]
    assert root.findtext(f"{SVG}title") == "Webhooks per hour"
    assert root.get("role") == "img"


def test_chart_puts_the_maximum_at_the_top_and_zero_on_the_axis() -> None:
    values = [0] * 23 + [8]

    root = parse(
        hourly_chart(title="t", hours=HOURS, series=[Series("x", values, "#000")])
    )

    [line] = root.iter(f"{SVG}polyline")
    ys = [float(point.split(",")[1]) for point in line.get("points", "").split()]
    assert ys[-1] == charts.TOP
    assert ys[0] == charts.HEIGHT - charts.BOTTOM


def test_hour_slots_carry_the_exact_counts_as_hover_titles() -> None:
    hours = HOURS[:3]

    root = parse(
        hourly_chart(
            title="t",
            hours=hours,
            series=[
                Series("calls", [4, 0, 9], "#111"),
                Series("429", [1, 0, 2], "#222"),
            ],
        )
    )

    titles = [
        slot.findtext(f"{SVG}title")
        for slot in root.iter(f"{SVG}rect")
        if slot.get("class") == "chart-slot"
    ]
    assert titles == [
        "2026-12-01 00:00 to 01:00 UTC: calls 4, 429 1",
        "2026-12-01 01:00 to 02:00 UTC: calls 0, 429 0",
        "2026-12-01 02:00 to 03:00 UTC: calls 9, 429 2",
    ]
    # Few hours: every one is labelled.
    assert texts(root, "chart-hour") == ["00:00", "01:00", "02:00"]


def test_hours_are_labelled_in_utc_whatever_zone_they_come_in() -> None:
    prague = dt.timezone(dt.timedelta(hours=1))
    hours = [h.astimezone(prague) for h in HOURS[:2]]

    root = parse(
        hourly_chart(title="t", hours=hours, series=[Series("x", [1, 2], "#000")])
    )

    assert texts(root, "chart-hour") == ["00:00", "01:00"]


def test_an_empty_chart_says_nothing_was_counted() -> None:
    root = parse(
        hourly_chart(title="t", hours=HOURS, series=[Series("x", [0] * 24, "#000")])
    )

    assert texts(root, "chart-empty") == ["nothing counted in these 24 hours"]
    assert texts(root, "chart-tick") == ["0", "1"]
    assert not list(root.iter(f"{SVG}circle"))


def test_chart_escapes_every_text() -> None:
    svg = hourly_chart(
        title='<script>alert("t")</script>',
        hours=HOURS[:1],
        series=[Series("a & <b>", [1], "#000")],
    )

    assert "<script>" not in svg
    root = parse(svg)
    assert root.findtext(f"{SVG}title") == '<script>alert("t")</script>'
    assert texts(root, "chart-legend") == ["a & <b> (1)"]


@pytest.mark.parametrize(
    ("hours", "series", "message"),
    [
        ([], [Series("x", [], "#000")], "at least one hour"),
        ([dt.datetime(2026, 12, 1)], [Series("x", [1], "#000")], "timezone-aware"),  # noqa: DTZ001
        (HOURS[:1], [], "at least one series"),
        (HOURS[:2], [Series("x", [1], "#000")], "1 values for 2 hours"),
        (HOURS[:1], [Series("x", [-1], "#000")], "not a count"),
        (HOURS[:1], [Series("x", [True], "#000")], "not a count"),
        (HOURS[:1], [Series("x", [1.5], "#000")], "not a count"),  # type: ignore[list-item]
        (HOURS[:1], [Series("x", [1], "red;stroke:url(x)")], "colour"),
    ],
)
def test_chart_refuses_bad_input_with_a_clear_error(
    hours: list[dt.datetime], series: list[Series], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        hourly_chart(title="t", hours=hours, series=series)
