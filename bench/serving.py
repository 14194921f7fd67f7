"""Serving benchmark: kernel-magics' inference process against ``mlflow models serve``.

    .venv/bin/python bench/serving.py [--duration S] [--quick] [--skip-mlflow] [--skip-conv]
                                      [--keep-home] [--python-client] [--ray]
                                      [--scenario torch|sklearn]

``--scenario sklearn`` runs ``_sklearn`` instead (scikit-learn models against ``mlflow models
serve``'s sklearn flavor; ``bench/results-sklearn.md``). The default, ``torch``:

Builds an MLP 32→256→256→10 (float32), registers it twice (v1 seed 0, v2 seed 1) in the embedded
MLflow store of a throwaway KERNEL_MAGICS_HOME exactly as ``%train`` does (pt2 + ``km.sha256``),
then measures on loopback:

1. the in-process forward at ``torch.set_num_threads(1)`` (1 row, 256 rows);
2. ``mlflow models serve`` of v1's local folder (``--env-manager local``): start → first 200, then
   1-row JSON at 16 connections and 256-row JSON at 4 connections;
3. kernel-magics: cold deploy → first 200 with (a) no inference process and (b) the process
   already running without the model, then the same scenarios plus a 256-row ``.npy`` body;
4. a hot swap under 1-row load (deploy v2, then roll back to v1): failed requests, which version
   answered after each call returned, and each call's duration beyond the version's load+warm;
5. then (unless ``--skip-conv``) a small conv net on 1×28×28 float32 images, registered the same
   way: its in-process forward, and both servers on the same load scenarios (at most 5 s each),
   ours with a 256-image ``.npy`` body too. The MLP part above does not change with it.

With ``--ray`` (``_ray``), between 4 and 5: one local Ray head, the same v1 deployed to Ray Serve
through kernel-magics' ``ray`` target, the same load scenarios and the same swap under load. Ray
binds every interface, so the whole run then re-executes itself in a loopback-only network
namespace (``unshare -n``), where every server and load generator works on loopback as before.

Load comes from ``wrk`` (one thread, a Lua script for the POST body and the percentiles) when it
is on PATH, else from ``bench/_load.py``. Never more than one load generator runs against one
server at a time. Client and server share the machine's cores, so figures are for the pair.
Bounded to 280 s (about 130 s on a quiet machine; 380 s with ``--ray``); everything started here
is stopped by PID.
Prints one markdown table and writes it to ``bench/results.md`` (figures in
``bench/results.json``).

This script is the entry point and the run's order; the parts live beside it: ``_model`` (the MLP,
its registration, the in-process reference, request bodies, answer check), ``_convnet`` (the conv
net's model, bodies and part of the run), ``_peer`` (mlflow models serve), ``_ours``
(kernel-magics), ``_ray`` (Ray Serve, ``--ray``) and ``_swap`` (the swap under load),
``_load_tools`` (wrk / ``_load.py`` runs), ``_report`` and ``_report_ray`` (table, notes, results
files), ``_procs`` (children stopped by PID), ``_http`` and ``_log``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # the private modules below, next to this script
sys.path.insert(0, str(ROOT))  # kernel_magics from the checkout

from _convnet import bench_convnet  # noqa: E402
from _load_tools import Loader  # noqa: E402
from _log import log  # noqa: E402
from _model import NAME, in_process, make_bodies, register_versions  # noqa: E402
from _ours import bench_ours  # noqa: E402
from _peer import bench_mlflow  # noqa: E402
from _procs import private_home, stop_children, stop_leftover_server  # noqa: E402
from _ray import bench_ray, reexec_in_namespace  # noqa: E402
from _report import load_previous, previous_conv_mlflow, write_results  # noqa: E402

TOTAL_BUDGET_S = 280  # hard stop: MLP ~75 s + conv ~55 s on a quiet machine; room for a busy one
# (a run at load average ~8 took 239 s); the teardown after it keeps the whole run under 5 min
RAY_BUDGET_S = 100  # --ray: head start ~10 s, deploy ~10 s, 3 scenarios + swap, head stop ~10 s


class OutOfTime(BaseException):
    """Raised by SIGALRM wherever the run is. A BaseException, so that no ``except Exception``
    (a side's own error handling, the conv part's, the product's) swallows it: the run stops,
    with its figures so far."""


def _alarm(budget_s: int, signum: int, frame: Any) -> None:
    raise OutOfTime(f"the benchmark ran past its {budget_s} s budget")


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="kernel-magics serving benchmark (≤ 5 minutes)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per scenario (≤ 10)")
    p.add_argument("--quick", action="store_true", help="2 s scenarios: a smoke check")
    p.add_argument(
        "--skip-mlflow",
        action="store_true",
        help="reuse the mlflow figures from bench/results.json if present",
    )
    p.add_argument("--python-client", action="store_true", help="do not use wrk even if present")
    p.add_argument("--skip-conv", action="store_true", help="only the MLP part")
    p.add_argument(
        "--scenario",
        choices=("torch", "sklearn"),
        default="torch",
        help="sklearn: scikit-learn models against mlflow models serve (bench/_sklearn.py)",
    )
    p.add_argument("--keep-home", action="store_true", help="keep the temporary home folder")
    p.add_argument(
        "--ray",
        action="store_true",
        help="also Ray Serve (kernel-magics' ray target) on a local head; runs in a network "
        "namespace of its own (unshare -n)",
    )
    args = p.parse_args(argv)
    if args.scenario == "sklearn":
        from _sklearn import bench_sklearn

        seconds = 2.0 if args.quick else min(max(args.duration, 1.0), 10.0)
        signal.signal(signal.SIGALRM, functools.partial(_alarm, TOTAL_BUDGET_S))
        signal.alarm(TOTAL_BUDGET_S)
        try:
            return bench_sklearn(seconds, args.python_client, args.keep_home)
        finally:
            signal.alarm(0)
    if args.ray:  # returns only inside a loopback-only namespace
        reexec_in_namespace(Path(__file__).resolve(), sys.argv[1:] if argv is None else argv)
    budget_s = TOTAL_BUDGET_S + (RAY_BUDGET_S if args.ray else 0)
    seconds = 2.0 if args.quick else min(max(args.duration, 1.0), 10.0)
    swap_phase_s = 0.75 if args.quick else 1.5

    started = time.monotonic()
    signal.signal(signal.SIGALRM, functools.partial(_alarm, budget_s))
    signal.alarm(budget_s)
    signal.signal(signal.SIGTERM, _terminated)

    tmp, home = private_home("km-bench-")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

    previous = load_previous()

    loader = Loader(tmp, force_python=args.python_client)
    results: dict[str, Any] = {
        "meta": {
            "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "cores": os.cpu_count(),
            "tool": loader.tool,
            "duration_s": seconds,
            "quick": args.quick,
            "loadavg_start": round(os.getloadavg()[0], 2),
            "budget_s": budget_s,
        },
        "notes": [],
    }
    code = 0
    try:
        from kernel_magics.config import load_settings

        settings = load_settings(home=home, tracking_uri="")
        results["meta"]["settings"] = {
            k: getattr(settings, k)
            for k in ("workers", "max_batch_size", "max_wait_ms", "torch_threads")
        }
        log(f"home {home}; load generator: {loader.tool}; {seconds:g} s per scenario")
        t = time.perf_counter()
        paths, model = register_versions(settings)
        log(f"model: registered {NAME} v1, v2 in {time.perf_counter() - t:.1f} s")
        results["inproc"] = in_process(model, paths[1], args.quick)
        ip = results["inproc"]
        log(
            f"in-process (1 thread): 1 row {ip['eager_1_us']:.1f} µs, "
            f"256 rows {ip['eager_256_us']:.0f} µs ({ip['eager_256_rows_s']:.0f} rows/s)"
        )
        import torch

        torch.set_num_threads(max(1, os.cpu_count() or 1))  # the bench process idles from here
        bodies = make_bodies(tmp)

        if args.skip_mlflow and previous.get("mlflow", {}).get("start_s"):
            results["mlflow"] = {
                **previous["mlflow"],
                "reused": True,
                "measured": previous["mlflow"].get("measured")
                or previous.get("meta", {}).get("date"),
            }
            log("mlflow: reusing the figures from bench/results.json")
        else:
            if args.skip_mlflow:
                log("mlflow: --skip-mlflow but no earlier figures; measuring")
            try:
                results["mlflow"] = {
                    "measured": results["meta"]["date"],
                    "measured_with": f"{loader.tool}, {seconds:g} s per scenario"
                    + (", --quick" if args.quick else ""),
                }
                bench_mlflow(results["mlflow"], paths[1], bodies, loader, tmp, seconds, model)
            except Exception as err:
                code = 1
                results["notes"].append(f"mlflow models serve failed: {err}")
                log(f"mlflow: FAILED: {err}")

        try:
            import kernel_magics.targets.local  # noqa: F401
        except ImportError as err:
            code = 1
            results["notes"].append(f"kernel-magics serving is not available yet ({err}).")
            log(f"ours: serving not available: {err}")
        else:
            try:
                results["ours"] = {}
                bench_ours(
                    results["ours"], settings, bodies, loader, tmp, seconds, model, swap_phase_s
                )
            except Exception as err:
                code = 1
                results["notes"].append(f"kernel-magics run failed: {type(err).__name__}: {err}")
                log(f"ours: FAILED: {type(err).__name__}: {err}")

        if args.ray:
            results["ray"] = {}
            try:
                bench_ray(
                    results["ray"], settings, bodies, loader, tmp, seconds, model, swap_phase_s
                )
            except Exception as err:
                code = 1
                results["notes"].append(f"Ray Serve run failed: {type(err).__name__}: {err}")
                log(f"ray: FAILED: {type(err).__name__}: {err}")

        if not args.skip_conv:
            results["conv"] = {}
            try:
                ok = bench_convnet(
                    results["conv"],
                    settings,
                    loader,
                    tmp,
                    seconds,
                    args.quick,
                    results["meta"]["date"],
                    previous_conv_mlflow(previous) if args.skip_mlflow else None,
                )
                code = code or (0 if ok else 1)
            except Exception as err:
                code = 1
                results["notes"].append(f"conv net part failed: {type(err).__name__}: {err}")
                log(f"conv: FAILED: {type(err).__name__}: {err}")
    except OutOfTime as err:
        code = 1
        results["notes"].append(str(err) + "; figures so far")
        log(str(err))
    except KeyboardInterrupt:
        code = 130
        results["notes"].append("interrupted; figures so far")
    finally:
        signal.alarm(0)
        stop_children()
        stop_leftover_server(home)
        results["meta"]["wall_s"] = round(time.monotonic() - started, 1)
        results["meta"]["loadavg_end"] = round(os.getloadavg()[0], 2)
        if not args.keep_home:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp}")

    results["notes"].append(f"Whole benchmark: {results['meta']['wall_s']} s wall.")
    write_results(results, previous)
    return code


if __name__ == "__main__":
    sys.exit(main())
