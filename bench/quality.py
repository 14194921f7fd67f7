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
import os
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
    p.add_argument("--rates", default="1.0,0.1,0.05", help="log_sample shares to compare with 0")
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
        workers = list(started.workers)
        figures: dict[float, list[float]] = {0.0: [], **{r: [] for r in rates}}
        cpu: dict[float, list[float]] = {0.0: [], **{r: [] for r in rates}}
        for round_ in range(args.rounds):
            for rate in (0.0, *rates):
                api.deploy(f"{NAME}@1", log_sample=rate, settings=settings)
                before = cpu_seconds(workers)
                result = loader.measure(
                    f"round {round_ + 1} log_sample {rate:g}",
                    endpoint,
                    SINGLE_JSON,
                    bodies.files["ours_1"],
                    seconds,
                )
                used = cpu_seconds(workers) - before
                figures[rate].append(result["req_s"])
                cpu[rate].append(used / max(1, result["requests"]) * 1e6)
        costs = sample_costs(tmp)
        log(f"writer: {costs['writer_us']:.1f} µs of CPU per row")
        status = api.server_status(settings=settings)
        counts = status.inference_log if status is not None else {}
        logged = len(api.inference_log(NAME, settings=settings))
        report = _report(figures, cpu, counts, logged, settings.log_max_rows, loader.tool, seconds)
        report += _cost_note(costs, cpu, load_settings().log_sample)
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


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` so far (``/proc/PID/stat``): the worker's own cost,
    which other load on a shared machine does not inflate as it does wall-clock figures."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / os.sysconf("SC_CLK_TCK")


def sample_costs(tmp: Path, n: int = 20_000) -> dict[str, float]:
    """CPU time the writer thread spends per row (JSON encoding, the insert, eviction) writing
    1-row samples of the benchmark's MLP into a fresh log, measured in this process."""
    import numpy as np

    from kernel_magics.quality.log_store import connect
    from kernel_magics.quality.log_writer import InferenceLog, RowShape, Sample, Sampler, write

    rows = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
    out = np.random.default_rng(1).standard_normal((1, 10)).astype(np.float32)
    shape = RowShape(None, list(range(10)), True)
    sampler = Sampler(1.0)
    writer = InferenceLog(tmp / "unused", 100_000, n + 1)
    writer._thread = object()  # type: ignore[assignment]  # queue only: no thread, no writes
    for i in range(n):
        if sampler.take():
            writer.add(Sample("bench", 1, f"id-{i}", rows, out, 1.0, shape))
    batch = list(writer.samples)
    con = connect(tmp / "cost-home")
    assert con is not None
    start = time.thread_time()
    for first in range(0, n, 1000):
        write(con, batch[first : first + 1000], 100_000)
    writer_cost = (time.thread_time() - start) / n
    con.close()
    return {"writer_us": writer_cost * 1e6}


def _cost_note(costs: dict[str, float], cpu: dict[float, list[float]], default: float) -> str:
    base = statistics.median(cpu[0.0])
    top = max(cpu)
    marginal = (statistics.median(cpu[top]) - base) / top if top and base else 0.0
    return (
        "\n"
        f"Marginal worker CPU per logged request, from the table (log_sample {top:g} against "
        f"off): {marginal:.1f} µs, of which {costs['writer_us']:.1f} µs is the writer thread's "
        f"JSON encoding, insert and eviction (measured in this process, thread CPU time, "
        f"{20_000:,} rows). At the default share {default:g} that is "
        f"{marginal * default / base:.1%} of the {base:.0f} µs of CPU a request takes with "
        "the log off.\n"
    )


def _report(
    figures: dict[float, list[float]],
    cpu: dict[float, list[float]],
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
        "machine's cores shared by client and server. Goal: ≥ 0.97 of the log-off figure. "
        "Worker CPU per request (from /proc, all rounds of a setting) is the steadier "
        "measure where other work shares the machine.",
        "",
        "| log_sample | req/s (median) | rounds | ratio to off | goal | worker CPU µs/request "
        "(median) | CPU ratio to off |",
        "|---|---|---|---|---|---|---|",
        f"| 0 (off) | {base:,.0f} | {', '.join(f'{v:,.0f}' for v in figures[0.0])} | 1.000 | "
        f"| {statistics.median(cpu[0.0]):.0f} | 1.000 |",
    ]
    base_cpu = statistics.median(cpu[0.0])
    for rate, values in figures.items():
        if rate == 0.0:
            continue
        median = statistics.median(values)
        ratio = median / base if base else 0.0
        verdict = "met" if ratio >= GOAL else "missed"
        rounds = ", ".join(f"{v:,.0f}" for v in values)
        used = statistics.median(cpu[rate])
        cpu_ratio = used / base_cpu if base_cpu else 0.0
        lines.append(
            f"| {rate:g} | {median:,.0f} | {rounds} | {ratio:.3f} | {verdict} | {used:.0f} "
            f"| {cpu_ratio:.3f} |"
        )
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
