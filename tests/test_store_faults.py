"""Store faults: parallel writers on one SQLite store, an unreachable store, a full disk."""

from __future__ import annotations

import subprocess
import sys
import textwrap
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
    assert "model store" in answer["error"]
    assert "\n" not in answer["error"]


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
    assert answer["kind"] == "StoreError"
    assert "\n" not in answer["error"]
    assert not store.model_exists("full") or store.versions("full") == []
    # the store is still usable afterwards
    assert store.model_names() == [] or "full" in store.model_names()


# A store on a real, tiny file system: a 32 MiB tmpfs mounted in a mount namespace of the child's
# own (``unshare -rm``: no root needed where user namespaces are allowed). A first training
# succeeds; a ballast file then leaves 400 KiB free, less than the next model needs (a 1 MiB
# weight matrix), so saving it fails with the real "No space left on device" / "database or disk
# is full"; the ballast is removed and the same training is tried again.
DISK_FULL_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np, torch
    from kernel_magics import api
    from kernel_magics.config import load_settings
    from kernel_magics.errors import KernelMagicsError
    from kernel_magics.store import Store

    home = os.environ["KERNEL_MAGICS_HOME"]
    rng = np.random.default_rng(0)
    X = rng.random((200, 64), dtype=np.float32)
    y = (X[:, 0] > 0.5).astype(int)

    def net():
        torch.manual_seed(0)
        wide = torch.nn.Linear(64, 4096)  # 1 MiB of weights
        return torch.nn.Sequential(wide, torch.nn.ReLU(), torch.nn.Linear(4096, 2))

    api.train(net(), X, y, name="before", epochs=1, progress="none")
    models = os.path.join(home, "artifacts", "kernel-magics", "models")
    out = {"folders_before": len(os.listdir(models))}
    free = os.statvfs(home).f_bavail * os.statvfs(home).f_frsize
    with open(os.path.join(home, "ballast"), "wb") as fh:
        fh.write(bytes(max(0, free - 400 * 1024)))
    try:
        api.train(net(), X, y, name="full", epochs=1, progress="none")
        out["full"] = "trained"
    except KernelMagicsError as err:
        out["full"] = f"{type(err).__name__}: {err}"
    out["folders_after"] = len(os.listdir(models))
    store = Store(load_settings(), sweep=False)
    runs = store.client.search_runs([store.experiment_id()], "tags.`km.model` = 'full'")
    out["statuses"] = [r.info.status for r in runs]
    os.remove(os.path.join(home, "ballast"))  # space is back
    out["again"] = api.train(net(), X, y, name="full", epochs=1, progress="none").version
    print(json.dumps(out))
    """
)


def test_disk_full_during_training_fails_the_run_and_cleans_up(tmp_path: Path) -> None:
    mount = tmp_path / "disk"
    mount.mkdir()
    home = mount / "home"
    # the home made as the project makes one (0700): the run's one line is then the error alone
    script = (
        f"mount -t tmpfs -o size=32m,mode=0700 tmpfs {mount} && mkdir -m 0700 {home} && "
        f'exec {sys.executable} -c "$0"'
    )
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, DISK_FULL_SCRIPT],
        env=child_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == ""  # no MLflow or SQLAlchemy tracebacks: the error is one line
    out = last_json(proc.stdout)
    assert out["full"].startswith("StoreError: could not save the model to the store: ")
    assert "\n" not in out["full"]
    assert "disk is full" in out["full"] or "No space left on device" in out["full"]
    assert out["statuses"] == ["FAILED"]  # not RUNNING
    assert out["folders_after"] == out["folders_before"]  # the partial model folder is gone
    assert out["again"] == 1  # the next training works once space is back
