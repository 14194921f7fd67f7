"""Pipeline overhead and evaluation cost.

    .venv/bin/python bench/pipeline.py [--repeats N] [--epochs N] [--rows N] [--keep-home]

1. The same notebooks executed with bare ``papermill`` and with ``kernel-magics pipeline run``
   (both as a user runs them from a shell, one after the other, ``--repeats`` times each,
   alternating; medians): a trivial notebook (two cells, no imports: the fixed cost of a
   pipeline run) and ``notebooks/pipelines/train.ipynb`` with ``--epochs`` (about 30 s here:
   imports, %train, registration). ``kernel-magics`` adds the MLflow run (params, provenance,
   the input and executed notebooks, links); its MLflow work runs beside papermill's start-up.
   Goal: ≤ 1.0 s more, and ≤ 10% more on the ~30 s notebook.
2. ``api.evaluate`` of a digits MLP on ``--rows`` rows (10,000): the forward, and everything
   else (hash-checked load, input checks, scikit-learn's metrics, the evaluation run and
   version tags), first call and the median of the next five. Goal: ≤ 1 s beyond the forward.

Everything runs in a throwaway home (removed unless ``--keep-home``); no process outlives it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TRAIN = ROOT / "notebooks" / "pipelines" / "train.ipynb"


def trivial_notebook(path: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    parameters = nbformat.v4.new_code_cell("x = 1")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell("y = x * 2\ny")]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds, and CPU seconds of the whole process tree (the command, the kernel and
    the helpers it waited for): on a loaded machine the CPU figure is the steadier one."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(
            f"{' '.join(command[:4])} failed ({done.returncode}): {done.stderr[-800:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


def overhead(notebook: Path, parameters: list[str], repeats: int, home: Path) -> dict:
    env = dict(os.environ, KERNEL_MAGICS_HOME=str(home), KERNEL_MAGICS_AUTOSTART="0")
    env["KERNEL_MAGICS_PROGRESS"] = "text"
    out = home / "out.ipynb"
    bare = [str(BIN / "papermill"), str(notebook), str(out), "-k", "python3", "--no-progress-bar"]
    ours = [str(BIN / "kernel-magics"), "pipeline", "run", str(notebook), "--progress", "none"]
    for name, value in zip(parameters[::2], parameters[1::2], strict=True):
        bare += ["-p", name, value]
        ours += ["-p", name, value]
    timed(bare, env)  # warm the disk cache and the store's schema before measuring
    timed(ours, env)
    runs: dict[str, list[tuple[float, float]]] = {"papermill": [], "ours": []}
    for _ in range(repeats):  # alternating, so a change in the machine's load hits both
        runs["papermill"].append(timed(bare, env))
        runs["ours"].append(timed(ours, env))
    out_: dict = {"runs": runs}
    for k in ("papermill", "ours"):
        out_[k] = statistics.median(wall for wall, _ in runs[k])
        out_[f"{k}_cpu"] = statistics.median(cpu for _, cpu in runs[k])
    out_["extra"] = out_["ours"] - out_["papermill"]
    out_["extra_cpu"] = out_["ours_cpu"] - out_["papermill_cpu"]
    return out_


def evaluation_cost(rows: int, home: Path) -> dict:
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    from kernel_magics import api
    from kernel_magics.config import load_settings

    settings = load_settings(home=home, autostart=False)
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
    api.train(net, X, y, name="bench-digits", epochs=3, progress="none", settings=settings)
    reps = -(-rows // len(X))
    X_big, y_big = np.tile(X, (reps, 1))[:rows], np.tile(y, reps)[:rows]
    results = [api.evaluate("bench-digits", X_big, y_big, settings=settings) for _ in range(6)]
    warm = results[1:]
    return {
        "rows": rows,
        "first_forward": results[0].forward_seconds,
        "first_other": results[0].other_seconds,
        "forward": statistics.median(r.forward_seconds for r in warm),
        "other": statistics.median(r.other_seconds for r in warm),
    }


def verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def report(trivial: dict, train: dict, evaluation: dict, epochs: int) -> str:
    def row(label: str, r: dict, goal: str, ok: bool) -> str:
        pct = 100 * r["extra"] / r["papermill"]
        return (
            f"| {label} | {r['papermill']:.2f} s ({r['papermill_cpu']:.2f} s) "
            f"| {r['ours']:.2f} s ({r['ours_cpu']:.2f} s) | {r['extra']:+.2f} s ({pct:+.1f}%) "
            f"| {r['extra_cpu']:+.2f} s | {goal} | {verdict(ok)} |"
        )

    train_pct = train["extra"] / train["papermill"]
    lines = [
        "| notebook | bare papermill: wall (CPU) | kernel-magics pipeline run: wall (CPU) "
        "| extra wall | extra CPU | goal | result |",
        "|---|---|---|---|---|---|---|",
        row("trivial (2 cells)", trivial, "≤ +1.0 s", trivial["extra"] <= 1.0),
        row(
            f"train.ipynb ({epochs} epochs)",
            train,
            "≤ +1.0 s and ≤ +10%",
            train["extra"] <= 1.0 and train_pct <= 0.10,
        ),
        "",
        "| %evaluate, digits MLP 64→256→10 | forward | everything else | goal | result |",
        "|---|---|---|---|---|",
        f"| {evaluation['rows']:,} rows, first call | {evaluation['first_forward']:.3f} s | "
        f"{evaluation['first_other']:.3f} s | — | info |",
        f"| {evaluation['rows']:,} rows, median of next 5 | {evaluation['forward']:.3f} s | "
        f"{evaluation['other']:.3f} s | ≤ 1 s beyond the forward | "
        f"{verdict(evaluation['other'] <= 1.0)} |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40, help="train.ipynb epochs (~30 s)")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--keep-home", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="km-bench-pipeline-"))
    try:
        load = os.getloadavg()[0]
        print(f"home {home}; {os.cpu_count()} cores, 1-min load average {load:.1f}", flush=True)
        trivial = overhead(trivial_notebook(home / "trivial.ipynb"), ["x", "3"], args.repeats, home)
        print(f"trivial: {trivial['runs']}", flush=True)
        train = overhead(TRAIN, ["epochs", str(args.epochs)], args.repeats, home)
        print(f"train: {train['runs']}", flush=True)
        evaluation = evaluation_cost(args.rows, home)
        print(report(trivial, train, evaluation, args.epochs))
    finally:
        if not args.keep_home:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
