"""What the front ends show for pipelines, evaluations and comparisons (text and HTML).

Same rules as ``messages.py``: plain text for terminals, the CLI and papermill's text outputs;
HTML for a notebook; nothing here calls the core, callers pass what it returned. Pictures (a
confusion matrix, a residual plot) are drawn with matplotlib when it is installed, as an inline
PNG, else as an HTML heat map / inline SVG.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import Any

from kernel_magics.display.messages import _html_table, _number, _text_table

_BEST_STYLE = "background:#dafbe1;font-weight:600"
_BAD_STYLE = "color:#cf222e;font-weight:600"
MAX_DRAWN_CLASSES = 30


def _fields_text(title: str, fields: Sequence[tuple[str, str]]) -> str:
    width = max((len(k) for k, _ in fields), default=0)
    return "\n".join([title, *(f"  {k:<{width}}  {v}" for k, v in fields)])


def _fields_html(title: str, fields: Sequence[tuple[str, str]]) -> str:
    rows = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
        for k, v in fields
    )
    return f"<p><b>{html.escape(title)}</b></p><table class='kernel-magics'>{rows}</table>"


# -- pipelines ----------------------------------------------------------------------------------
def _pipeline_fields(record: Any) -> list[tuple[str, str]]:
    p = record.provenance
    fields = [
        ("run id", record.run_id),
        ("status", record.status),
        ("notebook", record.notebook + (f" ({record.executed_from})" if record.rerun_of else "")),
        ("parameters", ", ".join(f"{k}={v!r}" for k, v in record.parameters.items()) or "-"),
    ]
    fields += [(k, _number(v)) for k, v in sorted(record.metrics.items())]
    fields += [(f"{v.name} v{v.version}", _metrics_line(v.metrics)) for v in record.versions]
    if p.get("git_commit"):
        dirty = " (dirty)" if p.get("git_dirty") == "true" else ""
        fields.append(("git", p["git_commit"][:12] + dirty))
    packages = [f"{k[8:]} {v}" for k, v in p.items() if k.startswith("package.")]
    fields.append(("packages", ", ".join(packages)))
    hashed = [f"{k[7:]} {v[:12]}" for k, v in p.items() if k.startswith("sha256.")]
    if hashed:
        fields.append(("inputs", ", ".join(hashed)))
    if record.seconds is not None:
        fields.append(("executed in", f"{record.seconds:.1f} s"))
    if record.rerun_of:
        fields.append(("rerun of", record.rerun_of))
    if record.error:
        fields.append(("error", record.error))
    fields.append(("executed notebook", record.executed_notebook or "not stored"))
    return fields


def _metrics_line(metrics: dict[str, float]) -> str:
    keys = [k for k in ("accuracy", "f1_macro", "mse", "r2", "val_loss") if k in metrics]
    return " ".join(f"{k}={_number(metrics[k])}" for k in keys) or "registered"


def pipeline_text(record: Any) -> str:
    return _fields_text(f"pipeline {record.run_name}: {record.status}", _pipeline_fields(record))


def pipeline_html(record: Any) -> str:
    return _fields_html(f"pipeline {record.run_name}: {record.status}", _pipeline_fields(record))


def _rerun_rows(result: Any) -> list[list[str]]:
    rows = []
    for row in result.rows:
        delta = "" if row.delta is None else f"{row.delta:+.3g}"
        mark = "identical" if row.identical else "equal" if row.equal else "differs"
        mark = "missing" if row.delta is None else mark
        rows.append([row.name, _optional(row.original), _optional(row.rerun), delta, mark])
    return rows


def _optional(value: Any) -> str:
    return "-" if value is None else _number(value)


def _rerun_summary(result: Any) -> str:
    differ = sum(not row.equal for row in result.rows)
    source = result.rerun.executed_from
    head = f"rerun {result.rerun.run_id} of {result.original.run_id} (notebook: {source})"
    if not result.rows:
        return f"{head}: no metrics to compare"
    identical = sum(row.identical for row in result.rows)
    verdict = f"{differ} differ" if differ else "all equal"
    if not differ and identical < len(result.rows):
        verdict += f" ({identical} identical, the rest within float32 rounding)"
    return f"{head}: {len(result.rows)} metrics, {verdict}"


RERUN_HEADERS = ("metric", "original", "rerun", "change", "")


def rerun_text(result: Any) -> str:
    return _rerun_summary(result) + "\n" + _text_table(RERUN_HEADERS, _rerun_rows(result))


def rerun_html(result: Any) -> str:
    rows = []
    for row in _rerun_rows(result):
        cells = [html.escape(c) for c in row]
        style = "color:#1a7f37" if row[-1] in ("identical", "equal") else _BAD_STYLE
        cells[-1] = f"<span style='{style}'>{cells[-1]}</span>"
        rows.append(cells)
    summary = f"<p><b>{html.escape(_rerun_summary(result))}</b></p>"
    return summary + _html_table(RERUN_HEADERS, rows, escaped=True)


# -- evaluation ---------------------------------------------------------------------------------
def _evaluation_title(result: Any) -> str:
    return f"{result.name} v{result.version} on {result.rows:,} rows ({result.task})"


def _evaluation_fields(result: Any) -> list[tuple[str, str]]:
    fields = [(k, _number(v)) for k, v in result.metrics.items()]
    fields.append(("run id", result.run_id))
    fields.append(
        ("time", f"forward {result.forward_seconds:.3f} s, the rest {result.other_seconds:.3f} s")
    )
    return fields + [("note", n) for n in result.notes]


CLASS_HEADERS = ("class", "precision", "recall", "f1", "support")


def _class_rows(result: Any) -> list[list[str]]:
    return [
        [label, _number(v["precision"]), _number(v["recall"]), _number(v["f1"]), str(v["support"])]
        for label, v in result.per_class.items()
    ]


def evaluation_text(result: Any) -> str:
    parts = [_fields_text(_evaluation_title(result), _evaluation_fields(result))]
    if result.per_class:
        parts.append(_text_table(CLASS_HEADERS, _class_rows(result)))
    if result.confusion and len(result.confusion) <= MAX_DRAWN_CLASSES:
        labels = [str(label) for label in result.labels]
        rows = [[f"true {labels[i]}", *map(str, r)] for i, r in enumerate(result.confusion)]
        parts.append("confusion matrix (rows: true, columns: predicted)")
        parts.append(_text_table(["", *labels], rows))
    return "\n\n".join(parts)


def evaluation_html(result: Any) -> str:
    parts = [_fields_html(_evaluation_title(result), _evaluation_fields(result))]
    if result.per_class:
        parts.append(_html_table(CLASS_HEADERS, _class_rows(result)))
    if result.confusion:
        parts.append(confusion_html(result.confusion, [str(c) for c in result.labels]))
    if result.residuals is not None and len(result.residuals):
        parts.append(residuals_html(result.fitted, result.residuals))
    return "".join(parts)


def confusion_html(matrix: list[list[int]], labels: list[str]) -> str:
    """The confusion matrix as a picture: matplotlib's, else an HTML heat map."""
    if len(matrix) > MAX_DRAWN_CLASSES:
        return f"<p>confusion matrix: {len(matrix)} classes, too many to draw</p>"
    png = _confusion_png(matrix, labels)
    if png is not None:
        return _img(png, "confusion matrix")
    top = max((v for row in matrix for v in row), default=0) or 1
    head = "<th></th>" + "".join(f"<th>{html.escape(c)}</th>" for c in labels)
    body = ""
    for label, row in zip(labels, matrix, strict=True):
        cells = "".join(
            f"<td style='text-align:right;background:rgba(31,119,180,{v / top:.2f});"
            f"color:{'#fff' if v / top > 0.5 else '#000'}'>{v}</td>"
            for v in row
        )
        body += f"<tr><th>{html.escape(label)}</th>{cells}</tr>"
    caption = "<caption>confusion matrix (rows: true, columns: predicted)</caption>"
    return f"<table class='kernel-magics'>{caption}<tr>{head}</tr>{body}</table>"


def _confusion_png(matrix: list[list[int]], labels: list[str]) -> bytes | None:
    figure = _figure(max(3.0, 0.45 * len(labels) + 1.5))
    if figure is None:
        return None
    ax = figure.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="true")
    ax.set_xticklabels(labels)
    ax.set_yticklabels(labels)
    top = max((v for row in matrix for v in row), default=0) or 1
    if len(labels) <= 15:
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                color = "white" if v > top / 2 else "black"
                ax.text(j, i, str(v), ha="center", va="center", color=color, fontsize=8)
    figure.colorbar(image, ax=ax, fraction=0.046)
    return _png(figure)


def residuals_html(fitted: Any, residuals: Any) -> str:
    """Residuals against predictions: matplotlib's scatter, else an inline SVG."""
    figure = _figure(4.0)
    if figure is not None:
        ax = figure.add_subplot()
        ax.scatter(fitted, residuals, s=6, alpha=0.6)
        ax.axhline(0.0, color="grey", linewidth=1)
        ax.set(xlabel="prediction", ylabel="residual (y - prediction)")
        return _img(_png(figure), "residual plot")
    return _residuals_svg([float(v) for v in fitted], [float(v) for v in residuals])


def _residuals_svg(xs: list[float], ys: list[float], size: int = 320) -> str:
    points = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
    if not points:
        return ""
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    reach = max(abs(p[1]) for p in points) or 1.0
    span = (x1 - x0) or 1.0
    dots = "".join(
        f"<circle cx='{10 + (x - x0) / span * (size - 20):.1f}' "
        f"cy='{size / 2 - y / reach * (size / 2 - 10):.1f}' r='2' fill='#1f77b4'/>"
        for x, y in points
    )
    axis = f"<line x1='0' y1='{size / 2}' x2='{size}' y2='{size / 2}' stroke='grey'/>"
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{size}' height='{size}'>"
        f"<title>residual plot</title>{axis}{dots}</svg>"
    )


def _figure(inches: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure(figsize=(inches + 1.0, inches), dpi=90, layout="tight")


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f"<img alt='{alt}' src='data:image/png;base64,{data}'/>"


# -- cross-validation ---------------------------------------------------------------------------
def _cv_rows(result: Any) -> list[list[str]]:
    return [
        [k, f"{_number(mean)} ± {_number(std)}", " ".join(_number(f[k]) for f in result.per_fold)]
        for k, (mean, std) in result.metrics.items()
    ]


CV_HEADERS = ("metric", "mean ± std", "per fold")


def _cv_title(result: Any) -> str:
    return (
        f"{result.name} v{result.version}: {result.folds}-fold cross-validation of its recipe "
        f"({result.task}, {result.seconds:.1f} s)"
    )


def cv_text(result: Any) -> str:
    notes = "".join(f"\nnote: {n}" for n in result.notes)
    return f"{_cv_title(result)}\n{_text_table(CV_HEADERS, _cv_rows(result))}{notes}"


def cv_html(result: Any) -> str:
    notes = "".join(f"<p>note: {html.escape(n)}</p>" for n in result.notes)
    title = f"<p><b>{html.escape(_cv_title(result))}</b></p>"
    return title + _html_table(CV_HEADERS, _cv_rows(result)) + notes


# -- comparison ---------------------------------------------------------------------------------
def _cell(value: Any, name: str) -> str:
    if value is None:
        return "-"
    if name == "size_bytes" and isinstance(value, int):
        return f"{value / 1024:.1f} KiB"
    if name == "latency_ms" and isinstance(value, float):
        return f"{value:.3f} ms"
    return _number(value) if isinstance(value, int | float) else str(value)


def _compare_headers(comparison: Any) -> list[str]:
    return ["", "", *(f"v{v}" for v in comparison.versions)]


def comparison_text(comparison: Any) -> str:
    """``*`` marks the best value of a row."""
    rows = []
    for row in comparison.rows:
        cells = [
            _cell(v, row.name) + (" *" if i in row.best else "") for i, v in enumerate(row.values)
        ]
        rows.append([row.section, row.name, *cells])
    title = f"{comparison.name}: " + " vs ".join(f"v{v}" for v in comparison.versions)
    return f"{title} (* best)\n{_text_table(_compare_headers(comparison), rows)}"


def comparison_html(comparison: Any) -> str:
    rows = []
    for row in comparison.rows:
        cells = []
        for i, value in enumerate(row.values):
            text = html.escape(_cell(value, row.name))
            cells.append(f"<span style='{_BEST_STYLE}'>{text}</span>" if i in row.best else text)
        rows.append([html.escape(row.section), html.escape(row.name), *cells])
    title = html.escape(f"{comparison.name}: " + " vs ".join(f"v{v}" for v in comparison.versions))
    return f"<p><b>{title}</b></p>" + _html_table(_compare_headers(comparison), rows, escaped=True)
