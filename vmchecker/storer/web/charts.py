"""Small charts drawn on the server as inline SVG: a histogram of grades and a line of
one account's grades over its submissions.

The pages carry no script (the Content-Security-Policy allows none) and no inline
style: an SVG's shapes take their colours from classes in ``style.css``. Every word in
a chart (labels, titles) is escaped. Each bar and point also carries its numbers in
``data-`` attributes, so a test (or a reader of the source) needs no pixel arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

from vmchecker.penalty import format_points

WIDTH, HEIGHT = 360, 150      # the drawing's own units (it scales with the page)
MARGIN_TOP, MARGIN_BOTTOM, MARGIN_SIDE = 16, 22, 8
MAX_BINS = 10


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    count: int

    @property
    def label(self) -> str:
        return f"{format_points(self.low)}–{format_points(self.high)}"


def grade_bins(grades: Sequence[float], top: float) -> list[Bin]:
    """Counts of ``grades`` in equal ranges from 0 to ``top``: one point wide while
    ``top`` is at most :data:`MAX_BINS` (else ``top / MAX_BINS``); each range holds its
    low end, the last one ``top`` too."""
    top = max(float(top), 1.0)
    n = max(1, min(MAX_BINS, math.ceil(top)))
    width = top / n
    counts = [0] * n
    for grade in grades:
        counts[min(n - 1, max(0, int(grade // width)))] += 1
    return [Bin(round(i * width, 6), round((i + 1) * width, 6), c) for i, c in enumerate(counts)]


def _attrs(**values: object) -> Markup:
    """``name="value"`` pairs, escaped; ``cls`` is ``class``, ``data_x`` is ``data-x``."""
    names = {k: "class" if k == "cls" else k.replace("_", "-") for k in values}
    return Markup(" ").join(Markup(f'{names[k]}="{escape(str(v))}"') for k, v in values.items())


def histogram(bins: Sequence[Bin], title: str) -> Markup:
    """A bar per range, its count above it and its range below."""
    inner_w = WIDTH - 2 * MARGIN_SIDE
    inner_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    most = max((b.count for b in bins), default=0) or 1
    slot = inner_w / max(len(bins), 1)
    parts = [Markup(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart histogram" viewBox="0 0 {WIDTH} {HEIGHT}"'
                    ' role="img" ') + _attrs(aria_label=title) + Markup(">"),
             Markup("<title>") + escape(title) + Markup("</title>"),
             Markup(f'<line class="axis" x1="{MARGIN_SIDE}" y1="{HEIGHT - MARGIN_BOTTOM}"'
                    f' x2="{WIDTH - MARGIN_SIDE}" y2="{HEIGHT - MARGIN_BOTTOM}"/>')]
    for i, b in enumerate(bins):
        h = inner_h * b.count / most
        x = MARGIN_SIDE + i * slot
        y = HEIGHT - MARGIN_BOTTOM - h
        centre = x + slot / 2
        parts.append(Markup("<rect ") + _attrs(cls="bar", x=f"{x + 2:.1f}", y=f"{y:.1f}", width=f"{slot - 4:.1f}",
                                                height=f"{h:.1f}", data_count=b.count, data_range=b.label)
                     + Markup("><title>") + escape(f"{b.label}: {b.count}") + Markup("</title></rect>"))
        if b.count:
            parts.append(Markup("<text ") + _attrs(cls="count", x=f"{centre:.1f}", y=f"{y - 3:.1f}")
                         + Markup(">") + escape(str(b.count)) + Markup("</text>"))
        parts.append(Markup("<text ") + _attrs(cls="tick", x=f"{centre:.1f}", y=HEIGHT - 6)
                     + Markup(">") + escape(b.label) + Markup("</text>"))
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


@dataclass(frozen=True)
class Point:
    label: str           # when (the upload time)
    value: float | None  # the grade; None: not graded (error, waiting)


def grade_line(points: Sequence[Point], top: float, title: str) -> Markup:
    """The grades in upload order, joined by a line; an ungraded submission is a gap
    marked on the axis."""
    top = max(float(top), 1.0)
    inner_w = WIDTH - 2 * MARGIN_SIDE
    inner_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    step = inner_w / max(len(points) - 1, 1)
    base = HEIGHT - MARGIN_BOTTOM
    parts = [Markup(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart history" viewBox="0 0 {WIDTH} {HEIGHT}"'
                    ' role="img" ') + _attrs(aria_label=title) + Markup(">"),
             Markup("<title>") + escape(title) + Markup("</title>"),
             Markup(f'<line class="axis" x1="{MARGIN_SIDE}" y1="{base}" x2="{WIDTH - MARGIN_SIDE}" y2="{base}"/>'),
             Markup(f'<line class="axis top" x1="{MARGIN_SIDE}" y1="{MARGIN_TOP}" x2="{WIDTH - MARGIN_SIDE}"'
                    f' y2="{MARGIN_TOP}"/>'),
             Markup("<text ") + _attrs(cls="tick", x=MARGIN_SIDE, y=MARGIN_TOP - 4) + Markup(">")
             + escape(format_points(top)) + Markup("</text>")]
    run: list[str] = []
    dots = []
    for i, p in enumerate(points):
        x = MARGIN_SIDE + (i * step if len(points) > 1 else inner_w / 2)
        if p.value is None:
            if len(run) > 1:
                parts.append(Markup('<polyline class="line" points="') + escape(" ".join(run)) + Markup('"/>'))
            run = []
            dots.append(Markup("<rect ") + _attrs(cls="gap", x=f"{x - 3:.1f}", y=base - 3, width=6, height=6)
                        + Markup("><title>") + escape(f"{p.label}: not graded") + Markup("</title></rect>"))
            continue
        y = base - inner_h * min(max(p.value, 0.0), top) / top
        run.append(f"{x:.1f},{y:.1f}")
        dots.append(Markup("<circle ") + _attrs(cls="point", cx=f"{x:.1f}", cy=f"{y:.1f}", r=3,
                                                data_grade=format_points(p.value))
                    + Markup("><title>") + escape(f"{p.label}: {format_points(p.value)}") + Markup("</title></circle>"))
    if len(run) > 1:
        parts.append(Markup('<polyline class="line" points="') + escape(" ".join(run)) + Markup('"/>'))
    parts.extend(dots)
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)
