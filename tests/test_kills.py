"""Processes killed mid-operation (SIGKILL, by PID): a training, an optimization and a pipeline
run in real subprocesses against a real MLflow store in a temp home. What they leave: no version
without everything it carries, and runs that a sweep marks KILLED (``kernel-magics store
doctor``, or the next process that opens the store)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest
import torch

from kernel_magics import api
from kernel_magics.config import load_settings
from kernel_magics.orphans import TAG_KILLED, TAG_OWNER
from kernel_magics.pipelines import EXPERIMENT as PIPELINES
from kernel_magics.serving.process.pids import pid_alive
from kernel_magics.store import Store

TRAIN_FOREVER = textwrap.dedent(
    """
    import sys
    import numpy as np, torch
    from kernel_magics import api
    X = np.random.default_rng(0).normal(size=(2000, 16)).astype("float32")
    y = (X[:, 0] > 0).astype("int64")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    api.train(net, X, y, name=sys.argv[1], epochs=1_000_000, progress="none")
    """
)
OPTIMIZE = textwrap.dedent(
    """
    import sys
    from kernel_magics import api
    api.optimize(sys.argv[1], export="onnx", progress="none")
    """
)
WAIT_S = 240  # generous: two cores shared with other work; each wait ends as soon as it can


@pytest.fixture(scope="module")
def store(km_home: Path) -> Store:
    """The test's own view of the store: it does not sweep when it opens, so the tests see
    what the killed processes left."""
    return Store(load_settings(), sweep=False)


def python(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def kernel_magics(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kernel_magics.cli", *args],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )


def wait_for(what: str, found: Callable[[], Any], proc: subprocess.Popen | None = None) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(
                f"the process ended before {what}: {proc.stderr.read() if proc.stderr else ''}"
            )
        time.sleep(0.05)
    pytest.fail(f"no {what} within {WAIT_S} s")


def runs(store: Store, model: str, experiment: str | None = None) -> list[Any]:
    ids = [store.experiment_id(experiment)] if experiment else [store.experiment_id()]
    return store.client.search_runs(ids, filter_string=f"tags.`km.model` = '{model}'")


def running_with_a_metric(store: Store, model: str) -> Any:
    """The model's training run once it has logged an epoch (mid-training)."""
    for run in runs(store, model):
        if run.info.status == "RUNNING" and run.data.metrics:
            return run
    return None


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def reap() -> Iterator[list[subprocess.Popen]]:
    """Processes a test started: killed (by PID) and reaped whatever the test did."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_a_killed_training_is_marked_killed_by_the_doctor(store: Store, reap: list) -> None:
    trainer = python(TRAIN_FOREVER, "forever")
    reap.append(trainer)
    run = wait_for("epoch", lambda: running_with_a_metric(store, "forever"), trainer)
    host, pid, _ = run.data.tags[TAG_OWNER].split()
    assert int(pid) == trainer.pid  # the owner tag names the training process
    # while the owner runs, the doctor leaves its run alone
    done = kernel_magics("store", "doctor")
    assert done.returncode == 0, done
    assert done.stdout.strip() == "nothing to fix", done
    assert store.client.get_run(run.info.run_id).info.status == "RUNNING"

    kill(trainer.pid)
    trainer.wait(timeout=30)
    assert store.client.get_run(run.info.run_id).info.status == "RUNNING"  # what MLflow leaves
    done = kernel_magics("store", "doctor")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "1 run(s) fixed"
    assert lines[0].startswith(f"run {run.info.run_id} (forever-train, experiment kernel-magics)")
    assert f"its process {pid} on {host} is gone: marked KILLED" in lines[0]
    after = store.client.get_run(run.info.run_id)
    assert after.info.status == "KILLED"
    assert TAG_KILLED in after.data.tags
    assert kernel_magics("store", "doctor").stdout.strip() == "nothing to fix"
    assert not store.model_exists("forever")  # nothing registered


def test_the_next_process_to_open_the_store_sweeps(store: Store, reap: list) -> None:
    trainer = python(TRAIN_FOREVER, "swept")
    reap.append(trainer)
    run = wait_for("epoch", lambda: running_with_a_metric(store, "swept"), trainer)
    kill(trainer.pid)
    trainer.wait(timeout=30)
    # any command that opens the MLflow store (`models` reads the SQLite file without it)
    # (the killed training registered nothing: its one error line is the store's answer)
    done = kernel_magics("history", "swept")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("kernel-magics: error: no registered model named 'swept'")
    assert store.client.get_run(run.info.run_id).info.status == "KILLED"


def test_an_optimization_killed_as_its_version_appears_leaves_it_complete(
    store: Store, reap: list
) -> None:
    rows = np.random.default_rng(1).normal(size=(200, 8)).astype("float32")
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    api.train(net, rows, (rows[:, 0] > 0).astype("int64"), name="opt", epochs=1, progress="none")
    optimizer = python(OPTIMIZE, "opt@1")
    reap.append(optimizer)

    def second_version() -> Any:
        return [v for v in store.versions("opt") if v.version == 2]

    (version,) = wait_for("version 2", second_version, optimizer)
    if optimizer.poll() is None:
        kill(optimizer.pid)  # the moment the version is visible
    optimizer.wait(timeout=30)
    # created in one call with everything it carries: its hash and its measured figures
    assert version.sha256
    assert version.tags.get("km.format") == "onnx"
    assert version.tags.get("km.opt.method") == "export"
    assert "km.opt.size_bytes" in version.tags
    assert "km.opt.parent.size_bytes" in version.tags
    kernel_magics("store", "doctor")
    (run,) = [r for r in runs(store, "opt") if r.info.run_id == version.run_id]
    assert store.client.get_run(run.info.run_id).info.status in ("FINISHED", "KILLED")


def test_a_killed_pipeline_run_leaves_no_run_running(
    store: Store, reap: list, tmp_path: Path
) -> None:
    notebook = tmp_path / "forever.ipynb"
    nb = nbformat.v4.new_notebook()
    first = nbformat.v4.new_code_cell("name = 'piped-forever'")
    first.metadata["tags"] = ["parameters"]
    body = TRAIN_FOREVER.replace("sys.argv[1]", "name").replace("import sys\n", "")
    nb.cells = [first, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, notebook)
    pipeline = subprocess.Popen(
        [sys.executable, "-m", "kernel_magics.cli", "pipeline", "run", str(notebook)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    reap.append(pipeline)
    child = wait_for("epoch", lambda: running_with_a_metric(store, "piped-forever"), pipeline)
    parent_id = child.data.tags["km.pipeline_run"]
    kernel_pid = int(child.data.tags[TAG_OWNER].split()[1])
    assert kernel_pid != pipeline.pid  # the notebook's kernel owns the training run
    kill(pipeline.pid)
    kill(kernel_pid)
    pipeline.wait(timeout=30)
    wait_for("the kernel to go", lambda: not pid_alive(kernel_pid))
    done = kernel_magics("store", "doctor")
    assert done.returncode == 0, done
    assert f"run {child.info.run_id} (piped-forever-train," in done.stdout
    assert store.client.get_run(child.info.run_id).info.status == "KILLED"
    # the pipeline run itself: its recorder (a helper process that outlives the killed parent)
    # marks it KILLED, or a sweep does once that helper is gone too
    wait_for(
        "the pipeline run to end",
        lambda: (
            store.client.get_run(parent_id).info.status == "KILLED"
            or "pipeline" in kernel_magics("store", "doctor").stdout
        ),
    )
    parent = store.client.get_run(parent_id)
    assert parent.info.status == "KILLED"
    assert parent.info.experiment_id == store.experiment_id(PIPELINES)
