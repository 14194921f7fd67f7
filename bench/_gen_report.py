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
        f"### {size}: {part['parameters'] / 1e6:.1f} M parameters (random weights)",
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


def write_report(r: dict, path: Path) -> str:
    streams = r["streams"]
    lines = [
        "# Generation benchmark",
        "",
        f"Made by `.venv/bin/python {r['command'].strip()}` "
        f"({r['tokens']} new tokens per stream, greedy; {r['rounds']} rounds of each case; "
        f"{r['cpus']} CPUs, load average {r['load_before']:.1f} before and "
        f"{r['load_after']:.1f} after; {platform.python_version()}). Ours at its defaults (one "
        "torch thread), the peer at torch's default threads. TTFT is measured by the client "
        "from its request to the first streamed text; p99 is the nearest rank over all rounds' "
        "streams. Tokens/s count the completion tokens each server reports in its last chunk "
        "(`usage`) over the round's wall time; both servers also stream one text chunk per "
        "token. Models with random weights: the work per token does not depend on them. "
        "Both servers are loaded for the whole run and take turns round by round (idle but "
        "for the one measured); in-process `model.generate` runs in the client's process "
        "between rounds, at one torch thread.",
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
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text
