"""Serving benchmark: kernel-magics' inference process against ``mlflow models serve``.

    .venv/bin/python bench/serving.py [--duration S] [--quick] [--skip-mlflow] [--keep-home]

Builds an MLP 32→256→256→10 (float32), registers it twice (v1 seed 0, v2 seed 1) in the embedded
MLflow store of a throwaway KERNEL_MAGICS_HOME exactly as ``%train`` does (pt2 + ``km.sha256``),
then measures on loopback:

1. the in-process forward at ``torch.set_num_threads(1)`` (1 row, 256 rows);
2. ``mlflow models serve`` of v1's local folder (``--env-manager local``): start → first 200, then
   1-row JSON at 16 connections and 256-row JSON at 4 connections;
3. kernel-magics: cold deploy → first 200 with (a) no inference process and (b) the process
   already running without the model, then the same scenarios plus a 256-row ``.npy`` body;
4. a hot swap under 1-row load (deploy v2, then roll back to v1): failed requests, which version
   answered after each call returned, and each call's duration beyond the version's load+warm.

Load comes from ``wrk`` (one thread, a Lua script for the POST body and the percentiles) when it
is on PATH, else from ``bench/_load.py``. Never more than one load generator runs against one
server at a time. Client and server share the machine's cores, so figures are for the pair.
Bounded to 3 minutes; everything started here is stopped by PID. Prints one markdown table and
writes it to ``bench/results.md`` (figures in ``bench/results.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import _load  # noqa: E402

RESULTS_MD = HERE / "results.md"
RESULTS_JSON = HERE / "results.json"
NAME = "bench"
N_IN, N_HIDDEN, N_OUT = 32, 256, 10
BATCH_ROWS = 256
TOTAL_BUDGET_S = 180  # hard stop for the whole run
HOST = "127.0.0.1"

# Children started here (Popen), stopped by PID (their own process group) on any exit.
_children: list[subprocess.Popen] = []


class OutOfTime(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise OutOfTime(f"the benchmark ran past its {TOTAL_BUDGET_S} s budget")


def _terminated(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- small utilities ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def post(
    port: int, path: str, body: bytes, ctype: str, headers: dict[str, str], timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": ctype, **headers})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def wait_200(
    port: int,
    path: str,
    body: bytes,
    ctype: str,
    headers: dict[str, str],
    timeout: float,
    proc: subprocess.Popen | None = None,
    interval: float = 0.02,
) -> float | None:
    """perf_counter() of the first 200 answer, polling every ``interval``; None on timeout."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc is not None and proc.poll() is not None:
            return None
        try:
            status, _, _ = post(port, path, body, ctype, headers, timeout=5.0)
            if status == 200:
                return time.perf_counter()
        except OSError:
            pass
        time.sleep(interval)
    return None


def stop_pid(pid: int, grace: float = 5.0, group: bool = False) -> None:
    """SIGTERM ``pid`` (its process group if ``group``), SIGKILL after ``grace`` seconds."""
    kill = os.killpg if group else os.kill
    try:
        kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # reap our own children
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie that is not ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


def stop_children() -> None:
    while _children:
        proc = _children.pop()
        if proc.poll() is None:
            stop_pid(proc.pid, group=True)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)


def _is_inference_process(pid: int) -> bool:
    """Alive and a kernel-magics inference process (a remembered PID may have been reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"kernel_magics.serving" in cmdline and _alive(pid)


def stop_leftover_server(home: Path) -> None:
    """Last resort (the run was cut short mid-stop): the inference process of the benchmark's
    own home, found through its state file, is stopped by PID, workers first."""
    try:
        state = json.loads((home / "server.json").read_text())
    except (OSError, ValueError):
        return
    pids = [
        p for p in (state.get("worker_pids") or state.get("workers") or []) if isinstance(p, int)
    ]
    if isinstance(state.get("pid"), int):
        pids.append(state["pid"])
    for pid in pids:
        if _is_inference_process(pid):
            log(f"stopping leftover inference process PID {pid}")
            stop_pid(pid)


def spawn(cmd: list[str], **kw: Any) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    _children.append(proc)
    return proc


def forget(proc: subprocess.Popen) -> None:
    if proc in _children:
        _children.remove(proc)


# -- the model ----------------------------------------------------------------------------------
def make_mlp(seed: int) -> Any:
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(N_IN, N_HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(N_HIDDEN, N_HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(N_HIDDEN, N_OUT),
    ).eval()


def register_versions(settings: Any) -> tuple[Any, dict[int, str], Any]:
    """v1 (seed 0) and v2 (seed 1) of NAME, logged and registered as ``%train`` does.

    Returns (store, {version: local model folder}, the v1 eager module)."""
    import mlflow

    from kernel_magics.store import (
        TAG_CLASSES,
        TAG_FORMAT,
        TAG_SHA256,
        TAG_TASK,
        Store,
        hash_model_dir,
    )
    from kernel_magics.tracking import _log_model, _register

    store = Store(settings)
    example = np.random.default_rng(0).random((4, N_IN), dtype=np.float32)  # ≥ 2 rows: dynamic
    paths, first = {}, None
    for seed in (0, 1):
        model = make_mlp(seed)
        if first is None:
            first = model
        with store.tracking(), store.write_lock():
            with mlflow.start_run(experiment_id=store.experiment_id(), run_name=f"{NAME}-{seed}"):
                run_id = mlflow.active_run().info.run_id
                info, fmt, _ = _log_model(model, example)
                local = mlflow.artifacts.download_artifacts(info.model_uri)
                tags = {
                    TAG_SHA256: hash_model_dir(local),
                    TAG_TASK: "classification",
                    TAG_FORMAT: fmt,
                    TAG_CLASSES: json.dumps(list(range(N_OUT))),
                }
                version = int(_register(store, NAME, info, run_id, tags).version)
        paths[version] = store.local_path(store.resolve(NAME, version))
    return store, paths, first


def time_call(fn: Any, target_s: float = 0.25, repeats: int = 5) -> float:
    """Best seconds per call over ``repeats`` timed loops of about ``target_s`` each.

    The best loop, not the median: it is the least disturbed by other work on the machine and
    gives the serving goals the highest (strictest) in-process reference."""
    for _ in range(20):
        fn()
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < 0.05:
        fn()
        n += 1
    per = (time.perf_counter() - start) / n
    loops = max(10, int(target_s / per))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        samples.append((time.perf_counter() - start) / loops)
    return float(min(samples))


def in_process(model: Any, local_dir: str, quick: bool) -> dict:
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(1)
    x1 = torch.from_numpy(rng.random((1, N_IN), dtype=np.float32))
    xb = torch.from_numpy(rng.random((BATCH_ROWS, N_IN), dtype=np.float32))
    target = 0.1 if quick else 0.25
    out: dict[str, float] = {}
    with torch.inference_mode():
        out["eager_1_us"] = time_call(lambda: model(x1), target) * 1e6
        out["eager_256_us"] = time_call(lambda: model(xb), target) * 1e6
    out["eager_256_rows_s"] = BATCH_ROWS / out["eager_256_us"] * 1e6
    try:  # the served artifact as mlflow.pytorch.load_model gives it (ExportedProgram.module())
        import mlflow.pytorch

        loaded = mlflow.pytorch.load_model(local_dir)
        with torch.inference_mode():
            out["pt2_1_us"] = time_call(lambda: loaded(x1), target) * 1e6
            out["pt2_256_us"] = time_call(lambda: loaded(xb), target) * 1e6
    except Exception as err:  # informative only
        log(f"pt2 in-process timing skipped: {type(err).__name__}: {err}")
    return out


# -- request bodies -------------------------------------------------------------------------------
def make_bodies(tmp: Path) -> dict[str, Any]:
    rng = np.random.default_rng(2)
    one = np.round(rng.standard_normal((1, N_IN)).astype(np.float32), 6)
    many = np.round(rng.standard_normal((BATCH_ROWS, N_IN)).astype(np.float32), 6)
    buf = io.BytesIO()
    np.save(buf, many.astype(np.float32), allow_pickle=False)
    bodies = {
        "mlflow_1": json.dumps({"inputs": one.tolist()}).encode(),
        "mlflow_256": json.dumps({"inputs": many.tolist()}).encode(),
        "ours_1": json.dumps({"instances": one.tolist()}).encode(),
        "ours_256": json.dumps({"instances": many.tolist()}).encode(),
        "ours_npy": buf.getvalue(),
    }
    files = {}
    for key, data in bodies.items():
        path = tmp / f"body_{key}.bin"
        path.write_bytes(data)
        files[key] = str(path)
    return {"bytes": bodies, "files": files, "x1": one, "x256": many}


def check_outputs(model: Any, x: np.ndarray, status: int, headers: dict, data: bytes) -> str:
    """'ok', or why the answer is not the model's output for ``x`` (a 200 must also be right)."""
    import torch

    if status != 200:
        return f"HTTP {status}: {data[:200]!r}"
    with torch.inference_mode():
        expected = model(torch.from_numpy(x.astype(np.float32))).numpy()
    ctype = headers.get("content-type", "")
    try:
        if "npy" in ctype or data[:6] == b"\x93NUMPY":
            got = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            doc = json.loads(data)
            if isinstance(doc, dict):
                for key in ("predictions", "outputs", "outputs_raw"):
                    if key in doc:
                        doc = doc[key]
                        break
            got = np.asarray(doc, dtype=np.float32)
    except Exception as err:
        return f"unreadable answer ({type(err).__name__}): {data[:200]!r}"
    if got.shape != expected.shape:
        return f"shape {got.shape}, expected {expected.shape}"
    if not np.allclose(got, expected, atol=1e-4, rtol=1e-4):
        return f"outputs differ from the model's by up to {np.abs(got - expected).max():.3g}"
    return "ok"


# -- load generation ------------------------------------------------------------------------------
WRK_LUA = r"""
-- args: body file, content type, bearer token ("" for none), accept ("" for none)
function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = args[2]
  if args[3] ~= nil and args[3] ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. args[3]
  end
  if args[4] ~= nil and args[4] ~= "" then
    wrk.headers["Accept"] = args[4]
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "mean_us": %.1f, "p50_us": %d, ' ..
    '"p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""


class Loader:
    """Runs one bounded load (wrk or the Python client) at a time against a server."""

    def __init__(self, tmp: Path, force_python: bool = False):
        self.wrk = None if force_python else shutil.which("wrk")
        self.script = tmp / "post.lua"
        self.script.write_text(WRK_LUA)

    @property
    def tool(self) -> str:
        return "wrk (1 thread)" if self.wrk else "python (bench/_load.py, 1 thread)"

    def run(
        self,
        port: int,
        path: str,
        body_file: str,
        ctype: str,
        token: str,
        conns: int,
        seconds: float,
        rows: int = 1,
        accept: str = "",
    ) -> dict:
        if self.wrk:
            result = self._wrk(port, path, body_file, ctype, token, conns, seconds, accept)
        else:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            if accept:
                headers["Accept"] = accept
            body = Path(body_file).read_bytes()
            result = _load.run(HOST, port, path, body, ctype, headers, conns, seconds)
        result["conns"] = conns
        result["rows_s"] = result["req_s"] * rows
        return result

    def _wrk(
        self,
        port: int,
        path: str,
        body_file: str,
        ctype: str,
        token: str,
        conns: int,
        seconds: float,
        accept: str,
    ) -> dict:
        cmd = [
            self.wrk,
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "-s",
            str(self.script),
            f"http://{HOST}:{port}{path}",
            "--",
            body_file,
            ctype,
            token,
            accept,
        ]
        proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=seconds + 30)
        finally:
            forget(proc)
        line = next((ln for ln in out.splitlines() if ln.startswith("WRK_JSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk gave no summary: {out[-500:]}")
        w = json.loads(line[len("WRK_JSON ") :])
        secs = w["duration_us"] / 1e6
        errors = w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"]
        ok = w["requests"] - w["status"]
        return {
            "tool": "wrk",
            "requests": w["requests"],
            "seconds": secs,
            "req_s": ok / secs if secs else 0.0,
            "errors": errors,
            "p50_ms": w["p50_us"] / 1e3,
            "p99_ms": w["p99_us"] / 1e3,
            "mean_ms": w["mean_us"] / 1e3,
        }


def fmt_load(r: dict) -> str:
    return (
        f"{r['req_s']:.0f} req/s ({r['rows_s']:.0f} rows/s), p50 {r['p50_ms']:.1f} ms, "
        f"p99 {r['p99_ms']:.1f} ms, errors {r['errors']}"
    )


# -- mlflow models serve ---------------------------------------------------------------------
def bench_mlflow(
    out: dict, local_dir: str, bodies: dict, loader: Loader, tmp: Path, seconds: float, model: Any
) -> dict:
    """Fills ``out`` as it goes, so a run cut short keeps what it measured."""
    port = free_port()
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    logfile = (tmp / "mlflow-serve.log").open("wb")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    cmd = [mlflow_bin, "models", "serve", "-m", local_dir, "--env-manager", "local"]
    cmd += ["-h", HOST, "-p", str(port)]
    log(f"mlflow: starting `mlflow models serve` on port {port}")
    headers = {"Content-Type": "application/json"}
    t0 = time.perf_counter()
    proc = spawn(cmd, stdout=logfile, stderr=subprocess.STDOUT, env=env, cwd=str(tmp))
    out["cmd"] = " ".join(cmd[1:])
    try:
        first = wait_200(
            port,
            "/invocations",
            bodies["bytes"]["mlflow_1"],
            headers["Content-Type"],
            {},
            timeout=60,
            proc=proc,
        )
        if first is None:
            tail = (tmp / "mlflow-serve.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"mlflow models serve never answered 200:\n{tail}")
        out["start_s"] = first - t0
        log(f"mlflow: start → first 200 in {out['start_s']:.2f} s")
        status, hdrs, data = post(
            port, "/invocations", bodies["bytes"]["mlflow_256"], "application/json", {}
        )
        out["check"] = check_outputs(model, bodies["x256"], status, hdrs, data)
        log(f"mlflow: 256-row answer check: {out['check']}")
        loader.run(
            port,
            "/invocations",
            bodies["files"]["mlflow_1"],
            "application/json",
            "",
            16,
            min(1.0, seconds),
        )  # warm-up, discarded
        out["single"] = loader.run(
            port, "/invocations", bodies["files"]["mlflow_1"], "application/json", "", 16, seconds
        )
        log(f"mlflow: 1-row JSON, 16 conn: {fmt_load(out['single'])}")
        out["batch"] = loader.run(
            port,
            "/invocations",
            bodies["files"]["mlflow_256"],
            "application/json",
            "",
            4,
            seconds,
            rows=BATCH_ROWS,
        )
        log(f"mlflow: 256-row JSON, 4 conn: {fmt_load(out['batch'])}")
    finally:
        stop_pid(proc.pid, group=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        forget(proc)
        logfile.close()
    return out


# -- kernel-magics ------------------------------------------------------------------------------
def _port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1].split("/")[0])


def _server_pids(status: dict | None) -> set[int]:
    """The supervisor's and workers' PIDs as far as the status answer tells them."""
    pids: set[int] = set()
    if not status:
        return pids
    if isinstance(status.get("pid"), int):
        pids.add(status["pid"])
    workers = status.get("workers")
    if isinstance(workers, list):
        for w in workers:
            if isinstance(w, dict) and isinstance(w.get("pid"), int):
                pids.add(w["pid"])
            elif isinstance(w, int):
                pids.add(w)
    return pids


def load_warm(answer: dict) -> dict:
    """``load_ms``/``warm_ms`` of a deploy answer: top level, or the slowest worker's when the
    answer lists workers (they load in parallel); None where the answer does not say."""
    out: dict[str, Any] = {}
    for key in ("load_ms", "warm_ms"):
        value = answer.get(key)
        if not isinstance(value, int | float):
            per = [
                w.get(key)
                for w in (answer.get("workers") or [])
                if isinstance(w, dict) and isinstance(w.get(key), int | float)
            ]
            value = max(per) if per else None
        out[key] = value
    return out


class Ours:
    """kernel-magics' inference process in the benchmark's home folder."""

    def __init__(self, settings: Any):
        from kernel_magics import api

        self.api = api
        self.s = settings
        self.pids: set[int] = set()
        self.token = ""

    def _remember_pids(self) -> None:
        with contextlib.suppress(Exception):
            self.pids |= _server_pids(self.api.server_status(settings=self.s))

    def predict_path(self) -> str:
        return f"/v1/models/{NAME}:predict"

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def deploy_to_first_200(self, ref: str, body: bytes) -> dict:
        t0 = time.perf_counter()
        answer = self.api.deploy(ref, settings=self.s)
        t_call = time.perf_counter()
        port = _port_of(answer["url"])
        self.token = self.api.server_token(settings=self.s)  # a file read
        first = wait_200(
            port,
            self.predict_path(),
            body,
            "application/json",
            self.auth(),
            timeout=30,
            interval=0.002,
        )
        self._remember_pids()
        if first is None:
            raise RuntimeError(f"{ref} deployed but :predict never answered 200")
        return {
            "first_200_s": first - t0,
            "deploy_call_s": t_call - t0,
            **self.load_warm(answer),
            "port": port,
        }

    def load_warm(self, answer: dict) -> dict:
        """``load_warm(answer)``; a ``warm_ms`` the answer lacks is taken from the live model's
        description in the status (``GET /v1/models``), when it is the version just made live."""
        out = load_warm(answer)
        if out["warm_ms"] is None:
            with contextlib.suppress(Exception):
                status = self.api.server_status(settings=self.s) or {}
                live = (status.get("models") or {}).get(NAME) or {}
                if str(live.get("version")) == str(answer.get("version")):
                    if isinstance(live.get("warm_ms"), int | float):
                        out["warm_ms"] = live["warm_ms"]
                        out["warm_from"] = "status"
        return out

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._remember_pids()
        with contextlib.suppress(Exception):
            self.api.server_stop(settings=self.s)
        for pid in sorted(self.pids):  # anything the product's stop left behind
            if _is_inference_process(pid):
                log(f"ours: PID {pid} still alive after server_stop; stopping it")
                stop_pid(pid)
        self.pids.clear()

    def wait_idle_ready(self, timeout: float = 20.0) -> None:
        """After ``server_start``: wait until the status says ready (workers up), as after the
        pre-start that ``%load_ext`` does while the user is still writing the notebook."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = None
            with contextlib.suppress(Exception):
                st = self.api.server_status(settings=self.s)
            state = str((st or {}).get("status", "")).lower()
            if st and state in ("ready", "running", "ok", "serving", "idle", "up"):
                self.pids |= _server_pids(st)
                return
            time.sleep(0.1)
        log("ours: the inference process did not report ready; measuring anyway")


def bench_ours(
    out: dict,
    settings: Any,
    bodies: dict,
    loader: Loader,
    tmp: Path,
    seconds: float,
    model: Any,
    swap_phase_s: float,
) -> dict:
    """Fills ``out`` as it goes, so a run cut short keeps what it measured."""
    ours = Ours(settings)
    body1 = bodies["bytes"]["ours_1"]
    try:
        if ours.api.server_status(settings=settings):
            ours.stop()
        # (a) nothing running: deploy starts the process, loads, warms, serves.
        log("ours: (a) cold deploy with no inference process")
        out["cold_a"] = ours.deploy_to_first_200(f"{NAME}@1", body1)
        log(
            f"ours: (a) deploy → first 200 in {out['cold_a']['first_200_s']:.2f} s "
            f"(call {out['cold_a']['deploy_call_s']:.2f} s)"
        )
        # (b) process started ahead, as %load_ext does by default (autostart); model not loaded.
        ours.api.undeploy(NAME, settings=settings)
        ours.stop()
        log("ours: (b) pre-starting the inference process")
        ours.api.server_start(settings=settings)
        ours.wait_idle_ready()
        time.sleep(1.0)  # let the fresh processes settle, as a notebook's idle time would
        out["cold_b"] = ours.deploy_to_first_200(f"{NAME}@1", body1)
        port = out["cold_b"]["port"]
        log(
            f"ours: (b) deploy → first 200 in {out['cold_b']['first_200_s']:.3f} s "
            f"(call {out['cold_b']['deploy_call_s']:.3f} s)"
        )
        status = ours.api.server_status(settings=settings) or {}
        out["server"] = {k: status.get(k) for k in ("workers", "status") if k in status}
        path, tok = ours.predict_path(), ours.token
        st, hdrs, data = post(
            port, path, bodies["bytes"]["ours_256"], "application/json", ours.auth()
        )
        out["check_json"] = check_outputs(model, bodies["x256"], st, hdrs, data)
        st, hdrs, data = post(
            port,
            path,
            bodies["bytes"]["ours_npy"],
            "application/x-npy",
            {**ours.auth(), "Accept": "application/x-npy"},
        )
        out["check_npy"] = check_outputs(model, bodies["x256"], st, hdrs, data)
        log(f"ours: 256-row answer check: JSON {out['check_json']}, npy {out['check_npy']}")
        files = bodies["files"]
        loader.run(port, path, files["ours_1"], "application/json", tok, 16, min(1.0, seconds))
        out["single"] = loader.run(
            port, path, files["ours_1"], "application/json", tok, 16, seconds
        )
        log(f"ours: 1-row JSON, 16 conn: {fmt_load(out['single'])}")
        out["batch_json"] = loader.run(
            port, path, files["ours_256"], "application/json", tok, 4, seconds, rows=BATCH_ROWS
        )
        log(f"ours: 256-row JSON, 4 conn: {fmt_load(out['batch_json'])}")
        out["batch_npy"] = loader.run(
            port,
            path,
            files["ours_npy"],
            "application/x-npy",
            tok,
            4,
            seconds,
            rows=BATCH_ROWS,
            accept="application/x-npy",
        )
        log(f"ours: 256-row npy, 4 conn: {fmt_load(out['batch_npy'])}")
        out["swap"] = swap_under_load(ours, port, files["ours_1"], tmp, swap_phase_s)
    finally:
        ours.stop()
    return out


def swap_under_load(ours: Ours, port: int, body_file: str, tmp: Path, phase_s: float) -> dict:
    """Deploy v2 then roll back to v1 while 16 connections send 1-row requests non-stop."""
    result_file = tmp / "swap.json"
    cmd = [
        sys.executable,
        str(HERE / "_load.py"),
        "--port",
        str(port),
        "--path",
        ours.predict_path(),
        "--body-file",
        body_file,
        "--header",
        f"Authorization: Bearer {ours.token}",
        "--conns",
        "16",
        "--max-seconds",
        str(6 * phase_s + 30),
        "--out",
        str(result_file),
    ]
    log("ours: swap under load (deploy v2, then rollback to v1)")
    proc = spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    calls: dict[str, Any] = {}
    try:
        assert proc.stdout is not None and proc.stdin is not None
        proc.stdout.readline()  # "started"
        time.sleep(phase_s)
        for key, fn in (
            ("deploy", lambda: ours.api.deploy(f"{NAME}@2", settings=ours.s)),
            ("rollback", lambda: ours.api.rollback(NAME, settings=ours.s)),
        ):
            called = time.monotonic()
            answer = fn()
            returned = time.monotonic()
            returned_wall = time.time()  # same clock as the answer's ready_at (every process)
            calls[key] = {"called": called, "returned": returned, "answer": answer}
            ready_at = answer.get("ready_at")
            if isinstance(ready_at, int | float):
                calls[key]["after_ready_ms"] = (returned_wall - ready_at) * 1e3
            calls[key]["lw"] = ours.load_warm(answer)  # after the timing: one status request
            time.sleep(phase_s)
        proc.stdin.close()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            stop_pid(proc.pid, group=True)
        forget(proc)
    rec = json.loads(result_file.read_text())
    events = rec["events"]

    def version_of(answer: dict) -> str:
        return str(answer.get("version", "")).lstrip("v")

    out: dict[str, Any] = {
        "responses": len(events),
        "failed": sum(1 for _, _, status, _ in events if status != 200),
        "load_p99_ms": rec.get("p99_ms"),
    }
    windows = {
        "deploy": (calls["deploy"]["returned"], calls["rollback"]["called"]),
        "rollback": (calls["rollback"]["returned"], float("inf")),
    }
    for key, call in calls.items():
        answer = call["answer"]
        want = version_of(answer)
        lo, hi = windows[key]
        after = [(ts, t, v.lstrip("v")) for ts, t, st, v in events if lo < t < hi and st == 200]
        stale = [t - lo for _, t, v in after if v != want]
        # causal view: requests *sent* after the call returned (none was in flight at the swap)
        sent_after = [v for ts, _, v in after if ts > lo]
        lw = call["lw"]
        load_ms, warm_ms = lw["load_ms"], lw["warm_ms"]
        call_ms = (call["returned"] - call["called"]) * 1e3
        known = [x for x in (load_ms, warm_ms) if isinstance(x, int | float)]
        out[key] = {
            "to_version": want,
            "call_ms": call_ms,
            "load_ms": load_ms,
            "warm_ms": warm_ms,
            "overhead_ms": call_ms - sum(known) if known else None,
            # the goal as stated: from "loaded and warm in every worker" to "the call returned"
            "after_ready_ms": call.get("after_ready_ms"),
            "responses_after": len(after),
            "stale_after": len(stale),
            "stale_last_ms": max(stale) * 1e3 if stale else None,
            "versions_after": sorted({v for _, _, v in after}),
            "sent_after": len(sent_after),
            "stale_sent_after": sum(1 for v in sent_after if v != want),
        }
        o = out[key]
        log(
            f"ours: {key} → v{want}: call {call_ms:.0f} ms (load {load_ms}, warm {warm_ms}), "
            f"{o['responses_after']} responses after it returned, {o['stale_after']} stale"
            + (f" (last {o['stale_last_ms']:.1f} ms after)" if o["stale_after"] else "")
        )
    log(f"ours: swap window: {out['responses']} responses, {out['failed']} failed")
    return out


# -- the table ------------------------------------------------------------------------------------
def _num(x: Any, spec: str = ".0f", unit: str = "") -> str:
    if x is None:
        return "n/a"
    return f"{x:{spec}}{unit}"


def _get(d: dict | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**PASS**" if ok else "**FAIL**")


def build_table(r: dict) -> str:
    m, o, ip = r.get("mlflow") or {}, r.get("ours") or {}, r.get("inproc") or {}
    rows: list[tuple[str, str, str, str, str, str]] = []

    def ratio(a: Any, b: Any) -> float | None:
        return a / b if isinstance(a, int | float) and isinstance(b, int | float) and b else None

    # single-row throughput and p99
    m_rps, o_rps = _get(m, "single", "req_s"), _get(o, "single", "req_s")
    x = ratio(o_rps, m_rps)
    rows.append(
        (
            "1-row JSON, 16 conn: req/s",
            _num(m_rps),
            _num(o_rps),
            _num(x, ".1f", "×"),
            "ours ≥ 8× mlflow",
            _verdict(None if x is None else x >= 8),
        )
    )
    m_p99, o_p99 = _get(m, "single", "p99_ms"), _get(o, "single", "p99_ms")
    x = ratio(o_p99, m_p99)
    rows.append(
        (
            "1-row JSON, 16 conn: p99 latency",
            _num(m_p99, ".1f", " ms"),
            _num(o_p99, ".2f", " ms"),
            _num(x, ".3f", "×"),
            "ours ≤ 1/10 mlflow",
            _verdict(None if x is None else x <= 0.10),
        )
    )
    # 256 rows
    m_b, o_j, o_n = _get(m, "batch"), _get(o, "batch_json"), _get(o, "batch_npy")
    rows.append(
        (
            "256-row JSON, 4 conn: req/s (p99)",
            f"{_num(_get(m_b, 'req_s'))} ({_num(_get(m_b, 'p99_ms'), '.1f', ' ms')})",
            f"{_num(_get(o_j, 'req_s'))} ({_num(_get(o_j, 'p99_ms'), '.1f', ' ms')})",
            _num(ratio(_get(o_j, "req_s"), _get(m_b, "req_s")), ".1f", "×"),
            "—",
            "info",
        )
    )
    rows.append(
        (
            "256-row JSON, 4 conn: rows/s",
            _num(_get(m_b, "rows_s")),
            _num(_get(o_j, "rows_s")),
            _num(ratio(_get(o_j, "rows_s"), _get(m_b, "rows_s")), ".1f", "×"),
            "—",
            "info",
        )
    )
    rows.append(
        (
            "256-row npy, 4 conn: rows/s (p99)",
            "not supported",
            f"{_num(_get(o_n, 'rows_s'))} ({_num(_get(o_n, 'p99_ms'), '.1f', ' ms')})",
            "—",
            "—",
            "info",
        )
    )
    best = max(
        (v for v in (_get(o_j, "rows_s"), _get(o_n, "rows_s")) if v is not None), default=None
    )
    inproc = ip.get("eager_256_rows_s")
    x = ratio(best, inproc)
    m_frac = ratio(_get(m_b, "rows_s"), inproc)
    rows.append(
        (
            f"256-row best rows/s vs in-process ({_num(inproc)} rows/s, 1 thread)",
            _num(m_frac, ".1%"),
            f"{_num(best)} = {_num(x, '.1%')}",
            _num(x, ".1%"),
            "ours ≥ 40%",
            _verdict(None if x is None else x >= 0.40),
        )
    )
    # swap under load
    sw = _get(o, "swap")
    if sw:
        post_ok = all(
            _get(sw, k, "stale_after") == 0 and (_get(sw, k, "responses_after") or 0) > 0
            for k in ("deploy", "rollback")
        )
        overheads = [_get(sw, k, "overhead_ms") for k in ("deploy", "rollback")]
        over = [v for v in overheads if v is not None]
        has_lw = any(_get(sw, k, "load_ms") is not None for k in ("deploy", "rollback"))
        calls = [_get(sw, k, "call_ms") for k in ("deploy", "rollback")]
        rows.append(
            (
                "swap under 1-row load (16 conn): failed requests",
                "restart (no service)",
                f"{sw['failed']} of {sw['responses']}",
                "—",
                "0",
                _verdict(sw["failed"] == 0),
            )
        )
        rows.append(
            (
                "swap: responses after the call returned from the new version",
                "—",
                "deploy {}/{} v{}, rollback {}/{} v{}".format(
                    _get(sw, "deploy", "responses_after") - _get(sw, "deploy", "stale_after"),
                    _get(sw, "deploy", "responses_after"),
                    _get(sw, "deploy", "to_version"),
                    _get(sw, "rollback", "responses_after") - _get(sw, "rollback", "stale_after"),
                    _get(sw, "rollback", "responses_after"),
                    _get(sw, "rollback", "to_version"),
                ),
                "—",
                "all",
                _verdict(post_ok),
            )
        )
        after_ready = [_get(sw, k, "after_ready_ms") for k in ("deploy", "rollback")]
        if all(isinstance(v, int | float) for v in after_ready):
            label, shown, values = "loaded+warm → call returned", after_ready, after_ready
        elif has_lw:
            label, shown, values = "call − (load+warm)", over, overheads
        else:
            label, shown, values = "call duration (no load/warm reported)", calls, calls
        rows.append(
            (
                f"swap: {label}, deploy / rollback",
                "—",
                " / ".join(_num(v, ".0f", " ms") for v in values),
                "—",
                "≤ 200 ms",
                _verdict(None if not shown else all(v <= 200 for v in shown if v is not None)),
            )
        )
    else:
        rows.append(("swap under load", "restart (no service)", "n/a", "—", "0 failed", "n/a"))
    # cold start
    m_start = m.get("start_s")
    # (b) is the product's default path: %load_ext starts the process (autostart), so a
    # notebook's first %deploy finds it running; (a), no process at all (autostart off, or a
    # script's first call), pays ~3 s of torch imports in the worker and is shown for reference.
    for key, label, judged in (
        ("cold_a", "(a) no process (autostart off)", False),
        ("cold_b", "(b) %deploy after %load_ext (autostart, default)", True),
    ):
        v = _get(o, key, "first_200_s")
        x = ratio(v, m_start)
        rows.append(
            (
                f"start/deploy → first 200 OK, ours {label}",
                _num(m_start, ".2f", " s"),
                _num(v, ".3f", " s"),
                _num(x, ".3f", "×"),
                "ours ≤ 1/4 mlflow" if judged else "—",
                _verdict(None if x is None else x <= 0.25) if judged else "info",
            )
        )

    head = (
        "| metric | mlflow models serve | kernel-magics | ours / mlflow | goal | result |\n"
        "|---|---|---|---|---|---|\n"
    )
    body = "".join(f"| {' | '.join(row)} |\n" for row in rows)
    meta = r.get("meta", {})
    notes = [
        f"Loopback on {meta.get('cores')} cores shared by client and server (no isolation); "
        f"load: {meta.get('tool')}; {meta.get('duration_s')} s per scenario"
        + (" (--quick: smoke figures)" if meta.get("quick") else "")
        + f"; 1-min load average {meta.get('loadavg_start')} before the run, "
        f"{meta.get('loadavg_end')} after it (above ~0.5 before: other work competed for the "
        "cores, and every figure, the in-process one too, is below what the machine can do).",
        "In-process forward (eager, torch.set_num_threads(1), inference_mode): "
        f"1 row {_num(ip.get('eager_1_us'), '.1f', ' µs')}, 256 rows "
        f"{_num(ip.get('eager_256_us'), '.0f', ' µs')} ({_num(inproc)} rows/s); the pt2 artifact "
        f"via mlflow.pytorch.load_model: 1 row {_num(ip.get('pt2_1_us'), '.1f', ' µs')}, "
        f"256 rows {_num(ip.get('pt2_256_us'), '.0f', ' µs')}.",
    ]
    if m.get("reused"):
        notes.append(
            f"mlflow figures reused from {m.get('measured', 'an earlier run')} "
            f"({m.get('measured_with', 'unknown load generator')}; --skip-mlflow)."
        )
    if o.get("server"):
        notes.append(
            f"kernel-magics inference process: {json.dumps(o['server'])}; "
            f"settings: {json.dumps(meta.get('settings', {}))}."
        )
    for key in ("cold_a", "cold_b"):
        c = _get(o, key)
        if c:
            notes.append(
                f"Deploy {key[-1]}: api.deploy returned after {c['deploy_call_s']:.3f} s "
                f"(load {c.get('load_ms')} ms, warm {c.get('warm_ms')} ms)."
            )
    checks = [
        f"mlflow {m.get('check')}" if m.get("check") else None,
        f"ours JSON {o.get('check_json')}" if o.get("check_json") else None,
        f"ours npy {o.get('check_npy')}" if o.get("check_npy") else None,
    ]
    if any(checks):
        notes.append(
            "256-row answers against the model's own outputs: "
            + ", ".join(c for c in checks if c)
            + "."
        )
    for k in ("deploy", "rollback"):
        c = _get(o, "swap", k)
        if c:
            notes.append(
                f"Swap {k} → v{c['to_version']} under load: call {c['call_ms']:.0f} ms = load "
                f"{_num(c['load_ms'], '.0f', ' ms')} (deploy answer, slowest worker) + warm "
                f"{_num(c['warm_ms'], '.1f', ' ms')} (live model's status) + the rest "
                "(store lookups, hash check, alias write, activation); from loaded and warm "
                f"to returned: {_num(c.get('after_ready_ms'), '.0f', ' ms')}."
            )
        if c and c.get("stale_after"):
            causal = c.get("stale_sent_after") or 0
            notes.append(
                f"Swap {k}: {c['stale_after']} response(s) from the old version arrived after the "
                f"call returned, the last {c['stale_last_ms']:.1f} ms after; of the "
                f"{c.get('sent_after')} requests sent after it returned, {causal} got the old "
                "version"
                + (
                    " (the stale ones were requests already in flight at the swap)."
                    if not causal
                    else "."
                )
            )
    errs = [
        f"{who} {k}: {_get(d, k, 'errors')}"
        for who, d in (("mlflow", m), ("ours", o))
        for k in ("single", "batch", "batch_json", "batch_npy")
        if (_get(d, k, "errors") or 0) > 0
    ]
    if errs:
        notes.append("Load errors: " + ", ".join(errs) + ".")
    notes += r.get("notes", [])
    title = f"## Serving benchmark ({meta.get('date', '')})\n\n"
    return title + head + body + "\n" + "".join(f"- {n}\n" for n in notes)


# -- main -----------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="kernel-magics serving benchmark (≤ 3 minutes)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per scenario (≤ 10)")
    p.add_argument("--quick", action="store_true", help="2 s scenarios: a smoke check")
    p.add_argument(
        "--skip-mlflow",
        action="store_true",
        help="reuse the mlflow figures from bench/results.json if present",
    )
    p.add_argument("--python-client", action="store_true", help="do not use wrk even if present")
    p.add_argument("--keep-home", action="store_true", help="keep the temporary home folder")
    args = p.parse_args(argv)
    seconds = 2.0 if args.quick else min(max(args.duration, 1.0), 10.0)
    swap_phase_s = 0.75 if args.quick else 1.5

    started = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TOTAL_BUDGET_S)
    signal.signal(signal.SIGTERM, _terminated)

    tmp = Path(tempfile.mkdtemp(prefix="km-bench-"))
    home = tmp / "home"
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["KERNEL_MAGICS_HOME"] = str(home)
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

    previous = {}
    if RESULTS_JSON.is_file():
        with contextlib.suppress(Exception):
            previous = json.loads(RESULTS_JSON.read_text())

    loader = Loader(tmp, force_python=args.python_client)
    results: dict[str, Any] = {
        "meta": {
            "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "cores": os.cpu_count(),
            "tool": loader.tool,
            "duration_s": seconds,
            "quick": args.quick,
            "loadavg_start": round(os.getloadavg()[0], 2),
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
        _, paths, model = register_versions(settings)
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
            except OutOfTime:
                raise
            except Exception as err:
                code = 1
                results["notes"].append(f"mlflow models serve failed: {err}")
                log(f"mlflow: FAILED: {err}")

        try:
            import kernel_magics.serving.client  # noqa: F401
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
            except OutOfTime:
                raise
            except Exception as err:
                code = 1
                results["notes"].append(f"kernel-magics run failed: {type(err).__name__}: {err}")
                log(f"ours: FAILED: {type(err).__name__}: {err}")
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
    table = build_table(results)
    print()
    print(table)
    RESULTS_MD.write_text(table)

    def complete(m: Any) -> bool:
        return isinstance(m, dict) and all(k in m for k in ("start_s", "single", "batch"))

    if not complete(results.get("mlflow")) and complete(previous.get("mlflow")):
        # keep the last complete figures for --skip-mlflow; this run's partial ones beside them
        results["mlflow_this_run"] = results.get("mlflow")
        results["mlflow"] = previous["mlflow"]
    RESULTS_JSON.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
