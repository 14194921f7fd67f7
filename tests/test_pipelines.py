"""Pipelines with real papermill runs against a real store: a notebook with parameters becomes
one MLflow run (params, the input and executed notebooks, provenance, the version it registered
linked to it); a rerun repeats it with equal metrics; a failing notebook is a FAILED run with
its executed notebook stored, exit code 2 and one line on stderr from the CLI, and nothing
registered. Each papermill run starts a kernel (a few seconds): the tests share them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest
from IPython.core.error import UsageError

from kernel_magics import api
from kernel_magics.config import load_settings
from kernel_magics.display import evaluation as display_eval
from kernel_magics.errors import InvalidInput
from kernel_magics.pipelines import EXPERIMENT, PipelineFailed, provenance
from kernel_magics.pipelines.execute import progress_mode
from kernel_magics.pipelines.record import PipelineRecord
from kernel_magics.pipelines.rerun import MetricDelta, RerunResult
from kernel_magics.pipelines.run import check_parameters, parse_value
from kernel_magics.store import Store

SCRIPT = Path(sys.executable).with_name("kernel-magics")
TRAIN_CELLS = [
    "%load_ext kernel_magics",
    "import os, sys\nprint('env', os.environ['KERNEL_MAGICS_HOME'], sys.executable)",
    "import numpy as np\nimport torch\nfrom kernel_magics.pipelines import log_metric\n"
    "d = np.load(data)\nX, y = d['X'], d['y']\n"
    "torch.manual_seed(seed)\n"
    "net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))",
    "r = %train net --data X y --epochs {epochs} --lr 0.01 --seed {seed} --name piped",
    "log_metric('double_accuracy', 2 * r.metrics['accuracy'])",
]
FAILING_CELLS = [
    "%load_ext kernel_magics",
    "import torch\nnet = torch.nn.Linear(3, 2)  # takes 3 features, the data has 64",
    "import numpy as np\nX = np.zeros((20, 64), dtype='float32'); y = np.arange(20) % 2\n"
    "%train net --data X y --epochs 1 --name broken",
    "print('never reached')",
]


def write_notebook(path: Path, parameters: str, cells: list[str]) -> Path:
    nb = nbformat.v4.new_notebook()
    first = nbformat.v4.new_code_cell(parameters)
    first.metadata["tags"] = ["parameters"]
    nb.cells = [first, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)
    return path


def git(folder: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, digits: tuple) -> dict[str, Path]:
    """A git working tree holding the notebooks (committed) and a data file."""
    folder = tmp_path_factory.mktemp("project")
    X, y = digits
    np.savez(folder / "digits.npz", X=X[:300], y=y[:300])
    write_notebook(folder / "train.ipynb", 'data = ""\nseed = 0\nepochs = 1', TRAIN_CELLS)
    write_notebook(folder / "fail.ipynb", "seed = 0", FAILING_CELLS)
    git(folder, "init", "-q")
    git(folder, "add", "train.ipynb", "fail.ipynb")
    git(folder, "commit", "-q", "-m", "notebooks")
    return {"folder": folder, "data": folder / "digits.npz"}


@pytest.fixture(scope="module")
def store(km_home: Path) -> Store:
    return Store(load_settings())


@pytest.fixture(scope="module")
def first(project: dict, km_home: Path) -> PipelineRecord:
    parameters = {"data": str(project["data"]), "seed": 3, "epochs": 2}
    return api.pipeline_run(
        str(project["folder"] / "train.ipynb"), parameters, run_name="nightly", progress="none"
    )


# -- a run ----------------------------------------------------------------------------------------
def test_run_is_one_mlflow_run_with_params(first: PipelineRecord, store: Store) -> None:
    run = store.client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert first.status == "FINISHED"
    assert run.info.run_name == "nightly"
    experiment = store.client.get_experiment(run.info.experiment_id)
    assert experiment.name == EXPERIMENT
    assert run.data.params == {"data": first.parameters["data"], "seed": "3", "epochs": "2"}
    assert first.parameters["seed"] == 3  # the exact values (types kept) for a rerun
    assert run.data.metrics["double_accuracy"] == first.metrics["double_accuracy"] > 0


def test_input_and_executed_notebooks_are_stored(first: PipelineRecord, project: dict) -> None:
    stored = Path(first.input_notebook or "")
    assert stored.read_bytes() == (project["folder"] / "train.ipynb").read_bytes()
    executed = nbformat.read(first.executed_notebook or "", as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected
    assert "seed = 3" in injected[0].source
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    # the kernel ran this interpreter with this home
    assert f"env {load_settings().home} {sys.executable}" in printed


def test_provenance(first: PipelineRecord, project: dict) -> None:
    p = first.provenance
    assert p["git_commit"] == git(project["folder"], "rev-parse", "HEAD")
    assert p["git_dirty"] == "false"
    assert p["sha256.data"] == provenance.file_sha256(project["data"])
    assert p["seed.seed"] == "3"
    assert p["package.torch"].startswith("2.")
    assert p["package.papermill"]
    assert {f"package.{name}" for name in provenance.PACKAGES} <= set(p)
    assert p["project_version"]


def test_the_version_it_registered_is_linked(first: PipelineRecord, store: Store) -> None:
    (version,) = first.versions
    assert (version.name, version.version) == ("piped", 1)
    assert first.metrics["double_accuracy"] == pytest.approx(2 * version.metrics["accuracy"])
    tags = store.client.get_run(version.run_id).data.tags
    assert tags["km.pipeline_run"] == tags["mlflow.parentRunId"] == first.run_id
    pipeline_tags = store.client.get_run(first.run_id).data.tags
    assert pipeline_tags["km.pipeline.versions"] == "piped@1"


def test_views(first: PipelineRecord, ip: Any) -> None:
    bundle = ip.display_formatter.format(first)[0]
    assert bundle["text/plain"].startswith("pipeline nightly: FINISHED")
    assert "piped v1" in bundle["text/plain"]
    assert first.run_id in bundle["text/html"]


# -- rerun ----------------------------------------------------------------------------------------
def test_rerun_repeats_with_equal_metrics(first: PipelineRecord, project: dict, ip: Any) -> None:
    notebook = project["folder"] / "train.ipynb"
    original = notebook.read_text()
    notebook.write_text(original.replace("log_metric(", "raise SystemExit; log_metric("))
    try:  # the rerun executes the copy stored with the run, not the changed file
        result = ip.run_line_magic("pipeline", f"rerun {first.run_id}")
    finally:
        notebook.write_text(original)
    assert isinstance(result, RerunResult)
    assert result.rerun.rerun_of == first.run_id
    assert result.rerun.executed_from == "stored copy"
    assert result.rerun.parameters == first.parameters
    assert [v.version for v in result.rerun.versions] == [2]  # a new version, same recipe
    names = [row.name for row in result.rows]
    assert "double_accuracy" in names
    assert "piped/accuracy" in names
    assert "piped/val_loss" in names
    assert result.all_equal, display_eval.rerun_text(result)
    text = ip.display_formatter.format(result)[0]["text/plain"]
    assert "all equal" in text
    assert first.run_id in text


def test_metric_comparison() -> None:
    assert MetricDelta("a", 1.0, 1.0).identical
    assert MetricDelta("a", float("nan"), float("nan")).equal
    rounded = MetricDelta("a", 2.1020002, 2.1020004)  # float32 rounding: equal, not identical
    assert rounded.equal
    assert not rounded.identical
    changed = MetricDelta("a", 1.0, 1.5)
    assert not changed.equal
    assert changed.delta == 0.5
    assert MetricDelta("a", 1.0, None).delta is None


# -- failure --------------------------------------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess:
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "kernel_magics.cli"]
    env = dict(os.environ, KERNEL_MAGICS_PROGRESS="none")
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, env=env)


def test_failing_notebook_from_the_cli(project: dict, store: Store) -> None:
    done = cli("pipeline", "run", str(project["folder"] / "fail.ipynb"), "-p", "seed", "1")
    assert done.returncode == 2, (done.stdout, done.stderr)
    (line,) = done.stderr.splitlines()  # exactly one line
    assert line.startswith("kernel-magics: error: pipeline run ")
    assert "failed at cell [" in line
    assert "]: UsageError: " in line
    run_id = line.split("pipeline run ")[1].split()[0]
    run = store.client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert "UsageError" in run.data.tags["km.pipeline.error"]
    executed = Path(line.split("executed notebook: ")[1].rstrip(")"))
    nb = nbformat.read(executed, as_version=4)
    (failed,) = [c for c in nb.cells if c.metadata.get("papermill", {}).get("exception")]
    assert "UsageError" in "".join(o.get("text", "") for o in failed.outputs)  # the error cell
    (last,) = [c for c in nb.cells if "never reached" in c.source]
    assert last.outputs == []
    assert last.execution_count is None
    assert "broken" not in store.model_names()  # nothing half-registered


def test_cli_run_and_rerun(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "two.ipynb", "n = 1", ["print(n * 2)"])
    done = cli("pipeline", "run", str(notebook), "-p", "n", "21", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "FINISHED"
    assert record["parameters"] == {"n": 21}
    again = cli("pipeline", "rerun", record["run_id"])
    assert again.returncode == 0, again.stderr
    assert f"of {record['run_id']} (notebook: stored copy): no metrics to compare" in again.stdout
    missing = cli("pipeline", "run", str(tmp_path / "nope.ipynb"))
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1
    assert "no such notebook" in missing.stderr


SHIPPED = Path(__file__).resolve().parents[1] / "notebooks" / "pipelines"


@pytest.mark.parametrize(
    ("notebook", "parameter", "value"),
    [
        ("train.ipynb", "name", "x --data __import__('os').system('touch {file}') y"),
        ("evaluate.ipynb", "version", "1 --data __import__('os').system('touch {file}') y"),
    ],
)
def test_a_shipped_pipeline_runs_no_code_from_a_parameter(
    notebook: str, parameter: str, value: str, tmp_path: Path, km_home: Path
) -> None:
    """papermill writes each parameter as a literal; the shipped notebooks must use them as
    values too (spliced into a magic line, a ``--data`` argument is evaluated)."""
    proof = tmp_path / "ran"
    # breast_cancer: the smallest bundled data set (evaluate trains a version before it evaluates)
    done = cli(
        "pipeline", "run", str(SHIPPED / notebook), "-p", parameter,
        value.format(file=proof), "-p", "dataset", "breast_cancer",
    )  # fmt: skip
    assert not proof.exists(), "a parameter ran code"
    assert done.returncode == 2, (done.stdout, done.stderr)
    (line,) = done.stderr.splitlines()  # the pipeline failed on the value, in one line
    assert "InvalidInput" in line or "NotFound" in line, line


def test_unknown_parameter_runs_nothing(project: dict, store: Store, tmp_path: Path) -> None:
    """A typo in a -p name (`epoch` for `epochs`) is refused before anything runs: no run, no
    kernel; the same rule for the CLI, the magic and the API."""
    runs_before = _pipeline_runs(store)
    notebook = str(project["folder"] / "train.ipynb")
    done = cli("pipeline", "run", notebook, "-p", "epoch", "3")
    assert done.returncode == 2, (done.stdout, done.stderr)
    (line,) = done.stderr.splitlines()
    assert "unknown parameter 'epoch' (did you mean 'epochs'?)" in line
    assert "sets data, seed, epochs" in line
    assert "--allow-extra-params" in line
    with pytest.raises(InvalidInput, match="did you mean 'seed'"):
        api.pipeline_run(notebook, {"sed": 1}, progress="none")
    bare = write_notebook(tmp_path / "bare.ipynb", "", ["print(1)"])
    bare.write_text(bare.read_text().replace('"parameters"', '"other"'))
    with pytest.raises(InvalidInput, match="has no cell tagged 'parameters'"):
        api.pipeline_run(str(bare), {"x": 1}, progress="none")
    assert _pipeline_runs(store) == runs_before
    # asked for explicitly, an extra name is passed and recorded
    extra = api.pipeline_run(str(bare), {"x": 1}, progress="none", allow_extra_params=True)
    assert extra.status == "FINISHED"
    assert extra.parameters == {"x": 1}


def _pipeline_runs(store: Store) -> int:
    found = store.client.get_experiment_by_name(EXPERIMENT)
    return len(store.client.search_runs([found.experiment_id])) if found else 0


def test_api_failure_raises_with_the_record(tmp_path: Path) -> None:
    notebook = write_notebook(tmp_path / "boom.ipynb", "n = 1", ["raise ValueError(f'boom {n}')"])
    with pytest.raises(PipelineFailed) as caught:
        api.pipeline_run(str(notebook), {"n": 2}, progress="none")
    assert "failed at cell [3]: ValueError: boom 2 (executed notebook: " in str(caught.value)
    record = caught.value.record
    assert record.status == "FAILED"
    assert record.error
    assert record.executed_notebook


# -- the magic ------------------------------------------------------------------------------------
def test_magic_runs_a_notebook(ip: Any, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    notebook = write_notebook(
        tmp_path / "tiny.ipynb",
        "x = 1",
        ["from kernel_magics.pipelines import log_metric\nlog_metric('x', x * 10)"],
    )
    ip.run_line_magic("config", 'KernelMagics.progress = "text"')
    try:
        record = ip.run_line_magic("pipeline", f"{notebook} -p x 4 --output {tmp_path / 'o.ipynb'}")
    finally:
        ip.config.KernelMagics.pop("progress", None)
        magics = ip.magics_manager.registry["KernelMagics"]
        magics.progress = magics.trait_defaults("progress")
    assert record.metrics == {"x": 40.0}
    assert record.parameters == {"x": 4}
    assert (tmp_path / "o.ipynb").is_file()
    assert "cell 2: ok" in capsys.readouterr().out  # text progress, one line per cell


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("nb.ipynb -p x", "expected 2 arguments"),
        ("rerun abc --name x", "no run"),
        ("{notebook} -p epoch 3", "unknown parameter 'epoch' (did you mean 'epochs'?)"),
    ],
)
def test_magic_mistakes(ip: Any, project: dict, line: str, expected: str) -> None:
    with pytest.raises(UsageError) as caught:
        ip.run_line_magic("pipeline", line.format(notebook=project["folder"] / "train.ipynb"))
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


# -- small parts ----------------------------------------------------------------------------------
def test_parameter_values_read_like_papermill() -> None:
    assert [parse_value(v) for v in ("3", "0.5", "1e-3", "True", "None", "digits")] == [
        3,
        0.5,
        1e-3,
        True,
        None,
        "digits",
    ]
    with pytest.raises(Exception, match="identifier"):
        check_parameters({"not a name": 1})
    with pytest.raises(Exception, match="cannot be passed"):
        check_parameters({"x": object()})


def test_progress_modes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERNEL_MAGICS_PROGRESS", "text")
    assert [progress_mode(m) for m in ("auto", "widget", "none")] == ["text", "bar", "none"]
    monkeypatch.delenv("KERNEL_MAGICS_PROGRESS")
    assert progress_mode("auto") == "bar"


def test_provenance_outside_git(tmp_path: Path) -> None:
    (tmp_path / "in.csv").write_text("a,b\n1,2\n")
    tags = provenance.collect(
        tmp_path / "nb.ipynb", {"path": "in.csv", "random_state": 7}, tmp_path
    )
    assert "km.provenance.git_commit" not in tags
    assert tags["km.provenance.seed.random_state"] == "7"
    assert len(tags["km.provenance.sha256.path"]) == 64
    assert json.dumps(tags)  # every value is text
