"""The benchmark's chart: wall time against the physical limit, one pair of bars per scenario of
the measured variant, as an SVG written with the standard library (a plotting library would bring
numpy into the venv, and google-cloud-bigquery imports numpy when it is there: the workers' peak
RSS would no longer be the function's)."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from .harness import Measured

LABEL_WIDTH = 360  # the scenario names
PLOT_WIDTH = 420
NOTE_WIDTH = 190  # "12.34 s, 12.3x, 12 round trips"
ROW = 22
TOP = 44
TICKS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500)
WALL, LIMIT = "#1f77b4", "#c7c7c7"


def svg(rows: list[Measured], variant: str, title: str) -> str:
    """The chart of `rows` of `variant` that have a physical limit, on a logarithmic time axis."""
    shown = [r for r in rows if r.variant == variant and r.limit]
    low = min(TICKS[0], *(min(r.seconds, r.limit or r.seconds) for r in shown))
    high = max(1.0, *(max(r.seconds, r.limit or 0) for r in shown))
    span = math.log10(high) - math.log10(low)

    def x(seconds: float) -> float:
        return LABEL_WIDTH + PLOT_WIDTH * (math.log10(max(seconds, low)) - math.log10(low)) / span

    height = TOP + ROW * len(shown) + 30
    width = LABEL_WIDTH + PLOT_WIDTH + NOTE_WIDTH
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="8" y="16" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{LABEL_WIDTH}" y="24" width="10" height="10" fill="{WALL}"/>'
        f'<text x="{LABEL_WIDTH + 14}" y="33">wall time</text>'
        f'<rect x="{LABEL_WIDTH + 80}" y="24" width="10" height="10" fill="{LIMIT}"/>'
        f'<text x="{LABEL_WIDTH + 94}" y="33">physical limit (log scale, seconds)</text>',
    ]
    for tick in (t for t in TICKS if low <= t <= high):
        out.append(
            f'<line x1="{x(tick):.1f}" y1="{TOP - 4}" x2="{x(tick):.1f}" y2="{height - 24}" stroke="#eee"/>'
            f'<text x="{x(tick):.1f}" y="{height - 10}" text-anchor="middle">{tick:g}</text>'
        )
    for index, row in enumerate(shown):
        y = TOP + ROW * index
        out.append(
            f'<text x="{LABEL_WIDTH - 6}" y="{y + 14}" text-anchor="end">{escape(row.scenario)}</text>'
        )
        out.append(_bar(LABEL_WIDTH, y + 2, x(row.limit or low) - LABEL_WIDTH, 8, LIMIT))
        out.append(_bar(LABEL_WIDTH, y + 10, x(row.seconds) - LABEL_WIDTH, 8, WALL))
        note = f"{row.seconds:.2f} s, {row.over_limit:.1f}x"
        if row.round_trips is not None:
            note += f", {row.round_trips} round trip{'' if row.round_trips == 1 else 's'}"
        out.append(f'<text x="{LABEL_WIDTH + PLOT_WIDTH + 6}" y="{y + 14}">{note}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _bar(x: float, y: float, width: float, height: float, fill: str) -> str:
    return f'<rect x="{x:.1f}" y="{y}" width="{max(width, 1):.1f}" height="{height}" fill="{fill}"/>'


def write(path: Path, rows: list[Measured], variant: str, title: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg(rows, variant, title))
