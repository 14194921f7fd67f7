"""Optimization benchmark: what each method of ``%optimize`` gives on digits, and how the pt2
fp32, ONNX fp32 and ONNX int8 versions serve through the inference process.

    .venv/bin/python bench/optimize.py [--duration S] [--epochs N] [--python-client] [--keep-home]

1. Trains the digits MLP 64→256→256→10 (``api.train``, 20 epochs, 20% held out) in a throwaway
   home: version 1 (pt2 fp32).
2. Runs every method on it (``api.optimize`` with the digits data: the held-out 20% is the
   validation set): ONNX fp32 export, int8 dynamic and static (onnxruntime), structured 50%
   pruning + 2 fine-tuning epochs, unstructured 50% pruning, distillation into 64→32→10
   (20 epochs, beside the same student on labels only). Prints the trade-off table (size,
   parameters, p50 of one forward at batch 1 and 64 on one thread, accuracy).
3. Deploys v1 (pt2 fp32), the ONNX fp32 and the ONNX int8 versions in turn in one inference
   process and drives each with wrk (or ``_load.py``): 1-row JSON at 16 connections (req/s,
   p99) and 256-row ``.npy`` bodies at 4 connections (rows/s, p99); answers are checked
   against the held-out labels through HTTP.

Goal: ONNX int8 serves bulk rows ≥ 1.5× the pt2 fp32 version, accuracy within 0.5 points.
Prints both tables with PASS/FAIL and writes them to ``bench/results-optimize.md``;
everything started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results-optimize.md"
sys.path.insert(0, str(HERE))  # the benchmark's helpers, next to this script
sys.path.insert(0, str(HERE.parent))  # kernel_magics from the checkout

from _load_tools import JSON, NPY, Endpoint, Loader, Scenario  # noqa: E402
from _log import log  # noqa: E402
from _procs import private_home, stop_children, stop_leftover_server  # noqa: E402

NAME = "digits"
SINGLE = Scenario("1-row JSON, 16 conn", JSON, 16)
BULK = Scenario("256-row npy, 4 conn", NPY, 4, rows=256, accept=NPY)
GOAL_SPEEDUP, GOAL_POINTS = 1.5, 0.5


def mlp() -> Any:
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def student() -> Any:
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


METHODS: list[tuple[str, dict[str, Any]]] = [
    ("export onnx (fp32)", {"export": "onnx"}),
    ("quantize dynamic (int8 onnx)", {"quantize": "dynamic"}),
    ("quantize static (int8 onnx)", {"quantize": "static"}),
    ("prune 50% structured + 2 epochs", {"prune": 0.5, "structured": True, "finetune_epochs": 2}),
    ("prune 50% unstructured", {"prune": 0.5}),
    ("distill into 64→32→10, 20 epochs", {"distill": True, "student": None, "epochs": 20}),
]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def tradeoffs(api: Any, X: Any, y: Any) -> tuple[str, dict[str, int], dict[str, float]]:
    """Every method on digits@1: the table, the versions made, their accuracies."""
    rows, versions, accuracy = [], {}, {}
    parent_row = None
    for label, options in METHODS:
        if options.get("distill"):
            options = {**options, "student": student()}
        r = api.optimize(f"{NAME}@1", X=X, y=y, **options)
        log(f"{label}: {NAME}@{r.version} ({r.format}) in {r.seconds:.1f} s")
        versions[label], accuracy[label] = r.version, r.figures.metrics["accuracy"]
        if parent_row is None:
            parent_row = _figure_row("parent: pt2 fp32 (v1)", r.parent_figures, r.parent_figures)
            accuracy["parent"] = r.parent_figures.metrics["accuracy"]
        rows.append(_figure_row(f"{label} (v{r.version})", r.figures, r.parent_figures))
        if r.baseline is not None:
            rows.append(_figure_row("  same student, labels only", r.baseline, r.parent_figures))
    headers = ["version", "format", "size", "params", "p50 b1", "p50 b64", "accuracy", "Δ acc"]
    return _table(headers, [parent_row or [], *rows]), versions, accuracy


def _figure_row(label: str, f: Any, parent: Any) -> list[str]:
    delta = (f.metrics["accuracy"] - parent.metrics["accuracy"]) * 100
    return [
        label,
        f.format,
        f"{f.size_bytes / 1024:.0f} KB ({f.size_bytes / parent.size_bytes:.2f}×)",
        f"{f.params:,}",
        f"{f.p50_us[1]:.1f} µs ({f.p50_us[1] / parent.p50_us[1]:.2f}×)",
        f"{f.p50_us[64]:.0f} µs ({f.p50_us[64] / parent.p50_us[64]:.2f}×)",
        f"{f.metrics['accuracy']:.4f}",
        f"{delta:+.2f} pts",
    ]


def serve(
    api: Any,
    loader: Loader,
    tmp: Path,
    versions: dict[str, int],
    val: tuple[Any, Any],
    seconds: float,
    rounds: int,
) -> dict[str, dict]:
    """Each version in turn in one inference process, driven by the same two scenarios;
    ``rounds`` passes over the versions (interleaved, so a busy moment of the shared machine
    does not fall on one version only), the best pass of each scenario kept."""
    import numpy as np
    import requests

    X_val, truth = val
    status = api.server_start()
    port = int(status.url.rstrip("/").rsplit(":", 1)[1])
    target = Endpoint(port, f"/v1/models/{NAME}:predict", api.server_token())
    one, bulk = tmp / "one.json", tmp / "bulk.npy"
    one.write_text(json.dumps({"instances": X_val[:1].tolist()}))
    buf = io.BytesIO()
    np.save(buf, X_val[:256])
    bulk.write_bytes(buf.getvalue())
    out: dict[str, dict] = {label: {} for label in versions}
    for _ in range(rounds):
        for label, version in versions.items():
            api.deploy(f"{NAME}@{version}")
            answer = requests.post(
                f"{status.url}/v1/models/{NAME}:predict",
                json={"instances": X_val.tolist()},
                headers={"Authorization": f"Bearer {target.token}"},
                timeout=30,
            )
            served = np.asarray(answer.json()["predictions"]).argmax(axis=1)
            out[label]["accuracy_http"] = float((served == truth).mean())
            for key, scenario, body in (("single", SINGLE, one), ("bulk", BULK, bulk)):
                loader.warm_up(target, scenario, str(body), seconds)
                who = f"v{version} {label}"
                got = loader.measure(who, target, scenario, str(body), seconds)
                if key not in out[label] or got["rows_s"] > out[label][key]["rows_s"]:
                    out[label][key] = got
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per load scenario")
    p.add_argument("--epochs", type=int, default=20, help="training epochs of the MLP")
    p.add_argument("--rounds", type=int, default=2, help="passes over the served versions")
    p.add_argument("--python-client", action="store_true", help="do not use wrk even if present")
    p.add_argument("--keep-home", action="store_true", help="keep the temporary home folder")
    args = p.parse_args(argv)
    tmp, home = private_home(
        "km-bench-opt-", KERNEL_MAGICS_AUTOSTART="0", KERNEL_MAGICS_PROGRESS="none"
    )
    started = time.monotonic()
    try:
        import numpy as np
        from sklearn.datasets import load_digits

        from kernel_magics import api
        from kernel_magics.training.data import prepare_data

        X, y = load_digits(return_X_y=True)
        X = (X / 16).astype(np.float32)
        r = api.train(mlp(), X, y, name=NAME, epochs=args.epochs, progress="none")
        log(f"trained {NAME}@{r.version}: accuracy {r.metrics['accuracy']:.4f}")
        table, versions, accuracy = tradeoffs(api, X, y)
        held_out = prepare_data(X, y, seed=0)  # the split api.optimize validates on
        X_val, truth = held_out.X_val.numpy(), held_out.y_val.numpy()
        served = {
            "pt2 fp32": 1,
            "ONNX fp32": versions["export onnx (fp32)"],
            "ONNX int8": versions["quantize dynamic (int8 onnx)"],
        }
        loader = Loader(tmp, force_python=args.python_client)
        load = os.getloadavg()[0]
        figures = serve(api, loader, tmp, served, (X_val, truth), args.duration, args.rounds)
        report = (
            f"# Optimization benchmark ({time.strftime('%Y-%m-%d %H:%M')})\n"
            "\n## Trade-offs on digits (one thread, in-process, held-out 20%)\n\n"
            f"{table}\n"
            f"\n## Serving through the inference process ({loader.tool}, {args.duration:g} s, "
            f"best of {args.rounds} interleaved passes; 1-min load average {load:.1f} "
            f"on {os.cpu_count()} cores)\n\n"
            f"{serving_table(figures)}\n"
        )
        print("\n" + report)
        RESULTS.write_text(report)  # what docs/optimization.md links: never copied by hand
        print(f"written to {RESULTS}; total {time.monotonic() - started:.0f} s")
        return 0 if verdicts(figures)[0] else 1
    finally:
        try:
            from kernel_magics import api as _api

            _api.server_stop()
        except Exception as err:  # the process may never have started
            log(f"stop: {err}")
        stop_children()
        stop_leftover_server(home)
        if not args.keep_home:
            shutil.rmtree(tmp, ignore_errors=True)


def verdicts(figures: dict) -> tuple[bool, float, float]:
    base, int8 = figures["pt2 fp32"], figures["ONNX int8"]
    speedup = int8["bulk"]["rows_s"] / base["bulk"]["rows_s"]
    points = (base["accuracy_http"] - int8["accuracy_http"]) * 100
    return speedup >= GOAL_SPEEDUP and points <= GOAL_POINTS, speedup, points


def serving_table(figures: dict) -> str:
    rows = []
    base = figures["pt2 fp32"]["bulk"]["rows_s"]
    for label, f in figures.items():
        s, b = f["single"], f["bulk"]
        rows.append(
            [
                label,
                f"{s['req_s']:.0f}",
                f"{s['p99_ms']:.2f} ms",
                f"{b['rows_s']:.0f} ({b['rows_s'] / base:.2f}×)",
                f"{b['p99_ms']:.2f} ms",
                f"{f['accuracy_http']:.4f}",
                str(s["errors"] + b["errors"]),
            ]
        )
    ok, speedup, points = verdicts(figures)
    headers = ["version", "1-row req/s", "p99", "256-row npy rows/s", "p99", "accuracy", "errors"]
    goals = [
        [
            "goal: ONNX int8 bulk rows/s ≥ 1.5× pt2 fp32",
            f"{speedup:.2f}×",
            "**PASS**" if speedup >= GOAL_SPEEDUP else "**FAIL**",
        ],
        [
            "goal: ONNX int8 accuracy within 0.5 points of pt2 fp32",
            f"{-points:+.2f} pts",
            "**PASS**" if points <= GOAL_POINTS else "**FAIL**",
        ],
    ]
    return _table(headers, rows) + "\n\n" + _table(["goal", "measured", "result"], goals)


if __name__ == "__main__":
    sys.exit(main())
