"""A small inline-SVG line chart (training curves, the monitor's plots) and a strip of flags
(the monitor's drift flags per feature over time), without a plotting dependency.

The SVG goes into a ``widgets.HTML`` value (or a static HTML output), so it renders in any front
end that renders HTML and is replaced whole on each update (a few kilobytes; no incremental
drawing needed). Axes get round tick values (1, 2, 2.5 or 5 times a power of ten) and evenly
spaced x ticks.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")
_LEFT, _RIGHT, _TOP, _BOTTOM = 58, 14, 28, 36  # margins: room for tick labels and the legend
_NICE_STEPS = (1.0, 2.0, 2.5, 5.0, 10.0)


def nice_step(span: float, most: int) -> float:
    """The smallest round step (1, 2, 2.5, 5 × 10^k) that cuts ``span`` into ≤ ``most`` parts."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / max(most, 1)
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in _NICE_STEPS if m * power >= raw * (1 - 1e-9))


def nice_ticks(lo: float, hi: float, most: int = 5) -> list[float]:
    """Round values covering [lo, hi]: the first at or below lo, the last at or above hi."""
    step = nice_step(hi - lo, most)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


_SUFFIXES = ((1e9, "G"), (1e6, "M"), (1e3, "k"))


def tick_label(value: float, step: float) -> str:
    """As many decimals as the step needs: 0.25 → "0.25", 2.0 → "2", 1500 → "1500"; large
    values with a suffix (2500000 → "2.5M", 25000 → "25k") and tiny steps in scientific notation
    (0.00025 → "2.5e-04"), so a label never outgrows the margin."""
    if abs(value) >= 1e4 or step >= 1e4:
        if value == 0:
            return "0"
        scale, suffix = next((s, x) for s, x in _SUFFIXES if max(abs(value), step) >= s)
        return tick_label(value / scale, step / scale) + suffix
    if 0 < step < 1e-3:
        return "0" if value == 0 else f"{value:.1e}"
    exponent = math.floor(math.log10(step) + 1e-9) if step > 0 else 0
    mantissa = step / 10**exponent if step > 0 else 1.0
    decimals = max(0, -exponent) + (1 if exponent <= 0 and abs(mantissa - 2.5) < 1e-6 else 0)
    text = f"{value:.{decimals}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def line_chart(
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    x_values: Sequence[float] | None = None,
    width: int = 420,
    height: int = 220,
    x_label: str = "epoch",
    y_label: str = "loss",
    empty: str = "waiting for the first epoch",
    y_min: float | None = None,
) -> str:
    """SVG of one polyline per ``(label, values)``. Value i is drawn at ``x_values[i]``, or at
    x = i + 1 (the epoch) without them. Non-finite values are skipped, so a NaN loss leaves a
    gap rather than breaking the scale. ``y_min``: the axis never goes below it (a rate or a
    latency is never negative, even when a flat curve is padded)."""
    n = max((len(values) for _, values in series), default=0)
    xs = list(x_values) if x_values is not None else [float(i + 1) for i in range(n)]
    finite = [v for _, values in series for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if hi - lo < 1e-12:  # a flat curve still needs a visible range
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    if y_min is not None and lo < y_min:
        lo, hi = y_min, max(hi, y_min + 1e-9)
    y_ticks = nice_ticks(lo, hi)
    lo, hi = y_ticks[0], y_ticks[-1]
    x_lo, x_hi = (min(xs[:n]), max(xs[:n])) if n else (0.0, 1.0)
    plot_w, plot_h = width - _LEFT - _RIGHT, height - _TOP - _BOTTOM

    def sx(x: float) -> float:
        return _LEFT + (plot_w * (x - x_lo) / (x_hi - x_lo) if x_hi > x_lo else plot_w / 2)

    def sy(v: float) -> float:
        return _TOP + plot_h * (hi - v) / (hi - lo)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
        'stroke="#999"/>',
    ]
    parts += _y_ticks(y_ticks, sy, width)
    if n:
        parts += _x_ticks(x_lo, x_hi, sx, height, integers=x_values is None)
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
        points = [(sx(xs[i]), sy(v)) for i, v in enumerate(values) if math.isfinite(v)]
        coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(
            f'<polyline class="series" data-label="{html.escape(label)}" points="{coords}" '
            f'fill="none" stroke="{color}" stroke-width="2"/>'
        )
        # Markers, so a single point (no line) is still visible; many points need none.
        if len(points) <= 60:
            parts += [
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>' for x, y in points
            ]
        lx = _LEFT + 8 + k * 130
        parts.append(
            f'<line x1="{lx}" y1="14" x2="{lx + 18}" y2="14" stroke="{color}" stroke-width="2"/>'
            f'<text x="{lx + 23}" y="18">{html.escape(label)}</text>'
        )
    if n == 0:
        parts.append(
            f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_TOP + plot_h / 2:.1f}" '
            f'text-anchor="middle" fill="#999">{html.escape(empty)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _y_ticks(ticks: list[float], sy: Callable[[float], float], width: int) -> list[str]:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    out = []
    for v in ticks:
        y = sy(v)
        out.append(
            f'<line x1="{_LEFT - 4}" y1="{y:.1f}" x2="{width - _RIGHT}" y2="{y:.1f}" '
            'stroke="#eee"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick_label(v, step)}</text>'
        )
    return out


def _x_ticks(
    lo: float,
    hi: float,
    sx: Callable[[float], float],
    height: int,
    *,
    integers: bool,
    most: int = 10,
) -> list[str]:
    """Evenly spaced ticks: every epoch up to ``most`` of them, else every 2nd, 5th, 10th...;
    round values inside [lo, hi] for a continuous axis."""
    if integers:
        step = 1.0
        while (hi - lo) / step + 1 > most:  # whole epochs: 1, 2, 5, 10, 20, 50, ...
            step *= 2.5 if str(int(step)).startswith("2") else 2.0
        first = lo if step == 1 else math.ceil(lo / step) * step
        ticks = [first + k * step for k in range(int((hi - first) / step) + 1)]
    else:
        step = nice_step(hi - lo, min(most, 6))
        ticks = [v for v in nice_ticks(lo, hi, min(most, 6)) if lo - 1e-9 <= v <= hi + 1e-9]
    y = height - _BOTTOM
    return [
        f'<line x1="{sx(v):.1f}" y1="{y}" x2="{sx(v):.1f}" y2="{y + 4}" stroke="#999"/>'
        f'<text x="{sx(v):.1f}" y="{y + 15}" text-anchor="middle">{tick_label(v, step)}</text>'
        for v in ticks
    ]


FLAGGED, CLEAR = "#d62728", "#c6e2c6"


def flag_strip(
    rows: Sequence[tuple[str, Sequence[bool | None], str]],
    *,
    width: int = 400,
    x_label: str = "ticks, oldest left",
) -> str:
    """SVG of one row of marks per ``(label, marks, note)``: mark i is red when True (flagged),
    pale green when False, absent when None (not known at that tick). ``note`` is written right
    of the marks (``since 12:03:10``); a label too long for its column is cut, whole in its
    tooltip. Every row has as many marks as the longest."""
    n = max((len(marks) for _, marks, _ in rows), default=0)
    label_w, note_w, row_h, top = 140, 90, 14, 4
    strip_w = width - label_w - note_w
    height = top + row_h * len(rows) + 18
    cell = strip_w / n if n else strip_w
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">'
    ]
    for r, (label, marks, note) in enumerate(rows):
        y = top + r * row_h
        shown = label if len(label) <= 24 else label[:23] + "…"
        parts.append(f'<g class="flag-row" data-label="{html.escape(label)}">')
        parts.append(
            f'<text x="0" y="{y + row_h - 3}"><title>{html.escape(f"{label} {note}".strip())}'
            f"</title>{html.escape(shown)}</text>"
        )
        for i, flagged in enumerate(marks):
            if flagged is None:
                continue
            kind, color = ("flagged", FLAGGED) if flagged else ("clear", CLEAR)
            parts.append(
                f'<rect class="{kind}" x="{label_w + i * cell:.1f}" y="{y + 1}" '
                f'width="{max(cell - 0.5, 0.5):.1f}" height="{row_h - 2}" fill="{color}"/>'
            )
        if note:
            parts.append(
                f'<text class="note" x="{label_w + strip_w + 4}" y="{y + row_h - 3}" '
                f'fill="{FLAGGED}">{html.escape(note)}</text>'
            )
        parts.append("</g>")
    parts.append(
        f'<text x="{label_w + strip_w / 2:.1f}" y="{height - 4}" text-anchor="middle" '
        f'fill="#57606a">{html.escape(x_label)}</text></svg>'
    )
    return "".join(parts)
