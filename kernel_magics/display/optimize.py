"""How ``%optimize`` shows its result: the parent-vs-new table (text and HTML), a bar chart of
the new version relative to its parent (inline SVG, no plotting library), and the verdict lines
(the ONNX check, what unstructured pruning does not do, whether distillation helped).

Like ``display``, nothing here calls the core: it renders an ``OptimizeResult``.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from kernel_magics.display.messages import _html_table, _text_table
from kernel_magics.display.svg import COLORS
from kernel_magics.metric_names import is_better

HEADERS = ("version", "format", "size", "params", "p50 batch 1", "p50 batch 64")
QUALITY = ("accuracy", "f1_macro", "mse")
NO_VALIDATION = "no validation data (pass --data X Y)"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _us(value: float) -> str:
    return f"{value:.0f} µs" if value >= 100 else f"{value:.1f} µs"


def _quality_keys(result: Any) -> list[str]:
    return [k for k in QUALITY if k in result.figures.metrics]


def _rows(result: Any) -> tuple[list[str], list[list[str]]]:
    keys = _quality_keys(result)
    rows = []
    for fig in _all(result):
        cells = [fig.label, fig.format, _size(fig.size_bytes), f"{fig.params:,}"]
        cells += [_us(fig.p50_us[n]) for n in sorted(fig.p50_us)]
        cells += [f"{fig.metrics[k]:.4f}" if k in fig.metrics else "" for k in keys]
        rows.append(cells)
    return [*HEADERS, *keys], rows


def _all(result: Any) -> list[Any]:
    return [f for f in (result.parent_figures, result.figures, result.baseline) if f is not None]


_NAMES = {"size_bytes": "size", "params": "parameters", "p50_us_b1": "p50 batch 1"}
_NAMES |= {"p50_us_b64": "p50 batch 64", "f1_macro": "F1 (macro)", "mse": "MSE"}


def ratios(result: Any) -> list[tuple[str, float]]:
    """New ÷ parent for each figure (1.0 = unchanged), by figure name (``size_bytes``, ``mse``)."""
    old, new = result.parent_figures.flat(), result.figures.flat()
    return [(k, new[k] / old[k]) for k in new if k in old and old[k]]


def verdict(result: Any) -> list[str]:
    """The lines under the table: what was made, the checks, what the figures mean."""
    old, new = result.parent_figures, result.figures
    lines = [f"{result.name}@{result.version} ← {result.parent}: {result.recipe}"]
    change = [
        f"size {new.size_bytes / old.size_bytes:.2f}×",
        f"params {new.params / old.params:.2f}×" if old.params else "",
        *(f"p50 batch {n} {new.p50_us[n] / old.p50_us[n]:.2f}×" for n in sorted(new.p50_us)),
    ]
    for key in _quality_keys(result):
        if key in old.metrics:
            delta = new.metrics[key] - old.metrics[key]
            change.append(f"{key} {delta * 100:+.2f} pts" if key != "mse" else f"mse {delta:+.4g}")
    lines.append("new vs parent: " + ", ".join(c for c in change if c))
    if not result.validated:
        lines.append(f"quality: {NO_VALIDATION}")
    for kind in ("fp32", "int8"):
        diff = result.checks.get(f"max_abs_diff_{kind}")
        if diff is None:
            continue
        tol = result.checks.get(f"tolerance_{kind}")
        bound = f" (within the {tol:g} tolerance)" if tol is not None else " (int8: no bound)"
        lines.append(f"ONNX {kind} vs torch on sample rows: max abs diff {diff:.3g}{bound}")
    if result.baseline is not None and "accuracy" in new.metrics:
        kd, plain = new.metrics["accuracy"], result.baseline.metrics["accuracy"]
        helped = "helped" if kd > plain else "did not help"
        lines.append(
            f"distillation {helped}: {kd:.4f} with the teacher vs {plain:.4f} on labels only "
            "(same student, seed and epochs)"
        )
    lines += result.notes
    lines.append(f"figures logged to run {result.run_id[:8]} and tagged km.opt.* on the version")
    return lines


def optimize_text(result: Any) -> str:
    headers, rows = _rows(result)
    return _text_table(headers, rows) + "\n" + "\n".join(verdict(result))


def optimize_html(result: Any) -> str:
    headers, rows = _rows(result)
    notes = "".join(f"<div>{html.escape(line)}</div>" for line in verdict(result))
    return f"<div>{_html_table(headers, rows)}{bar_chart(ratios(result))}{notes}</div>"


def bar_chart(items: Sequence[tuple[str, float]], *, width: int = 460) -> str:
    """Horizontal bars of new ÷ parent per figure (green where the new version is at least as
    good: ``metric_names.is_better``), with a line at 1× (the parent)."""
    row, left, right = 22, 120, 60
    height = row * len(items) + 30
    top = max((v for _, v in items), default=1.0)
    scale = (width - left - right) / max(top, 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<text x="{left}" y="12">new ÷ parent (1× = parent)</text>',
    ]
    for i, (key, value) in enumerate(items):
        y = 20 + i * row
        label = _NAMES.get(key, key)
        color = COLORS[2] if is_better(key, value, 1.0) else COLORS[3]
        parts.append(
            f'<text x="{left - 6}" y="{y + 14}" text-anchor="end">{html.escape(label)}</text>'
            f'<rect x="{left}" y="{y + 3}" width="{value * scale:.1f}" height="{row - 8}" '
            f'fill="{color}"/><text x="{left + value * scale + 4:.1f}" y="{y + 14}">'
            f"{value:.2f}×</text>"
        )
    one = left + scale
    parts.append(
        f'<line x1="{one:.1f}" y1="16" x2="{one:.1f}" y2="{height - 4}" stroke="#333" '
        'stroke-dasharray="3,2"/></svg>'
    )
    return "".join(parts)
