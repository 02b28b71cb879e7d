"""Server-rendered SVG charts for the dashboard: no JavaScript, no library, no inline style.

Every value drawn is a number or a date; text still goes through ``format_html`` so nothing can
inject markup. Colours come from classes (``series-0`` …) styled in ``static/operators/operators.css``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from chat.operators.dashboard import DayStats

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 28, 28

Format = Callable[[float], str]


@dataclass(frozen=True)
class Chart:
    title: str
    svg: SafeString


def _number(value: float) -> str:
    return f"{value:,.0f}"


def _percent(value: float) -> str:
    return f"{value * 100:.0f}%"


def _ms(value: float) -> str:
    return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"


def _frame(days: Sequence[date], top: float, fmt: Format, title: str, legend: Sequence[str]) -> list[SafeString]:
    """Gridlines with their labels, the first/middle/last day, the legend."""
    parts = [format_html('<title>{}</title>', title)]
    for fraction in (0, 0.5, 1):
        y = _y(top * fraction, top)
        parts.append(format_html(
            '<line class="grid" x1="{}" x2="{}" y1="{}" y2="{}"/><text class="axis" x="{}" y="{}" '
            'text-anchor="end">{}</text>', LEFT, WIDTH - RIGHT, y, y, LEFT - 6, y + 4, fmt(top * fraction)
        ))
    for index in sorted({0, len(days) // 2, len(days) - 1}):
        parts.append(format_html(
            '<text class="axis" x="{}" y="{}" text-anchor="middle">{}</text>',
            _x(index, len(days)), HEIGHT - 8, days[index].strftime("%b %d"),
        ))
    for index, name in enumerate(legend):
        parts.append(format_html(
            '<text class="legend series-{}" x="{}" y="16">■ {}</text>', index, LEFT + index * 130, name
        ))
    return parts


def _x(index: int, count: int) -> float:
    step = (WIDTH - LEFT - RIGHT) / max(count, 1)
    return round(LEFT + step * (index + 0.5), 1)


def _y(value: float, top: float) -> float:
    return round(HEIGHT - BOTTOM - (value / top if top else 0) * (HEIGHT - TOP - BOTTOM), 1)


def _svg(title: str, parts: list[SafeString]) -> SafeString:
    body = mark_safe("".join(parts))  # noqa: S308 - each part was built by format_html
    return format_html(
        '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">{}</svg>',
        WIDTH, HEIGHT, title, body,
    )


def bar_chart(*, title: str, days: Sequence[date], values: Sequence[float], fmt: Format = _number) -> SafeString:
    top = max([*values, 1])
    width = max((WIDTH - LEFT - RIGHT) / max(len(days), 1) - 2, 1)
    parts = _frame(days, top, fmt, title, [])
    parts.append(format_html_join("", (
        '<rect class="bar series-0" x="{}" y="{}" width="{}" height="{}"><title>{}: {}</title></rect>'
    ), (
        (round(_x(i, len(days)) - width / 2, 1), _y(v, top), round(width, 1), round(_y(0, top) - _y(v, top), 1),
         day.isoformat(), fmt(v))
        for i, (day, v) in enumerate(zip(days, values, strict=True))
    )))
    return _svg(title, parts)


def line_chart(
    *, title: str, days: Sequence[date], series: Sequence[tuple[str, Sequence[float | None]]],
    fmt: Format = _number, top: float | None = None,
) -> SafeString:
    """One line per series; a day without a value breaks the line rather than drawing a zero."""
    top = top or max([value for _, values in series for value in values if value is not None] + [1])
    parts = _frame(days, top, fmt, title, [name for name, _ in series])
    for number, (name, values) in enumerate(series):
        for segment in _segments(values):
            points = " ".join(f"{_x(i, len(days))},{_y(values[i] or 0, top)}" for i in segment)
            parts.append(format_html('<polyline class="line series-{}" points="{}"/>', number, points))
        parts.append(format_html_join("", (
            '<circle class="dot series-{}" cx="{}" cy="{}" r="3"><title>{} {}: {}</title></circle>'
        ), (
            (number, _x(i, len(days)), _y(value, top), name, days[i].isoformat(), fmt(value))
            for i, value in enumerate(values) if value is not None
        )))
    return _svg(title, parts)


def _segments(values: Sequence[float | None]) -> list[list[int]]:
    segments: list[list[int]] = [[]]
    for index, value in enumerate(values):
        if value is None:
            segments.append([])
        else:
            segments[-1].append(index)
    return [segment for segment in segments if len(segment) > 1]


def dashboard_charts(stats: Sequence[DayStats]) -> list[Chart]:
    days = [day.day for day in stats]
    charts = [
        ("Conversations per day", bar_chart(
            title="Conversations per day", days=days, values=[day.conversations for day in stats])),
        ("Outcomes (share of the day's conversations)", line_chart(
            title="Outcomes", days=days, fmt=_percent, top=1.0, series=[
                ("verified", [day.verified_share for day in stats]),
                ("answered", [day.answered_share for day in stats]),
                ("fallback", [day.fallback_share for day in stats]),
                ("error", [day.error_share for day in stats]),
            ])),
        ("Model reply time", line_chart(
            title="Model reply time", days=days, fmt=_ms, series=[
                ("median", [day.reply_median_ms for day in stats]),
                ("95th percentile", [day.reply_p95_ms for day in stats]),
            ])),
        ("Tokens per day", bar_chart(title="Tokens per day", days=days, values=[day.tokens for day in stats])),
    ]
    return [Chart(title, svg) for title, svg in charts]
