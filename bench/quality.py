"""Inference-log benchmark: 1-row requests per second with the log at a sample share against
the log turned off, the same process, the same model, the same run.

    .venv/bin/python bench/quality.py [--duration S] [--rounds N] [--rates 1.0,0.1]

Registers the serving benchmark's MLP (``_model``) in a throwaway KERNEL_MAGICS_HOME, starts the
inference process, and deploys ``bench@1`` with ``log_sample`` 0 and each rate in turn (a
re-deploy that changes only the share reuses the loaded version). Rounds alternate off, then each
rate, ``--rounds`` times, so slow drifts of a shared machine fall on every setting alike; a
setting's figure is the median of its rounds. Load: ``wrk`` (else ``bench/_load.py``), 1-row
JSON at 16 connections. Writes ``bench/results-quality.md``; the goal is a ratio ≥ 0.97.
Everything started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _load_tools import SINGLE_JSON, Endpoint, Loader
from _log import log
from _model import NAME, make_bodies, register_versions
from _procs import private_home, stop_children, stop_leftover_server

RESULTS = Path(__file__).resolve().parent / "results-quality.md"
GOAL = 0.97


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=4.0, help="seconds per round (≤ 10)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rates", default="1.0,0.1", help="log_sample shares to compare with 0")
    p.add_argument("--python-client", action="store_true")
    args = p.parse_args(argv)
    seconds = min(10.0, args.duration)
    rates = [float(r) for r in args.rates.split(",")]
    tmp, home = private_home("km-bench-quality-")
    from kernel_magics import api
    from kernel_magics.config import load_settings

    settings = load_settings()
    try:
        register_versions(settings)
        bodies = make_bodies(tmp)
        started = api.server_start(settings=settings)
        if started is None or not started.url:
            raise SystemExit("the inference process did not start")
        api.deploy(f"{NAME}@1", log_sample=0.0, settings=settings)
        port = int(started.url.rsplit(":", 1)[1])
        endpoint = Endpoint(port, f"/v1/models/{NAME}:predict", api.server_token(settings=settings))
        loader = Loader(tmp, force_python=args.python_client)
        loader.warm_up(endpoint, SINGLE_JSON, bodies.files["ours_1"], 1.0)
        figures: dict[float, list[float]] = {0.0: [], **{r: [] for r in rates}}
        for round_ in range(args.rounds):
            for rate in (0.0, *rates):
                api.deploy(f"{NAME}@1", log_sample=rate, settings=settings)
                result = loader.measure(
                    f"round {round_ + 1} log_sample {rate:g}",
                    endpoint,
                    SINGLE_JSON,
                    bodies.files["ours_1"],
                    seconds,
                )
                figures[rate].append(result["req_s"])
        status = api.server_status(settings=settings)
        counts = status.inference_log if status is not None else {}
        logged = len(api.inference_log(NAME, settings=settings))
        report = _report(figures, counts, logged, settings.log_max_rows, loader.tool, seconds)
        print(report)
        RESULTS.write_text(report)
        log(f"wrote {RESULTS}")
    finally:
        try:
            api.server_stop(settings=settings)
        finally:
            stop_leftover_server(home)
            stop_children()
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _report(
    figures: dict[float, list[float]],
    counts: dict[str, int],
    logged: int,
    max_rows: int,
    tool: str,
    seconds: float,
) -> str:
    base = statistics.median(figures[0.0])
    lines = [
        "# Inference log: cost on 1-row requests",
        "",
        f"`bench/quality.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: the serving "
        f"benchmark's MLP, 1-row JSON at 16 connections ({tool}), {seconds:g} s rounds, "
        f"{len(figures[0.0])} rounds per setting alternating, median. One worker, the "
        "machine's cores shared by client and server. Goal: ≥ 0.97 of the log-off figure.",
        "",
        "| log_sample | req/s (median) | rounds | ratio to off | goal |",
        "|---|---|---|---|---|",
        f"| 0 (off) | {base:,.0f} | {', '.join(f'{v:,.0f}' for v in figures[0.0])} | 1.000 | |",
    ]
    for rate, values in figures.items():
        if rate == 0.0:
            continue
        median = statistics.median(values)
        ratio = median / base if base else 0.0
        verdict = "met" if ratio >= GOAL else "missed"
        rounds = ", ".join(f"{v:,.0f}" for v in values)
        lines.append(f"| {rate:g} | {median:,.0f} | {rounds} | {ratio:.3f} | {verdict} |")
    lines += [
        "",
        f"Samples written {counts.get('written', 0):,}, dropped {counts.get('dropped', 0):,} "
        f"(a full queue or a failed write); rows kept for the model: {logged:,} "
        f"(log_max_rows {max_rows:,}).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
