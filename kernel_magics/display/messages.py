"""The lifecycle's messages and renderings: models, transitions, history, predictions, training
lines, and the output helpers (``show``, the tables) the other display modules share.

Each view comes as plain text (terminals, the CLI, logs, papermill's text outputs) and, where a
notebook can do better, as HTML. ``show`` picks: inside a Jupyter kernel (``ZMQInteractiveShell``)
it sends both as one display bundle; anywhere else it prints the text. Nothing here calls the
core API: callers pass in what it returned.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import html
import json
from collections.abc import Iterable, Sequence
from typing import Any

from kernel_magics.errors import first_line
from kernel_magics.metric_names import key_metrics
from kernel_magics.records import CanaryRule, HistoryEvent, TransitionResult

_BADGE = (
    '<span style="background:#1a7f37;color:#fff;border-radius:4px;padding:0 6px;'
    'font-size:0.85em;font-weight:600">LIVE</span>'
)


# -- output -------------------------------------------------------------------------------------
def in_notebook() -> bool:
    """True inside a Jupyter kernel, where HTML renders; False in a terminal or a script."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


def show(text: str, html_text: str | None = None) -> None:
    """Show one view: an HTML + text bundle in a notebook, the text elsewhere."""
    if in_notebook():
        from IPython.display import display

        bundle = {"text/plain": text}
        if html_text is not None:
            bundle["text/html"] = html_text
        display(bundle, raw=True)
    else:
        print(text)


def one_line(err: BaseException | str) -> str:
    """The first non-empty line of an error (our errors already are one line; others may not)."""
    return first_line(err, limit=1000)


def to_json(value: Any) -> str:
    """JSON for scripts: dataclasses become objects, numpy values become lists and numbers."""

    def default(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return dataclasses.asdict(obj)
        if hasattr(obj, "tolist"):
            return obj.tolist()
        if isinstance(obj, set | frozenset | tuple):
            return list(obj)
        return str(obj)

    return json.dumps(value, default=default, indent=None, sort_keys=False)


# -- tables -------------------------------------------------------------------------------------
def _text_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(map(str, r)) for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def _html_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, escaped: bool = False
) -> str:
    """``escaped`` rows already hold safe HTML (badges); otherwise every cell is escaped."""
    cell = (lambda c: c) if escaped else (lambda c: html.escape(str(c)))
    head = "".join(f"<th style='text-align:left'>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left'>{cell(c)}</td>" for c in r) + "</tr>"
        for r in rows
    )
    return (
        f"<table class='kernel-magics'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


# the dashboards (display/dashboards.py) build their tables with these too
text_table, html_table = _text_table, _html_table
LIVE_BADGE = _BADGE


def when(seconds: float | None) -> str:
    """A creation time (seconds since the epoch) as local ``YYYY-MM-DD HH:MM``."""
    if not seconds:
        return ""
    return _dt.datetime.fromtimestamp(seconds).strftime("%Y-%m-%d %H:%M")


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


number = _number  # 4 significant digits, as every table shows a metric


def _metrics_text(metrics: dict[str, float], task: str | None) -> str:
    return " ".join(f"{k}={_number(v)}" for k, v in key_metrics(metrics, task).items())


# -- models -------------------------------------------------------------------------------------
# parent: the version a registered one was derived from (km.parent), its lineage. One "live"
# column: the production alias, which the inference process serves (a note below the table
# says when it serves something else: it was not running, or a deploy is in flight).
MODEL_HEADERS = ("model", "version", "created", "task", "metrics", "format", "parent", "live")
NO_MODELS = "No registered models yet: train one with %train (or kernel_magics.api.train)."
LIVE_COLUMN = MODEL_HEADERS.index("live")


def _model_rows(summaries: Sequence[Any]) -> list[list[str]]:
    rows = []
    for s in summaries:
        for v in reversed(s.versions):  # newest first: what was just trained is on top
            rows.append(
                [
                    s.name,
                    f"v{v.version}",
                    when(v.created),
                    v.task or "",
                    _metrics_text(v.metrics, v.task),
                    v.format or "",
                    v.parent,
                    # The summary's live version is the one alias lookup; rows follow it.
                    "LIVE" if s.live_version == v.version else "",
                ]
            )
    return rows


def _served_note(summaries: Sequence[Any]) -> str:
    """Say when the process serves something other than the live alias (it was not running,
    or a deploy is in flight), since that is exactly what a user checks %models for; and what
    the process last decided about a canary it judged by itself."""
    notes = []
    for s in summaries:
        verdict = canary_verdict(s)
        if verdict:
            notes.append(f"{s.name} {verdict}")
        if s.served_version == s.live_version:
            continue
        live = f"v{s.live_version}" if s.live_version is not None else "no version"
        served = f"v{s.served_version}" if s.served_version is not None else "nothing"
        notes.append(f"{s.name}: {live} is live but the inference process serves {served}")
    return "\n".join(notes)


def canary_verdict(summary: Any) -> str:
    """``v3: auto-rollback: canary p99 …``: what the inference process last decided about a
    canary of this model it judged by itself (the newest version it judged), or ""."""
    judged = [v for v in summary.versions if v.canary_verdict]
    if not judged:
        return ""
    newest = max(judged, key=lambda v: v.version)
    return f"v{newest.version}: {newest.canary_verdict}"


def models_text(summaries: Sequence[Any]) -> str:
    if not summaries:
        return NO_MODELS
    table = _text_table(MODEL_HEADERS, _model_rows(summaries))
    note = _served_note(summaries)
    return f"{table}\n{note}" if note else table


def models_html(summaries: Sequence[Any]) -> str:
    if not summaries:
        return f"<p>{html.escape(NO_MODELS)}</p>"
    rows = []
    for row in _model_rows(summaries):
        cells = [html.escape(c) for c in row]
        cells[LIVE_COLUMN] = _BADGE if row[LIVE_COLUMN] else ""
        rows.append(cells)
    note = _served_note(summaries)
    note_html = f"<p style='color:#9a6700'>{html.escape(note)}</p>" if note else ""
    return _html_table(MODEL_HEADERS, rows, escaped=True) + note_html


# -- training and registration -------------------------------------------------------------------
def _train_fields(result: Any) -> list[tuple[str, str]]:
    fields = [
        ("model", f"{result.name} v{result.version}"),
        ("run id", result.run_id),
        ("format", result.format),
        *((k, _number(v)) for k, v in sorted(result.metrics.items())),
        ("training", f"{result.train_seconds:.2f} s"),
        ("bookkeeping", f"{result.bookkeeping_seconds:.2f} s (log + register)"),
    ]
    return fields + [("note", n) for n in result.notes]


def train_result_text(result: Any) -> str:
    return _result_text(result, _train_fields(result))


def train_result_html(result: Any) -> str:
    return _result_html(_train_fields(result))


def _register_fields(result: Any) -> list[tuple[str, str]]:
    """A ``RegisterResult``: where it came from, when the author said so."""
    fields = [
        ("model", f"{result.name} v{result.version}"),
        ("run id", result.run_id),
        ("format", result.format),
    ]
    fields += [(k, v) for k, v in (("parent", result.parent), ("recipe", result.recipe)) if v]
    fields.append(("bookkeeping", f"{result.seconds:.2f} s (log + register)"))
    return fields + [("note", n) for n in result.notes]


def register_result_text(result: Any) -> str:
    return _result_text(result, _register_fields(result))


def register_result_html(result: Any) -> str:
    return _result_html(_register_fields(result))


def _result_text(result: Any, fields: list[tuple[str, str]]) -> str:
    """``NAME vN registered`` and one aligned line per field (the model field is the title)."""
    title = f"{result.name} v{result.version} registered"
    rest = fields[1:]
    width = max(len(k) for k, _ in rest)
    return "\n".join([title, *(f"  {k:<{width}}  {v}" for k, v in rest)])


def _result_html(fields: list[tuple[str, str]]) -> str:
    rows = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
        f"<td style='text-align:left'>{html.escape(v)}</td></tr>"
        for k, v in fields
    )
    return f"<table class='kernel-magics'>{rows}</table>"


# -- deployment ---------------------------------------------------------------------------------
def transition_line(result: TransitionResult) -> str:
    """One line for a deploy / rollback / undeploy answer of the core API."""
    previous = result.previous_version
    was = f"was v{previous}" if previous is not None else "nothing was live"
    if result.action == "undeploy" or result.version is None:
        return f"{result.name} is no longer served ({was})"
    if result.unchanged:
        return f"{result.name} v{result.version} is already live; nothing changed"
    if result.action == "canary":  # the live version stays; the canary answers its share
        line = f"{result.name} v{result.version} is a canary for {result.canary}% of requests"
        loaded = _loaded(result)
        line = f"{line} (v{previous} stays live)" + (f" — {loaded}" if loaded else "")
        return f"{line}; {judged_by(result.analyze)}" if result.analyze else line
    if result.action == "canary-drop":
        return f"{result.name}: canary v{previous} dropped; v{result.version} takes all traffic"
    verb = "is live again" if result.action == "rollback" else "is live"
    line = f"{result.name} v{result.version} {verb} ({was})"
    if result.url:
        line += f" at {result.url}"
    loaded = _loaded(result)
    return f"{line} — {loaded}" if loaded else line


def judged_by(rule: CanaryRule) -> str:
    """ "judged on error_rate, p99 over 60 s once each version has 200 requests"."""
    window = f"{rule.window_s:g} s" if rule.window_s is not None else "the default window"
    least = rule.min_requests if rule.min_requests is not None else "the default number of"
    return (
        f"judged on {', '.join(rule.metrics)} over {window} once each version has {least} requests"
    )


def _loaded(result: TransitionResult) -> str:
    """How the version became ready: a rollback to the standby loads nothing."""
    if result.reused:
        return "already loaded (standby)"
    return f"loaded in {result.load_ms:.0f} ms" if result.load_ms is not None else ""


def endpoint(url: str, name: str) -> str:
    return f"{url.rstrip('/')}/v1/models/{name}:predict"


def transition_html(result: TransitionResult) -> str:
    """The same answer as ``transition_line``, with the LIVE badge and the endpoint's link."""
    name = html.escape(result.name)
    previous = result.previous_version
    was = f"was v{previous}" if previous is not None else "nothing was live"
    if result.action == "undeploy" or result.version is None:
        return f"<p><b>{name}</b> is no longer served ({html.escape(was)})</p>"
    if result.unchanged:
        return f"<p><b>{name}</b> v{result.version} is already {_BADGE}; nothing changed</p>"
    again = " again" if result.action == "rollback" else ""
    parts = [f"<b>{name}</b> v{result.version} {_BADGE}{again} ({html.escape(was)})"]
    if result.url:
        url = html.escape(endpoint(result.url, result.name))
        parts.append(f'at <a href="{url}" target="_blank"><code>POST {url}</code></a>')
    loaded = _loaded(result)
    if loaded:
        parts.append(f"— {html.escape(loaded)}")
    return f"<p>{' '.join(parts)}</p>"


HISTORY_HEADERS = ("time", "action", "from", "to")
# The column a history gains once the process promoted or rolled back a canary by itself.
HISTORY_REASON = "why"


def _local_time(iso: str) -> str:
    """History times are stored in UTC (ISO 8601); show them in local time like `created`."""
    try:
        return _dt.datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return iso


def _history_rows(events: Sequence[HistoryEvent]) -> list[list[str]]:
    def version(v: int | None) -> str:
        return f"v{v}" if v is not None else "-"

    reasons = any(e.reason for e in events)
    return [
        [_local_time(e.time), e.action, version(e.from_version), version(e.to_version)]
        + ([e.reason or ""] if reasons else [])
        for e in events
    ]


def _history_headers(events: Sequence[HistoryEvent]) -> tuple[str, ...]:
    return (*HISTORY_HEADERS, HISTORY_REASON) if any(e.reason for e in events) else HISTORY_HEADERS


def history_text(name: str, events: Sequence[HistoryEvent]) -> str:
    if not events:
        return f"{name} has never been deployed."
    return _text_table(_history_headers(events), _history_rows(events))


def history_html(name: str, events: Sequence[HistoryEvent]) -> str:
    if not events:
        return f"<p>{html.escape(history_text(name, events))}</p>"
    return _html_table(_history_headers(events), _history_rows(events))


def predictions_text(values: Any) -> str:
    """Predictions for a terminal: one row per line (labels, or space-separated outputs)."""
    rows = values.tolist() if hasattr(values, "tolist") else list(values)
    return "\n".join(" ".join(map(str, r)) if isinstance(r, list) else str(r) for r in rows)


PREDICTION_ROWS = 20  # rows a notebook shows; the array itself holds them all


def predictions_html(values: Any, name: str, *, raw: bool = False) -> str:
    """``%predict``'s answer in a notebook: which model answered, then a row number and the
    label (or the outputs) per row, the first ``PREDICTION_ROWS`` of them."""
    rows = values.tolist() if hasattr(values, "tolist") else list(values)
    what = "outputs" if raw else "predictions"
    head = f"<b>{html.escape(name)}</b> {_BADGE} — {len(rows)} {what}"

    def cell(row: Any) -> str:
        if isinstance(row, list):
            return " ".join(_number(v) if isinstance(v, float) else str(v) for v in row)
        return _number(row) if isinstance(row, float) else str(row)

    shown = [(str(i), cell(r)) for i, r in enumerate(rows[:PREDICTION_ROWS])]
    more = len(rows) - len(shown)
    note = f"<p>… {more} more (all in the returned array)</p>" if more > 0 else ""
    return f"<p>{head}</p>" + _html_table(("row", what[:-1]), shown) + note


def logs_html(text: str) -> str:
    """``%serve logs`` in a notebook: the lines as they are, warnings and errors coloured."""
    if not text.strip():
        return "<p>The inference process has not logged anything yet.</p>"
    colours = {" ERROR ": "#cf222e", " WARNING ": "#9a6700", " CRITICAL ": "#cf222e"}
    lines = []
    for line in text.splitlines():
        colour = next((c for level, c in colours.items() if level in line), None)
        escaped = html.escape(line)
        lines.append(f'<span style="color:{colour}">{escaped}</span>' if colour else escaped)
    body = "\n".join(lines)
    return f"<pre style='font-size:0.85em;line-height:1.35;white-space:pre-wrap'>{body}</pre>"


def training_stopped_line(run_id: str | None, detail: str | None = None) -> str:
    """What ``%train`` says after the Stop button or a kernel interrupt (once: the progress
    reporter has already said where it stopped, unless ``detail`` repeats it for none)."""
    run = f"run {run_id}" if run_id else "the run"
    line = f"{run} is recorded as KILLED in MLflow; nothing was registered"
    return f"{detail}: {line}" if detail else line


def warm_up_note(seconds: float) -> str:
    return (
        f"the first training in a kernel pays a one-time warm-up in its bookkeeping (MLflow's "
        f"and torch.export's imports and first export, about {seconds:.1f} s here); later "
        "ones take a fraction of a second"
    )
