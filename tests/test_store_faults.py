"""Store faults: parallel writers on one SQLite store, an unreachable store, a full disk."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kit.children import TRAIN_SCRIPT, child_env, last_json

from kernel_magics.config import load_settings
from kernel_magics.store import Store


def test_four_parallel_trainings_lose_nothing(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TRAIN_SCRIPT, str(seed), "shared"],
            env=child_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        assert "database is locked" not in out + err
        results.append(last_json(out))
    store = Store(load_settings(home=tmp_path, tracking_uri=""))
    versions = store.versions("shared")
    assert sorted(v.version for v in versions) == [1, 2, 3, 4]
    assert sorted(r["version"] for r in results) == [1, 2, 3, 4]
    assert {v.run_id for v in versions} == {r["run_id"] for r in results}
    assert all(v.sha256 for v in versions)


def test_unreachable_store_is_a_clear_error(tmp_path: Path) -> None:
    # A tracking server that is not there: nothing listens on port 9 (discard) on loopback.
    env = child_env(
        tmp_path,
        MLFLOW_TRACKING_URI="http://127.0.0.1:9",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
    )
    proc = subprocess.run(
        [sys.executable, "-c", TRAIN_SCRIPT, "0", "remote"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    answer = last_json(proc.stdout)
    assert answer["kind"] == "StoreError"
    assert "model store" in answer["error"] and "\n" not in answer["error"]


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics are Linux's")
def test_full_disk_registers_nothing(tmp_path: Path) -> None:
    # The store is created first; then a child whose file writes stop at a few KB (the kernel
    # answers EFBIG, like ENOSPC on a full disk) tries to train and log its model.
    store = Store(load_settings(home=tmp_path, tracking_uri=""))
    store.experiment_id()
    # 16 KiB per file: the pt2 model file (~30 KiB) cannot be written, nor can the database grow.
    limiter = (
        "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        "resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", limiter + TRAIN_SCRIPT, "0", "full"],
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    answer = last_json(proc.stdout)
    assert answer["kind"] == "StoreError" and "\n" not in answer["error"]
    assert not store.model_exists("full") or store.versions("full") == []
    # the store is still usable afterwards
    assert store.model_names() == [] or "full" in store.model_names()
