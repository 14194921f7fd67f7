"""The peer under test: ``mlflow models serve`` of v1's local folder (``--env-manager local``,
one uvicorn worker, its default)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _http import HOST, free_port, post, wait_200
from _load_tools import BATCH_JSON, JSON, SINGLE_JSON, Endpoint, Loader
from _log import log
from _model import RequestBodies, check_outputs
from _procs import forget, spawn, stop_pid

INVOCATIONS = "/invocations"  # mlflow models serve's prediction route


def bench_mlflow(
    out: dict,
    local_dir: str,
    bodies: RequestBodies,
    loader: Loader,
    tmp: Path,
    seconds: float,
    model: Any,
    who: str = "mlflow",
) -> None:
    """Start → first 200, the answer check, then the load scenarios; ``who`` names the run
    in the log lines (and its server's log file).

    Fills ``out`` as it goes, so a run cut short keeps what it measured."""
    port = free_port()
    bin_dir = Path(sys.executable).parent  # the venv's mlflow, and its python on PATH for it
    log_path = tmp / f"{who.replace(' ', '-')}-serve.log"
    logfile = log_path.open("wb")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", local_dir, "--env-manager", "local"]
    cmd += ["-h", HOST, "-p", str(port)]
    log(f"{who}: starting `mlflow models serve` on port {port}")
    t0 = time.perf_counter()
    proc = spawn(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env, cwd=str(tmp))
    out["cmd"] = " ".join(cmd[1:])
    try:
        first = wait_200(
            port, INVOCATIONS, bodies.content["mlflow_1"], JSON, {}, timeout=60, proc=proc
        )
        if first is None:
            tail = log_path.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"mlflow models serve never answered 200:\n{tail}")
        out["start_s"] = first - t0
        log(f"{who}: start → first 200 in {out['start_s']:.2f} s")
        status, hdrs, data = post(port, INVOCATIONS, bodies.content["mlflow_256"], JSON, {})
        out["check"] = check_outputs(model, bodies.rows_256, status, hdrs, data)
        log(f"{who}: 256-row answer check: {out['check']}")
        target = Endpoint(port, INVOCATIONS)
        loader.warm_up(target, SINGLE_JSON, bodies.files["mlflow_1"], seconds)
        out["single"] = loader.measure(who, target, SINGLE_JSON, bodies.files["mlflow_1"], seconds)
        out["batch"] = loader.measure(who, target, BATCH_JSON, bodies.files["mlflow_256"], seconds)
    finally:
        stop_pid(proc.pid, group=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        forget(proc)
        logfile.close()
