"""``bench/results-generate.md`` from ``bench/generate.py``'s results: per model size the raw
figures of both servers and ``model.generate``, then the issue's goals as ratios."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _rate(case: dict) -> float:
    """Tokens/s as the server counted them (usage), else streamed text chunks/s."""
    return case["tokens_per_s"] or case["chunks_per_s"]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _size_table(size: str, part: dict, streams: int) -> list[str]:
    ours, peer = part.get("ours", {}), part.get("peer", {})
    generate = part["in_process_generate_tok_s"]
    rows = [
        f"### {size}: {part['parameters'] / 1e6:.1f} M parameters (random weights), "
        f"served in {part.get('dtype', 'float32')} by both",
        "",
        "| | ours | transformers serve --continuous-batching | in-process `model.generate` |",
        "|---|---:|---:|---:|",
        f"| 1 stream, tokens/s | {_fmt(_rate(ours['one']))} | "
        f"{_fmt(_rate(peer['one']))} | {_fmt(generate)} |",
        f"| 1 stream, TTFT p50 ms | {_fmt(ours['one']['ttft_p50_ms'])} | "
        f"{_fmt(peer['one']['ttft_p50_ms'])} | |",
    ]
    rows.append(
        f"| {streams} streams, aggregate tokens/s | {_fmt(_rate(ours['many']))} | "
        f"{_fmt(_rate(peer['many']))} | |"
    )
    for label, key in (
        ("aggregate text chunks/s", "chunks_per_s"),
        ("TTFT p50 ms", "ttft_p50_ms"),
        ("TTFT p99 ms", "ttft_p99_ms"),
        ("last request sent by the client after ms", "last_sent_ms"),
        ("failed streams", "failed"),
    ):
        rows.append(
            f"| {streams} streams, {label} | {_fmt(ours['many'][key])} | "
            f"{_fmt(peer['many'][key])} | |"
        )
    rows.append(
        f"| {streams} streams, chunks/s of each round | "
        f"{', '.join(f'{v:,.0f}' for v in ours['many']['chunks_per_s_runs'])} | "
        f"{', '.join(f'{v:,.0f}' for v in peer['many']['chunks_per_s_runs'])} | |"
    )
    return rows


def _goals(size: str, part: dict, streams: int) -> list[list[Any]]:
    ours, peer = part["ours"], part["peer"]
    generate = part["in_process_generate_tok_s"]
    return [
        [size, f"{streams} streams: aggregate tokens/s ÷ peer", ">= 2",
         _ratio(_rate(ours["many"]), _rate(peer["many"])), 2.0, True],
        [size, f"{streams} streams: TTFT p99 ÷ peer", "<= 0.5",
         _ratio(ours["many"]["ttft_p99_ms"], peer["many"]["ttft_p99_ms"]), 0.5, False],
        [size, "1 stream: tokens/s ÷ `model.generate`", ">= 1.0",
         _ratio(_rate(ours["one"]), generate), 1.0, True],
        [size, "1 stream: tokens/s ÷ peer", ">= 1.5",
         _ratio(_rate(ours["one"]), _rate(peer["one"])), 1.5, True],
    ]  # fmt: skip


def _versions(tally: dict) -> str:
    return ", ".join(f"{n} on {v}" for v, n in sorted(tally["versions"].items())) or "—"


def _ops_tables(ops: dict[str, dict], streams: int) -> list[str]:
    """Swap and rollback under load, and memory by concurrent streams (ours only)."""
    lines = [
        f"## Ours under {streams} streams: a deploy and a rollback",
        "",
        "Each action starts 0.3 s after S streams begin; S more streams begin once it ended.",
        "",
        "| case | action | took s | streams in flight: failed / cut short | their versions "
        "| begun after: failed | their versions |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for case, op in ops.items():
        for action, rec in op["swap"].items():
            during, after = rec["in_flight"], rec["begun_after"]
            lines.append(
                f"| {case} | {action} | {rec['action_s']:.2f} | {during['failed']} / "
                f"{during['short']} | {_versions(during)} | {after['failed']} | "
                f"{_versions(after)} |"
            )
    lines += [
        "",
        "## Ours: resident memory by concurrent streams",
        "",
        "Peak RSS of the inference process (supervisor and worker) while the streams run; "
        "streams past `gen_max_running` wait in the queue.",
        "",
        "| case | RSS by streams, MB | growth, MB | KV-cache budget, MB | failed |",
        "|---|---|---:|---:|---:|",
    ]
    for case, op in ops.items():
        mem = op["memory"]
        rss = mem["rss_mb"]
        shown = ", ".join(f"{n}: {v:,.0f}" for n, v in rss.items())
        growth = max(rss.values()) - rss["0"]
        lines.append(
            f"| {case} | {shown} | {growth:,.0f} | {mem['kv_cache_budget_mb']:,.0f} | "
            f"{sum(mem['failed'].values())} |"
        )
    return lines


def _prefix_note(r: dict) -> str:
    if not r.get("prefix_cache", True):
        return "Ours without its prefix cache (`--no-prefix-cache`): every prompt computed whole."
    return (
        "Ours keeps prompts in its prefix cache (`gen_prefix_cache_tokens`, on by default), so "
        "from the warm-up on a measured round's prompts compute only their last token; "
        "`--no-prefix-cache` turns it off."
    )


def write_report(r: dict, path: Path) -> str:
    streams = r["streams"]
    lines = [
        "# Generation benchmark",
        "",
        f"Made by `.venv/bin/python {r['command'].strip()}` "
        f"({r['tokens']} new tokens per stream, greedy; {r['rounds']} rounds of each case; "
        f"{r['cpus']} CPUs, load average {r['load_before']:.1f} before and "
        f"{r['load_after']:.1f} after; {platform.python_version()}). Ours at its defaults (its "
        "engine's torch threads by the weights' size, `gen_threads` = 0: one for 4m, every "
        "core for 30m; for 30m in float32 a blocked copy of its weights, "
        "`gen_blocked_weights`) but for `gen_dtype`, the peer at torch's default threads (two "
        "here); "
        "both serve the weights in the case's precision (ours: `gen_dtype`, the peer: "
        "`--dtype`; `model.generate` too). TTFT is measured by the client "
        "from its request to the first streamed text; p99 is the nearest rank over all rounds' "
        "streams. Tokens/s count the completion tokens each server reports in its last chunk "
        "(`usage`) over the round's wall time; both servers also stream one text chunk per "
        "token. The streams take 4 prompts of 5-13 tokens in turn, each sent by a quarter of "
        "them (ours prefills a prompt once per forward, the peer shares only complete cache "
        "blocks, which none of them fills; `--distinct-prompts` gives each stream its own). "
        f"{_prefix_note(r)} "
        "Models with random weights: the work per token does not depend on them. "
        "Both servers are loaded for the whole run and take turns round by round (idle but "
        "for the one measured); in-process `model.generate` runs in the client's process "
        "between rounds, at one torch thread. Each measured round follows an unmeasured one "
        "of 2-token streams on the same server: on this VM memory left idle for half a "
        "second is slow to read again (120 MB: 8 ms warm, 65-220 ms after 1-2 s), and a "
        "server under traffic keeps its weights warm.",
        "",
        "## Goals (issue 25)",
        "",
        "| model | ratio | goal | measured | met |",
        "|---|---|---:|---:|:---:|",
    ]
    for size, part in r["sizes"].items():
        for size_, label, goal, value, bound, above in _goals(size, part, streams):
            met = value is not None and (value >= bound if above else value <= bound)
            shown = "—" if value is None else f"{value:.2f}×"
            lines.append(f"| {size_} | {label} | {goal} | {shown} | {'yes' if met else 'no'} |")
    for size, part in r["sizes"].items():
        lines += ["", *_size_table(size, part, streams)]
    ops = {case: part["ops"] for case, part in r["sizes"].items() if "ops" in part}
    if ops:
        lines += ["", *_ops_tables(ops, streams)]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text
