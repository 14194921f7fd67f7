"""A small inline-SVG line chart: the loss curve without a matplotlib dependency.

The SVG goes into a ``widgets.HTML`` value, so it renders in any frontend that renders HTML and
is replaced whole on each epoch (a few hundred bytes; no incremental drawing needed).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 14, 28, 36  # margins: room for tick labels and the legend


def line_chart(
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    width: int = 420,
    height: int = 220,
    x_label: str = "epoch",
    y_label: str = "loss",
) -> str:
    """SVG of one polyline per ``(label, values)``; value i is drawn at x = i + 1 (the epoch).

    Non-finite values are skipped, so a NaN loss leaves a gap rather than breaking the scale.
    """
    n = max((len(values) for _, values in series), default=0)
    finite = [v for _, values in series for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if hi - lo < 1e-12:  # a flat curve still needs a visible range
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM

    def sx(i: float) -> float:
        return _LEFT + (plot_w * (i - 1) / (n - 1) if n > 1 else plot_w / 2)

    def sy(v: float) -> float:
        return _TOP + plot_h * (hi - v) / (hi - lo)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#999"/>',
    ]
    parts += _y_ticks(lo, hi, sy, width)
    parts += _x_ticks(n, sx, height)
    parts.append(
        f'<text x="{_LEFT + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">'
        f"{html.escape(x_label)}</text>"
    )
    parts.append(
        f'<text transform="translate(12,{_TOP + plot_h / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle">{html.escape(y_label)}</text>'
    )
    for k, (label, values) in enumerate(series):
        color = COLORS[k % len(COLORS)]
        points = [(sx(i + 1), sy(v)) for i, v in enumerate(values) if math.isfinite(v)]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(
            f'<polyline class="series" data-label="{html.escape(label)}" points="{coords}" '
            f'fill="none" stroke="{color}" stroke-width="2"/>'
        )
        # Markers, so a single epoch (one point, no line) is still visible.
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>' for x, y in points]
        lx = _LEFT + 8 + k * 130
        parts.append(
            f'<line x1="{lx}" y1="14" x2="{lx + 18}" y2="14" stroke="{color}" stroke-width="2"/>'
            f'<text x="{lx + 23}" y="18">{html.escape(label)}</text>'
        )
    if n == 0:
        parts.append(
            f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_TOP + plot_h / 2:.1f}" '
            'text-anchor="middle" fill="#999">waiting for the first epoch</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _y_ticks(
    lo: float, hi: float, sy: Callable[[float], float], width: int, count: int = 5
) -> list[str]:
    out = []
    for j in range(count):
        v = lo + (hi - lo) * j / (count - 1)
        y = sy(v)
        out.append(
            f'<line x1="{_LEFT - 4}" y1="{y:.1f}" x2="{width - _RIGHT}" y2="{y:.1f}" '
            'stroke="#eee"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{v:.3g}</text>'
        )
    return out


def _x_ticks(n: int, sx: Callable[[float], float], height: int, most: int = 10) -> list[str]:
    if n == 0:
        return []
    step = max(1, math.ceil(n / most))
    ticks = list(range(1, n + 1, step))
    ticks[-1] = n  # always label the latest epoch (replacing a neighbour that would overlap)
    y = height - _BOTTOM
    return [
        f'<line x1="{sx(i):.1f}" y1="{y}" x2="{sx(i):.1f}" y2="{y + 4}" stroke="#999"/>'
        f'<text x="{sx(i):.1f}" y="{y + 15}" text-anchor="middle">{i}</text>'
        for i in ticks
    ]
