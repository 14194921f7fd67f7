"""Text and HTML of the dashboards (``%monitor``, the ``%models`` registry browser).

Plain functions returning strings, used inside the widgets and for the static views that
papermill, nbconvert, a terminal or a saved notebook show. No ipywidgets import here.
"""

from __future__ import annotations

import datetime as _dt
import html
from collections.abc import Mapping, Sequence
from typing import Any

from kernel_magics import display
from kernel_magics.display import quality as display_quality
from kernel_magics.display import status as display_status
from kernel_magics.display.rates import GenerationRates, ModelRates, TokenRates
from kernel_magics.metric_names import direction, key_metrics
from kernel_magics.records import RecentError, ServerStatus

_SMALL = "font-size:0.9em;line-height:1.35"
_ERROR = "color:#cf222e"
_MUTED = "color:#57606a"


def _figure(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "–" if value is None else f"{value:,.{digits}f}{suffix}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def clock(seconds: float | None) -> str:
    if not seconds:
        return ""
    return _dt.datetime.fromtimestamp(seconds).strftime("%H:%M:%S")


# -- the service monitor -------------------------------------------------------------------------
MONITOR_HEADERS = (
    "model",
    "live",
    "req/s",
    "p50 ms",
    "p99 ms",
    "4xx",  # client errors: a wrong shape is not the service failing
    "5xx",  # server errors
    "mean batch",
    "rows/s",
    "queue",
    "requests",
)


def _rate_rows(rates: Sequence[ModelRates]) -> list[list[str]]:
    return [
        [
            r.name,
            f"v{r.version}",
            _figure(r.requests_s),
            _figure(r.p50_ms, 2),
            _figure(r.p99_ms, 2),
            _percent(r.client_error_rate),
            _percent(r.server_error_rate),
            _figure(r.mean_batch),
            _figure(r.rows_s),
            str(r.queue),
            f"{r.requests:,}",
        ]
        for r in rates
    ]


# language models: generation figures beside the request table
GENERATION_HEADERS = (
    "language model",
    "live",
    "tokens/s",
    "TTFT p50 ms",
    "TTFT p99 ms",
    "ITL p99 ms",  # inter-token latency
    "running",
    "queued",
    "KV cache",
    "tokens",
    "served as",
)


def _generation_rows(rows: Sequence[GenerationRates]) -> list[list[str]]:
    return [
        [
            g.name,
            f"v{g.version}",
            _figure(g.tokens_s),
            _figure(g.ttft_p50_ms),
            _figure(g.ttft_p99_ms),
            _figure(g.inter_token_p99_ms),
            f"{g.running}/{g.max_running}",
            str(g.queued),
            f"{_percent(g.kv_cache_use)} of {g.kv_cache_tokens:,}",
            f"{g.tokens:,}",
            _served_as(g),
        ]
        for g in rows
    ]


def _served_as(g: GenerationRates) -> str:
    """The precision and the engine's threads, as "bfloat16, 2 threads" ("–" where unknown)."""
    if not g.dtype:
        return "–"
    return f"{g.dtype}, {g.threads} thread{'s' if g.threads != 1 else ''}"


def _table_html(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A compact table that keeps its spacing inside a widget (no notebook table styles
    there): numbers right-aligned, the first column left."""
    pad = "padding:1px 8px"

    def cell(tag: str, i: int, value: str) -> str:
        align = "left" if i == 0 else "right"
        return f"<{tag} style='{pad};text-align:{align}'>{html.escape(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(headers))
    body = "".join(
        "<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows
    )
    return (
        f"<table class='kernel-magics' style='border-collapse:collapse;{_SMALL}'>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _token_lines(tokens: Sequence[TokenRates]) -> list[str]:
    return [
        f"{t.name}: {t.requests:,} requests ({_figure(t.requests_s)}/s), {t.rows:,} rows"
        for t in tokens
    ]


def _error_lines(errors: Sequence[RecentError], only: str | None) -> list[str]:
    shown = [e for e in errors if only is None or e.model in (only, "")]
    return [
        f"{clock(e.time)} {e.status} "
        + (f"{e.model} v{e.version}: " if e.model and e.version is not None else "")
        + e.message
        for e in reversed(shown[-5:])
    ]


def monitor_title(status: ServerStatus | None, only: str | None) -> str:
    if status is None:
        return display_status.NOT_RUNNING
    what = f"{only} — " if only else ""
    return f"{what}{display_status.status_line(status)}, snapshot {clock(status.snapshot_at)}"


def monitor_text(
    status: ServerStatus | None,
    rates: Sequence[ModelRates],
    tokens: Sequence[TokenRates],
    only: str | None = None,
    generation: Sequence[GenerationRates] = (),
    live: display_quality.LiveFigures | None = None,
) -> str:
    if status is None:
        return display_status.NOT_RUNNING
    lines = [monitor_title(status, only)]
    if rates:
        lines.append(display.text_table(MONITOR_HEADERS, _rate_rows(rates)))
    else:
        lines.append(f"{only} is not deployed" if only else "serving no models")
    if generation:
        lines.append(display.text_table(GENERATION_HEADERS, _generation_rows(generation)))
    lines += [f"  {line}" for line in _live_lines(live, status, only)]
    if tokens:
        lines += ["usage by token:", *(f"  {t}" for t in _token_lines(tokens))]
    errors = _error_lines(status.errors, only)
    if errors:
        lines += ["recent errors:", *(f"  {e}" for e in errors)]
    if status.log:
        lines += ["log:", *(f"  {line}" for line in status.log[-8:])]
    return "\n".join(lines)


def monitor_html(
    status: ServerStatus | None,
    rates: Sequence[ModelRates],
    tokens: Sequence[TokenRates],
    only: str | None = None,
    plots: str = "",
    title: bool = True,
    generation: Sequence[GenerationRates] = (),
    live: display_quality.LiveFigures | None = None,
) -> str:
    """The monitor's figures as HTML (``title``: with its heading line; the widget has its
    own)."""
    if status is None:
        return f"<p>{html.escape(display_status.NOT_RUNNING)}</p>"
    parts = [f"<p><b>{html.escape(monitor_title(status, only))}</b></p>"] if title else []
    if rates:
        parts.append(_table_html(MONITOR_HEADERS, _rate_rows(rates)))
    else:
        parts.append(
            f"<p>{html.escape(f'{only} is not deployed' if only else 'serving no models')}</p>"
        )
    if generation:
        parts.append(_table_html(GENERATION_HEADERS, _generation_rows(generation)))
    live_lines = _live_lines(live, status, only)
    if live_lines:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in live_lines)
        parts.append(f"<ul style='{_SMALL}'>{items}</ul>")
    parts.append(plots)
    if tokens:
        items = "".join(f"<li>{html.escape(t)}</li>" for t in _token_lines(tokens))
        parts.append(f"<p>usage by token</p><ul style='{_SMALL}'>{items}</ul>")
    errors = _error_lines(status.errors, only)
    if errors:
        items = "".join(f"<li style='{_ERROR}'>{html.escape(e)}</li>" for e in errors)
        parts.append(f"<p>recent errors</p><ul style='{_SMALL}'>{items}</ul>")
    if status.log:
        parts.append(display.logs_html("\n".join(status.log[-8:])))
    return f"<div style='{_SMALL}'>{''.join(parts)}</div>"


def _live_lines(
    live: display_quality.LiveFigures | None, status: ServerStatus, only: str | None
) -> list[str]:
    """A line per version with a drift check or live figures from feedback:
    ``digits v2 drift: none flagged (max PSI 0.03) over 800 rows · live accuracy …``."""
    return [
        f"{name} {line}"
        for name, lines in display_quality.quality_lines(status, live, only).items()
        for line in lines
    ]


def monitors_stopped_line(count: int) -> str:
    return f"{count} monitor{'s' if count != 1 else ''} stopped."


# -- the registry browser ------------------------------------------------------------------------
_PENDING = {"deploy": "deploying", "rollback": "rolling back", "undeploy": "undeploying"}


def pending_line(action: str, name: str, what: str = "") -> str:
    """What the browser says while an action runs: ``deploying digits v2…``."""
    return " ".join(p for p in (_PENDING.get(action, action), name, what) if p) + "…"


def versions_table_html(summary: Any, selected: Any = None) -> str:
    """Every version of one model, newest first: live, created (to the minute), key metrics,
    format and parent; the selected version in bold."""
    rows, marked = [], []
    for v in reversed(summary.versions):
        metrics = " ".join(
            f"{k}={display.number(x)}" for k, x in key_metrics(v.metrics, v.task).items()
        )
        live = "LIVE" if v.version == summary.live_version else ""
        parent = v.parent
        rows.append(
            [f"v{v.version}", live, display.when(v.created), metrics, v.format or "", parent]
        )
        marked.append(selected is not None and v.version == selected.version)
    table = _table_html(("version", "live", "created", "metrics", "format", "parent"), rows)
    for row, bold in zip(rows, marked, strict=True):
        if bold:  # the version the picker and the buttons act on
            first = f">{html.escape(row[0])}</td>"
            table = table.replace(first, f"><b>{html.escape(row[0])}</b></td>", 1)
    verdict = display.canary_verdict(summary)
    return table + (f"<p>{html.escape(verdict)}</p>" if verdict else "")


def version_label(row: Any, live: int | None) -> str:
    """One line per version in the browser's list: ``v3 · LIVE · accuracy=0.95 · created``."""
    parts = [f"v{row.version}"]
    if row.version == live:
        parts.append("LIVE")
    metrics = " ".join(
        f"{k}={display.number(v)}" for k, v in key_metrics(row.metrics, row.task).items()
    )
    parts += [p for p in (metrics, display.when(row.created)) if p]
    return " · ".join(parts)


def _size(num_bytes: int | None) -> str:
    if num_bytes is None:
        return "…"
    size = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def version_details_html(
    name: str,
    row: Any,
    live: int | None,
    params: Mapping[str, str] | None,
    size_bytes: int | None,
) -> str:
    """Everything about one version: when, format, live, lineage, metrics, params, tags."""
    badge = f" {display.LIVE_BADGE}" if row.version == live else ""
    facts = [
        ("created", display.when(row.created)),
        ("format", row.format or ""),
        ("task", row.task or ""),
        ("size", _size(size_bytes)),
        ("run", row.run_id or ""),
        ("parent", row.parent),  # lineage
        ("recipe", row.recipe),
    ]
    head = f"<p><b>{html.escape(name)} v{row.version}</b>{badge}</p>"
    parts = [head, _pairs_html([(k, v) for k, v in facts if v])]
    if row.metrics:
        parts += [
            "<p>metrics</p>",
            _pairs_html(sorted((k, display.number(v)) for k, v in row.metrics.items())),
        ]
    if params:
        parts += ["<p>params</p>", _pairs_html(sorted(params.items()))]
    tags = sorted(row.other_tags().items())
    if tags:
        shown = [(k, v if len(v) <= 40 else v[:39] + "…") for k, v in tags]  # hashes, JSON
        parts += ["<p>tags</p>", _pairs_html(shown)]
    return f"<div style='{_SMALL}'>{''.join(parts)}</div>"


def _pairs_html(pairs: Sequence[tuple[str, str]]) -> str:
    rows = "".join(
        f"<tr><th style='text-align:left;padding:0 8px 0 0'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
        for k, v in pairs
    )
    return f"<table style='{_SMALL}'>{rows}</table>"


def comparison_html(
    name: str,
    rows: Sequence[Any],
    params: Sequence[Mapping[str, str]],
    curves: str = "",
) -> str:
    """Two (or more) versions side by side: metrics (the better value in bold), the params
    that differ, then the overlaid training curves."""
    headers = ("", *(f"v{r.version}" for r in rows))
    table_rows = []
    for metric in sorted({k for r in rows for k in r.metrics}):
        values = [r.metrics.get(metric) for r in rows]
        better = direction(metric)
        known = [v for v in values if v is not None]
        best = (max if better == "higher" else min)(known) if better and known else None
        cells = [
            ("<b>" if v == best and len(known) > 1 else "")
            + ("–" if v is None else html.escape(display.number(v)))
            + ("</b>" if v == best and len(known) > 1 else "")
            for v in values
        ]
        table_rows.append([html.escape(metric), *cells])
    differing = sorted(
        key for key in {k for p in params for k in p} if len({p.get(key) for p in params}) > 1
    )
    for key in differing:
        table_rows.append(
            [html.escape(f"param {key}"), *(html.escape(p.get(key, "–")) for p in params)]
        )
    title = f"<p><b>{html.escape(name)}</b>: " + " vs ".join(f"v{r.version}" for r in rows) + "</p>"
    table = display.html_table(headers, table_rows, escaped=True)
    return f"<div style='{_SMALL}'>{title}{table}{curves}</div>"


def comparison_text(name: str, rows: Sequence[Any]) -> str:
    headers = ("metric", *(f"v{r.version}" for r in rows))
    metrics = sorted({k for r in rows for k in r.metrics})
    body = [
        [m, *(display.number(r.metrics[m]) if m in r.metrics else "–" for r in rows)]
        for m in metrics
    ]
    return f"{name}\n" + display.text_table(headers, body)
