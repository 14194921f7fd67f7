"""The model's quality in service as text and HTML: the inference log's rows (``%log``), live
metrics per version (``%evaluate --live``), and the quality line per served version that
``%monitor`` and the Models panel show (the inference process's latest drift check, live
metrics from feedback)."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

from kernel_magics.display.messages import html_table as _html_table
from kernel_magics.display.messages import text_table as _text_table
from kernel_magics.records import DriftSummary, ServerStatus

_CELL = 48  # an input or output is cut to this many characters in a table


def _cell(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= _CELL else text[: _CELL - 1] + "…"


def _log_rows(frame: Any) -> list[list[str]]:
    return [
        [
            row.time.strftime("%Y-%m-%d %H:%M:%S"),
            f"v{row.version}",
            str(row.request_id),
            str(row.row),
            _cell(row.input),
            _cell(row.output),
            f"{row.latency_ms:.1f}",
        ]
        for row in frame.itertuples(index=False)
    ]


_LOG_HEADERS = ("time (UTC)", "version", "request id", "row", "input", "output", "ms")


def log_text(name: str, frame: Any) -> str:
    if frame.empty:
        return f"No logged requests for {name} (log_sample 0, or none sent yet)."
    return f"{name}: {len(frame)} logged rows\n" + _text_table(_LOG_HEADERS, _log_rows(frame))


def log_html(name: str, frame: Any) -> str:
    if frame.empty:
        return f"<p>{html.escape(log_text(name, frame))}</p>"
    head = f"<p><b>{html.escape(name)}</b>: {len(frame)} logged rows</p>"
    return head + _html_table(_LOG_HEADERS, _log_rows(frame))


def live_line(version: int, figures: Mapping[str, float]) -> str:
    """One version's live figures: ``v2 live accuracy 0.912, F1 0.905 (120 labelled)``."""
    return f"v{version} {_live_part(figures)}"


def _live_part(figures: Mapping[str, float]) -> str:
    labelled = int(figures.get("labelled", 0))
    if "accuracy" in figures:
        shown = f"accuracy {figures['accuracy']:.3f}, F1 {figures.get('f1_macro', 0.0):.3f}"
    elif "mse" in figures:
        shown = f"MSE {figures['mse']:.4g}, MAE {figures.get('mae', 0.0):.4g}"
    else:
        shown = "no comparable labels"
    return f"live {shown} ({labelled:,} labelled)"


_FLAGS_NAMED = 6  # a line names this many flagged features, then counts the rest


def drift_part(drift: DriftSummary) -> str:
    """``drift: b, d flagged (max PSI 0.42) over 10,000 rows`` (``none flagged`` when none)."""
    named = ", ".join(drift.flagged[:_FLAGS_NAMED])
    rest = len(drift.flagged) - _FLAGS_NAMED
    what = f"{named}{f' and {rest} more' if rest > 0 else ''} flagged" if named else "none flagged"
    psi = f" (max PSI {drift.max_psi:.2f})" if drift.max_psi is not None else ""
    return f"drift: {what}{psi} over {drift.rows:,} rows"


LiveFigures = Mapping[str, Mapping[int, Mapping[str, float]]]  # model → version → figures


def quality_lines(
    status: ServerStatus | None, live: LiveFigures | None = None, only: str | None = None
) -> dict[str, list[str]]:
    """Per served model, a line per version with a drift check or live figures:
    ``v1 drift: b, d flagged (max PSI 0.42) over 10,000 rows · live accuracy 0.930, F1 0.925
    (812 labelled)``. The drift checks come from the status snapshot (the inference process's
    own, every ``drift_interval_s``), the live figures from the inference log's feedback."""
    if status is None:
        return {}
    names = sorted({*status.models, *(d.model for d in status.drift), *(live or {})})
    out = {}
    for name in names:
        if only is not None and name != only:
            continue
        per_version = (live or {}).get(name, {})
        versions = sorted({*(d.version for d in status.drift if d.model == name), *per_version})
        lines = []
        for version in versions:
            drift = status.drift_of(name, version)
            parts = [drift_part(drift)] if drift is not None else []
            if version in per_version:
                parts.append(_live_part(per_version[version]))
            lines.append(f"v{version} " + " · ".join(parts))
        if lines:
            out[name] = lines
    return out


def live_text(result: Any) -> str:
    window = f" over the last {result.since}" if result.since else ""
    if not result.versions:
        return (
            f"No feedback for {result.name}{window}: send true labels with api.feedback "
            f"or POST /v1/models/{result.name}/feedback."
        )
    lines = [f"{result.name}: live metrics from feedback{window}"]
    lines += [f"  {live_line(v, figures)}" for v, figures in result.versions.items()]
    if result.runs:
        lines.append("  logged as live_* metrics to each version's run")
    return "\n".join(lines)


def live_html(result: Any) -> str:
    if not result.versions:
        return f"<p>{html.escape(live_text(result))}</p>"
    keys = ["labelled", "accuracy", "f1_macro", "mse", "mae"]
    keys = [k for k in keys if any(k in f for f in result.versions.values())]
    rows = [
        [f"v{v}"] + [_figure(figures.get(k)) for k in keys]
        for v, figures in result.versions.items()
    ]
    window = f" (last {html.escape(result.since)})" if result.since else ""
    head = f"<p><b>{html.escape(result.name)}</b>: live metrics from feedback{window}</p>"
    return head + _html_table(["version", *keys], rows)


def _figure(value: float | None) -> str:
    if value is None:
        return ""
    return f"{int(value):,}" if float(value).is_integer() and value > 1 else f"{value:.4g}"
