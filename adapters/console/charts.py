"""Charts drawn on the server as inline SVG: geometry computed here, drawn by
``_charts.html`` with presentation attributes only (the console's Content-Security-Policy
allows no inline style or script, and nothing is fetched from the internet).

- :func:`histogram`: a distribution (turnaround seconds) as bars.
- :func:`lines`: one series per finding code and vendor over months (positive rate), with
  marks where an alert was raised (drift).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

WIDTH, HEIGHT = 560, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 10, 34
#: Colours of the series, in order (readable on white, distinct for colour-blind eyes).
PALETTE = ("#1f5fa8", "#c0392b", "#1e7a3c", "#9a6200", "#6b3fa0", "#0f7c8c")


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    count: int


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    colour: str
    points: str
    """``x,y x,y …`` for a polyline."""
    dots: tuple[tuple[float, float, str], ...]
    marks: tuple[tuple[float, float, str], ...] = ()
    """Alert marks: x, y and what the alert said."""


@dataclass(frozen=True, slots=True)
class Chart:
    width: int = WIDTH
    height: int = HEIGHT
    bars: tuple[Bar, ...] = ()
    series: tuple[Series, ...] = ()
    x_labels: tuple[tuple[float, str], ...] = ()
    y_labels: tuple[tuple[float, str], ...] = ()
    empty: bool = False
    axis: dict[str, float] = field(default_factory=dict)


def _axis() -> dict[str, float]:
    return {"x0": LEFT, "x1": WIDTH - RIGHT, "y0": HEIGHT - BOTTOM, "y1": TOP}


def _seconds(value: float) -> str:
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def histogram(values: Sequence[float], bins: int = 12) -> Chart:
    """Bars of how many ``values`` fall in each of ``bins`` equal ranges."""
    if not values:
        return Chart(empty=True, axis=_axis())
    low, high = min(values), max(values)
    step = (high - low) / bins or 1.0
    counts = [0] * bins
    for v in values:
        counts[min(int((v - low) / step), bins - 1)] += 1
    top = max(counts)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    width = plot_w / bins
    bars = tuple(
        Bar(
            x=LEFT + i * width + 1,
            y=TOP + plot_h * (1 - c / top),
            width=width - 2,
            height=plot_h * c / top,
            label=f"{_seconds(low + i * step)}–{_seconds(low + (i + 1) * step)}",
            count=c,
        )
        for i, c in enumerate(counts)
    )
    x_labels = tuple(
        (LEFT + i * width, _seconds(low + i * step)) for i in range(0, bins + 1, max(1, bins // 4))
    )
    y_labels = ((TOP, str(top)), (TOP + plot_h, "0"))
    return Chart(bars=bars, x_labels=x_labels, y_labels=y_labels, axis=_axis())


def lines(
    months: Sequence[str],
    series: Mapping[str, Mapping[str, float | None]],
    marks: Mapping[str, Mapping[str, str]] | None = None,
) -> Chart:
    """One line per series (name → month → value from 0 to 1) over ``months``; ``marks``
    (name → month → text) are drawn as red rings on the line."""
    if not months or not series:
        return Chart(empty=True, axis=_axis())
    values = [v for s in series.values() for v in s.values() if v is not None]
    top = max(0.05, math.ceil(max(values, default=0.05) * 20) / 20)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(1, len(months) - 1)

    def x(i: int) -> float:
        return LEFT + (i * step if len(months) > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    drawn = []
    for n, (name, by_month) in enumerate(sorted(series.items())):
        dots = tuple(
            (round(x(i), 1), round(y(v), 1), f"{m}: {v:.1%}")
            for i, m in enumerate(months)
            if (v := by_month.get(m)) is not None
        )
        flagged = (marks or {}).get(name, {})
        rings = tuple(
            (round(x(i), 1), round(y(by_month.get(m) or 0.0), 1), flagged[m])
            for i, m in enumerate(months)
            if m in flagged
        )
        drawn.append(
            Series(
                name=name,
                colour=PALETTE[n % len(PALETTE)],
                points=" ".join(f"{dx},{dy}" for dx, dy, _ in dots),
                dots=dots,
                marks=rings,
            )
        )
    x_labels = tuple((x(i), m) for i, m in enumerate(months))
    y_labels = ((y(top), f"{top:.0%}"), (y(top / 2), f"{top / 2:.0%}"), (y(0), "0%"))
    return Chart(series=tuple(drawn), x_labels=x_labels, y_labels=y_labels, axis=_axis())
