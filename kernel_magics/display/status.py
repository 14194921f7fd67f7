"""Messages about the serving target itself: its status line and table, usage per token, the
named tokens, the stop line. Functions return strings (text or HTML) like ``display``'s.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

from kernel_magics.display.messages import _html_table
from kernel_magics.records import ServerStatus, TokenUsage

NOT_RUNNING = "The inference process is not running (the first deploy starts it)."


def _served(status: ServerStatus) -> list[tuple[str, str]]:
    return [
        (name, f"v{m.version}" + (f" ({m.state})" if m.state else "") + _canary_note(m.canary))
        for name, m in sorted(status.models.items())
    ]


def _canary_note(canary: Mapping[str, int] | None) -> str:
    """`` + canary v3 at 10%``: the version beside the live one and its share."""
    if not canary:
        return ""
    return f" + canary v{canary.get('version')} at {canary.get('percent')}%"


def status_line(status: ServerStatus | None) -> str:
    if not status:
        return NOT_RUNNING
    count = len(status.workers)
    parts = [f"pid {status.pid}", f"{count} worker{'s' if count != 1 else ''}"]
    if status.status:
        parts.append(status.status)
    return f"Inference process at {status.url} ({', '.join(parts)})"


def status_text(status: ServerStatus | None) -> str:
    if not status:
        return NOT_RUNNING
    served = _served(status)
    lines = [status_line(status)]
    lines += [f"  {name:<20} {version}" for name, version in served] or ["  serving no models"]
    lines += usage_lines(status.usage)
    lines += inference_log_lines(status.inference_log)
    return "\n".join(lines)


def inference_log_lines(counts: Mapping[str, int] | None) -> list[str]:
    """The inference log's samples: written, and dropped (a full queue or a failing disk)."""
    if not counts or not any(counts.values()):
        return []
    written, dropped = counts.get("written", 0), counts.get("dropped", 0)
    return [f"inference log: {written:,} requests written, {dropped:,} dropped"]


def usage_lines(usage: Mapping[str, TokenUsage] | None) -> list[str]:
    """Per-token usage metering: one line per token name that made requests."""
    if not usage:
        return []
    rows = sorted(usage.items(), key=lambda kv: -kv[1].requests)
    return ["usage by token:"] + [
        f"  {name:<20} {u.requests:>10,} requests {u.rows:>12,} rows"
        + (
            f" {u.prompt_tokens:>10,} prompt + {u.completion_tokens:,} completion tokens"
            if u.prompt_tokens or u.completion_tokens
            else ""
        )
        for name, u in rows
    ]


def tokens_text(named: list[dict]) -> str:
    if not named:
        return "No named tokens (the home token is printed by `kernel-magics serve token`)."
    return "\n".join(
        f"{t['name']:<20} scope {t.get('scope', ''):<8} created {t.get('created', '')}"
        for t in named
    )


def status_html(status: ServerStatus | None) -> str:
    if not status:
        return f"<p>{html.escape(NOT_RUNNING)}</p>"
    served = _served(status)
    table = _html_table(("model", "serving"), served) if served else ""
    if status.usage:
        rows = [(n, f"{u.requests:,}", f"{u.rows:,}") for n, u in status.usage.items()]
        table += _html_table(("token", "requests", "rows"), rows)
    return f"<p>{html.escape(status_line(status))}</p>{table}"


def stopped_line(was_running: bool) -> str:
    return "Inference process stopped." if was_running else "The inference process was not running."
