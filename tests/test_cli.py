"""The ``kernel-magics`` console script, run as a real subprocess against a real store and the
real inference process (one per module, started by the CLI's own ``deploy``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kernel_magics import api, catalog, display
from kernel_magics.config import load_settings
from kernel_magics.store import Store
from kernel_magics.store_sqlite import SqliteCatalog
from kernel_magics.tracking import TrainResult

SCRIPT = Path(sys.executable).with_name("kernel-magics")


def cli(*args: str, ok: int | None = 0) -> subprocess.CompletedProcess:
    """Run the console script (the installed entry point when present) in the module's home."""
    command = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "kernel_magics.cli"]
    done = subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    if ok is not None:
        assert done.returncode == ok, (args, done.returncode, done.stdout, done.stderr)
    return done


@pytest.fixture(scope="module")
def versions(km_home: Path, digits: tuple[np.ndarray, np.ndarray]) -> dict[int, TrainResult]:
    X, y = digits
    out = {}
    for version, hidden in ((1, 16), (2, 24)):
        torch.manual_seed(version)
        net = torch.nn.Sequential(
            torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
        )
        out[version] = api.train(net, X, y, name="digits", epochs=1, lr=1e-2, progress="none")
    assert [r.version for r in out.values()] == [1, 2]
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, digits: tuple) -> dict[str, Any]:
    X = digits[0][:8]
    folder = tmp_path_factory.mktemp("inputs")
    (folder / "x.json").write_text(json.dumps(X.tolist()))
    (folder / "instances.json").write_text(json.dumps({"instances": X.tolist()}))
    np.save(folder / "x.npy", X)
    header = ",".join(f"p{i}" for i in range(64))
    np.savetxt(folder / "x.csv", X, delimiter=",", header=header, comments="", fmt="%.9g")
    (folder / "narrow.json").write_text(json.dumps(X[:, :5].tolist()))
    return {"X": X, "folder": folder}


def local(result: TrainResult, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return result.model(torch.from_numpy(X)).numpy()


def test_help_lists_the_commands() -> None:
    out = cli("--help").stdout
    for command in ("deploy", "rollback", "undeploy", "models", "history", "predict", "serve"):
        assert command in out


def test_before_anything_is_served(versions: dict) -> None:
    models = json.loads(cli("models", "--json").stdout)
    assert [(m["name"], m["live_version"]) for m in models] == [("digits", None)]
    assert [v["version"] for v in models[0]["versions"]] == [1, 2]
    status = cli("serve", "status", "--json", ok=1)
    assert json.loads(status.stdout) == {"running": False}


def test_deploy_then_status(versions: dict) -> None:
    out = cli("deploy", "digits@1").stdout.strip()
    assert out.startswith("digits v1 is live (nothing was live) at http://127.0.0.1:")
    status = json.loads(cli("serve", "status", "--json").stdout)
    assert status["running"] is True
    assert status["pid"] > 0
    assert status["url"].startswith("http://127.0.0.1:")
    served = status["models"]["digits"]
    assert (served["version"] if isinstance(served, dict) else served) == 1


def test_serve_status_says_what_next(versions: dict, km_home: Path) -> None:
    """`make demo` ends with this view: what is live where, the store, the MLflow UI, how to
    stop."""
    out = cli("serve", "status").stdout
    url = json.loads(cli("serve", "status", "--json").stdout)["url"]
    lines = out.splitlines()
    assert lines[0].startswith(f"Inference process at {url} ")
    assert any(line.split() == ["digits", "v1", "(live)"] for line in lines)
    assert f"mlflow ui --backend-store-uri sqlite:///{km_home}/mlflow.db" in out
    assert lines[-1].split(":", 1)[1].strip() == "kernel-magics serve stop"
    assert "{" not in out  # no raw JSON


@pytest.mark.parametrize("file", ["x.json", "instances.json", "x.csv", "x.npy"])
def test_predict_from_files(versions: dict, inputs: dict, file: str) -> None:
    expected = local(versions[1], inputs["X"])
    path = str(inputs["folder"] / file)
    raw = json.loads(cli("predict", "digits", "--input", path, "--raw", "--json").stdout)
    np.testing.assert_allclose(np.array(raw["predictions"]), expected, rtol=1e-5, atol=1e-5)
    if file == "x.json":  # labels, one per line
        labels = cli("predict", "digits", "--input", path).stdout.split()
        assert [int(v) for v in labels] == expected.argmax(axis=1).tolist()


def test_predict_imports_neither_mlflow_nor_torch(versions: dict, inputs: dict) -> None:
    """A terminal's predict is an HTTP call: the labels come from the serving target, so the
    command starts in a fraction of a second instead of importing MLflow and torch."""
    path = str(inputs["folder"] / "x.npy")
    code = (
        "import sys\n"
        "from kernel_magics import cli\n"
        f"code = cli.main(['predict', 'digits', '--input', {path!r}])\n"
        "heavy = {'torch', 'mlflow', 'sqlalchemy', 'pandas', 'IPython'}\n"
        "print('loaded', sorted(heavy & {m.split('.')[0] for m in sys.modules}), code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    *labels, last = done.stdout.splitlines()
    assert last == "loaded [] 0", done.stdout
    assert [int(v) for v in labels] == local(versions[1], inputs["X"]).argmax(axis=1).tolist()


def test_deploy_rollback_history(versions: dict) -> None:
    assert cli("deploy", "digits").stdout.startswith("digits v2 is live (was v1)")
    result = json.loads(cli("rollback", "digits", "--json").stdout)
    assert (result["version"], result["previous_version"]) == (1, 2)
    events = json.loads(cli("history", "digits", "--json").stdout)
    assert [(e["action"], e["from_version"], e["to_version"]) for e in events] == [
        ("deploy", None, 1),
        ("deploy", 1, 2),
        ("rollback", 2, 1),
    ]
    assert api.models()[0].served_version == 1


def test_models_reads_the_embedded_store_without_mlflow(versions: dict, km_home: Path) -> None:
    """`kernel-magics models` reads the embedded SQLite store directly (no MLflow import) and
    lists exactly what MLflow's own client reads."""
    code = (
        "import sys\n"
        "from kernel_magics import cli\n"
        "code = cli.main(['models', '--json'])\n"
        "print('loaded', 'mlflow' in sys.modules, 'torch' in sys.modules, code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    document, last = done.stdout.rsplit("\n", 2)[0], done.stdout.splitlines()[-1]
    assert last == "loaded False False 0", done.stdout
    settings, status = load_settings(), api.server_status()
    direct = catalog.summaries(SqliteCatalog(settings.sqlite_file), status)
    assert direct == catalog.summaries(Store(settings), status)  # what MLflow reads
    assert json.loads(document) == json.loads(display.to_json(direct))
    assert [(m.name, m.live_version) for m in direct] == [("digits", 1)]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("deploy", "nope"), "no registered model named 'nope'"),
        (("deploy", "digits@99"), "no version 99"),
        (("deploy",), "required"),
        (("rollback", "digits", "--to", "x"), "--to"),
        (("predict", "digits", "--input", "missing.json"), "missing.json"),
        (("predict", "digits", "--input", "{folder}/narrow.json"), "5"),
        (("serve", "restart"), "unknown sub-command"),
        (("deploy", "digits", "--canery", "3"), "--canery 3; did you mean --canary?"),
        (("deploy", "digits@2", "--analyze"), "--analyze judges a canary: add --canary PERCENT"),
        (("deploy", "digits@2", "--canary", "5", "--window", "1m"), "--window belongs to"),
        (
            ("deploy", "digits@2", "--canary", "5", "--analyze", "--metric", "latency"),
            "unknown canary metric(s) 'latency': use error_rate",
        ),
    ],
)
def test_errors_are_one_line_and_exit_2(
    versions: dict, inputs: dict, args: tuple, expected: str
) -> None:
    done = cli(*(a.format(folder=inputs["folder"]) for a in args), ok=2)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("kernel-magics")
    assert expected in lines[0]
    assert api.models()[0].live_version == 1  # nothing changed


def test_home_option_points_elsewhere(tmp_path: Path) -> None:
    assert json.loads(cli("--home", str(tmp_path), "models", "--json").stdout) == []


def test_serve_token_logs_and_stop(versions: dict) -> None:
    assert cli("serve", "token").stdout.strip() == api.server_token()
    cli("serve", "logs", "--lines", "3")
    assert cli("serve", "stop").stdout.strip() == "Inference process stopped."
    cli("serve", "status", ok=1)


def test_named_tokens(km_home: Path) -> None:
    made = cli("serve", "token", "--new", "ci").stdout.strip()
    assert len(made) >= 32
    assert made not in (km_home / "tokens.json").read_text()
    assert cli("serve", "token", "--list").stdout.startswith("ci ")
    assert "revoked" in cli("serve", "token", "--revoke", "ci").stdout
    err = cli("serve", "token", "--revoke", "ci", ok=2).stderr
    assert err.count("\n") == 1
    assert "no token named 'ci'" in err
    err = cli("serve", "start", "--host", "0.0.0.0", ok=2).stderr
    assert err.count("\n") == 1
    assert "allow_remote" in err
