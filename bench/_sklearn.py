"""``bench/serving.py --scenario sklearn``: scikit-learn models served by kernel-magics and by
``mlflow models serve`` (sklearn flavor) on the same version folder.

Two models on scikit-learn's bundled digits (64 float features, 10 classes): an
``MLPClassifier((64,))`` and ``StandardScaler + RandomForestClassifier(50)``, each registered
as ``%register`` does (converted to ONNX and checked, or served by the estimator with the
reason said: the table says which). For each: the 256-row answers of both servers checked
against the estimator (ours: its probabilities within the stated tolerance; mlflow's: its
labels), then 1-row JSON at 16 connections and 256-row JSON at 4 on both, and a 256-row
``.npy`` body on ours. Writes ``bench/results-sklearn.md`` and ``bench/results-sklearn.json``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _http import HOST, free_port, post, wait_200
from _load_tools import BATCH_JSON, BATCH_NPY, JSON, NPY, SINGLE_JSON, Endpoint, Loader
from _log import log
from _procs import forget, private_home, spawn, stop_children, stop_leftover_server, stop_pid

HERE = Path(__file__).resolve().parent
ROWS = 256
GOAL_REQ_S = 10.0  # ours / mlflow's 1-row req/s
GOAL_P99 = 0.1  # ours / mlflow's 1-row p99


def _models() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    return (
        X,
        y,
        {
            "sk-mlp": MLPClassifier((64,), max_iter=200, random_state=0).fit(X, y),
            "sk-forest": make_pipeline(
                StandardScaler(), RandomForestClassifier(50, random_state=0)
            ).fit(X, y),
        },
    )


def _bodies(tmp: Path, rows: np.ndarray) -> dict[str, str]:
    one = rows[:1].tolist()
    many = rows[:ROWS].tolist()
    buf = io.BytesIO()
    np.save(buf, rows[:ROWS].astype(np.float32), allow_pickle=False)
    content = {
        "mlflow_1": json.dumps({"inputs": one}).encode(),
        "mlflow_256": json.dumps({"inputs": many}).encode(),
        "ours_1": json.dumps({"instances": one}).encode(),
        "ours_256": json.dumps({"instances": many}).encode(),
        "ours_npy": buf.getvalue(),
    }
    files = {}
    for key, data in content.items():
        path = tmp / f"sk_body_{key}.bin"
        path.write_bytes(data)
        files[key] = str(path)
    return files


def _answer(data: bytes, ctype: str) -> np.ndarray:
    if "npy" in ctype:
        return np.load(io.BytesIO(data), allow_pickle=False)
    return np.asarray(json.loads(data)["predictions"])


def _mlflow(out: dict, folder: str, files: dict, loader: Loader, tmp: Path, s: float, est: Any,
            rows: np.ndarray, who: str) -> None:  # fmt: skip
    port = free_port()
    bin_dir = Path(sys.executable).parent
    log_path = tmp / f"{who}-serve.log"
    logfile = log_path.open("wb")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", folder, "--env-manager", "local"]
    proc = spawn(cmd + ["-h", HOST, "-p", str(port)], stdout=logfile, stderr=subprocess.STDOUT,
                 env=env, cwd=str(tmp))  # fmt: skip
    try:
        body = Path(files["mlflow_1"]).read_bytes()
        if wait_200(port, "/invocations", body, JSON, {}, timeout=90, proc=proc) is None:
            raise RuntimeError(log_path.read_text(errors="replace")[-1500:])
        status, _, data = post(port, "/invocations", Path(files["mlflow_256"]).read_bytes(),
                               JSON, {})  # fmt: skip
        labels = _answer(data, JSON) if status == 200 else None
        same = labels is not None and (labels == est.predict(rows[:ROWS])).all()
        out["check"] = "ok" if same else f"HTTP {status}: {data[:200]!r}"
        target = Endpoint(port, "/invocations")
        loader.warm_up(target, SINGLE_JSON, files["mlflow_1"], s)
        out["single"] = loader.measure(who, target, SINGLE_JSON, files["mlflow_1"], s)
        out["batch_json"] = loader.measure(who, target, BATCH_JSON, files["mlflow_256"], s)
    finally:
        stop_pid(proc.pid, group=True)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        forget(proc)
        logfile.close()


def _ours(out: dict, api: Any, name: str, files: dict, loader: Loader, s: float, est: Any,
          rows: np.ndarray, tolerance: float) -> None:  # fmt: skip
    answer = api.deploy(name)
    port = int(str(answer.url).rsplit(":", 1)[1].split("/")[0])
    token = api.server_token()
    path = f"/v1/models/{name}:predict"
    auth = {"Authorization": f"Bearer {token}"}
    # as the version takes them: float64 for an estimator served itself (its scaler then
    # computes in double, as on the training data), float32 within the tolerance for ONNX
    expected = est.predict_proba(rows[:ROWS].astype(np.float64))
    checks = []
    for key, ctype in (("ours_256", JSON), ("ours_npy", NPY)):
        status, hdrs, data = post(port, path, Path(files[key]).read_bytes(), ctype,
                                  {**auth, "Accept": ctype})  # fmt: skip
        got = _answer(data, hdrs.get("content-type", "")) if status == 200 else None
        diff = float(np.abs(got - expected).max()) if got is not None else None
        checks.append("ok" if diff is not None and diff <= tolerance else f"{status} {diff}")
    out["check"] = ", ".join(checks)
    who = f"ours {name}"
    target = Endpoint(port, path, token)
    loader.warm_up(target, SINGLE_JSON, files["ours_1"], s)
    out["single"] = loader.measure(who, target, SINGLE_JSON, files["ours_1"], s)
    out["batch_json"] = loader.measure(who, target, BATCH_JSON, files["ours_256"], s)
    out["batch_npy"] = loader.measure(who, target, BATCH_NPY, files["ours_npy"], s)


def bench_sklearn(seconds: float, force_python: bool, keep_home: bool) -> int:
    tmp, home = private_home("km-bench-sk-")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    loader = Loader(tmp, force_python=force_python)
    results: dict[str, Any] = {
        "meta": {
            "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "cores": os.cpu_count(),
            "tool": loader.tool,
            "duration_s": seconds,
            "loadavg_start": round(os.getloadavg()[0], 2),
        },
        "models": {},
    }
    started = time.monotonic()
    code = 0
    try:
        import mlflow

        from kernel_magics import api
        from kernel_magics.api._context import _store
        from kernel_magics.config import load_settings
        from kernel_magics.frameworks import TAG_CONVERSION

        settings = load_settings(home=home, tracking_uri="")
        X, _, estimators = _models()
        rows = X[-ROWS:]
        files = _bodies(tmp, rows)
        api.server_start()
        for name, est in estimators.items():
            entry: dict[str, Any] = results["models"].setdefault(name, {})
            r = api.register(est, X[:2], name=name, sample=X[:500])
            store = _store(settings)
            info = store.resolve(name, r.version)
            conversion = json.loads(info.tags[TAG_CONVERSION])
            entry["format"], entry["notes"] = r.format, r.notes
            tolerance = conversion.get("tolerance", 1e-9)
            log(f"{name}: registered as {r.format}: {r.notes[-1]}")
            with store.tracking():
                folder = mlflow.artifacts.download_artifacts(f"models:/{name}/{r.version}")
            entry["ours"], entry["mlflow"] = {}, {}
            _ours(entry["ours"], api, name, files, loader, seconds, est, rows, tolerance)
            _mlflow(entry["mlflow"], folder, files, loader, tmp, seconds, est, rows,
                    f"mlflow-{name}")  # fmt: skip
    except Exception as err:
        code = 1
        results["error"] = f"{type(err).__name__}: {err}"
        log(f"FAILED: {results['error']}")
    finally:
        with contextlib.suppress(Exception):
            from kernel_magics import api

            api.server_stop()
        stop_children()
        stop_leftover_server(home)
        results["meta"]["wall_s"] = round(time.monotonic() - started, 1)
        results["meta"]["loadavg_end"] = round(os.getloadavg()[0], 2)
        if not keep_home:
            shutil.rmtree(tmp, ignore_errors=True)
    _write(results)
    return code


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.1f}×" if a and b else "-"


def _write(results: dict) -> None:
    meta = results["meta"]
    lines = [
        "# scikit-learn serving: kernel-magics vs `mlflow models serve` (sklearn flavor)",
        "",
        f"`bench/serving.py --scenario sklearn`, {meta['date']}, {meta['cores']} cores, "
        f"load average {meta['loadavg_start']} → {meta['loadavg_end']}, {meta['tool']}, "
        f"{meta['duration_s']:g} s per scenario, {meta['wall_s']} s wall. Client and servers "
        "share the cores. Same version folder for both servers; 1-row scenarios at 16 "
        "connections, 256-row at 4. Goal: 1-row req/s ≥ 10× mlflow's, p99 ≤ 1/10.",
        "",
        "| model | served as | scenario | ours req/s | mlflow req/s | req/s ratio | ours p99 ms "
        "| mlflow p99 ms | p99 ratio | ours rows/s | mlflow rows/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in results["models"].items():
        ours, theirs = entry.get("ours", {}), entry.get("mlflow", {})
        for key, label in (("single", "1-row JSON"), ("batch_json", "256-row JSON"),
                           ("batch_npy", "256-row .npy (ours)")):  # fmt: skip
            o, m = ours.get(key) or {}, theirs.get(key) or {}
            if not o and not m:
                continue
            p99 = f"{o['p99_ms'] / m['p99_ms']:.3f}" if o and m and m.get("p99_ms") else "-"
            lines.append(
                f"| {name} | {entry.get('format', '?')} | {label} | {o.get('req_s', 0):.0f} | "
                f"{m.get('req_s', 0):.0f} | {_ratio(o.get('req_s'), m.get('req_s'))} | "
                f"{o.get('p99_ms', 0):.1f} | {m.get('p99_ms', 0):.1f} | {p99} | "
                f"{o.get('rows_s', 0):.0f} | {m.get('rows_s', 0):.0f} |"
            )
    lines += ["", "Answer checks (256 rows) and registration notes:", ""]
    for name, entry in results["models"].items():
        lines.append(
            f"- {name}: ours {entry.get('ours', {}).get('check', '-')}; mlflow "
            f"{entry.get('mlflow', {}).get('check', '-')}; {'; '.join(entry.get('notes', []))}"
        )
    if results.get("error"):
        lines.append(f"- the run failed: {results['error']}")
    text = "\n".join(lines) + "\n"
    (HERE / "results-sklearn.md").write_text(text)
    (HERE / "results-sklearn.json").write_text(json.dumps(results, indent=1, default=str))
    print(text)
