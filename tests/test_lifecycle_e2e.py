"""The whole lifecycle through the magics, as a notebook runs it, with nothing faked.

A real InteractiveShell, a notebook-defined model class (it lives in ``__main__``), a real MLflow
SQLite store in a throwaway home, and the real inference process on loopback, started by the
first ``%deploy``. Served predictions are compared with the in-kernel model of the version that
should be live after every transition. The tests run in file order and share one home and one
inference process: each step builds on the state the previous one left.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from IPython.core.error import UsageError

from kernel_magics import api
from kernel_magics.tracking import TrainResult

ROWS = 64  # enough rows that the batcher and the exported model's dynamic batch both matter


@pytest.fixture(scope="module")
def versions(ns: Any, run_cell: Any) -> dict[int, TrainResult]:
    """digits v1 and v2, trained by %train the way a notebook writes it (``r = %train ...``)."""
    run_cell(ns, "r1 = %train Net() --data X y --epochs 1 --lr 1e-2 --name digits")
    run_cell(ns, "r2 = %train Net(hidden=48) --data X y --epochs 2 --lr 1e-2 --name digits")
    return {1: ns.user_ns["r1"], 2: ns.user_ns["r2"]}


def local(result: TrainResult, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return result.model(torch.from_numpy(X)).numpy()


def served_version(name: str = "digits") -> int | None:
    status = api.server_status()
    model = status.models.get(name) if status else None
    return model.version if model else None


def assert_serves(ns: Any, versions: dict[int, TrainResult], version: int) -> None:
    """The live version is ``version`` everywhere: alias, process, and the outputs themselves."""
    X = ns.user_ns["X"][:ROWS]
    raw = ns.run_line_magic("predict", f"digits X[:{ROWS}] --raw")
    np.testing.assert_allclose(raw, local(versions[version], X), rtol=1e-5, atol=1e-5)
    labels = ns.run_line_magic("predict", f"digits X[:{ROWS}]")
    np.testing.assert_array_equal(labels, local(versions[version], X).argmax(axis=1))
    (summary,) = [s for s in api.models() if s.name == "digits"]
    assert (summary.live_version, summary.served_version) == (version, version)
    assert served_version() == version


def test_train_returns_results(ns: Any, versions: dict[int, TrainResult]) -> None:
    r1, r2 = versions[1], versions[2]
    assert isinstance(r1, TrainResult)
    assert isinstance(r2, TrainResult)
    assert (r1.name, r1.version, r2.version) == ("digits", 1, 2)
    assert r1.run_id != r2.run_id
    assert r1.format == r2.format == "pt2"
    assert type(r1.net).__module__ == "__main__"  # the class exists only in this "notebook"
    assert 0.0 <= r2.metrics["accuracy"] <= 1.0


def test_deploy_v1(ns: Any, versions: dict, capsys: pytest.CaptureFixture) -> None:
    assert ns.run_line_magic("deploy", "digits@1") is None
    line = capsys.readouterr().out.strip()
    assert line.startswith("digits v1 is live (nothing was live) at http://127.0.0.1:")
    assert_serves(ns, versions, 1)


def test_deploy_v2_hot_swaps(ns: Any, versions: dict, capsys: pytest.CaptureFixture) -> None:
    pid = api.server_status().pid
    ns.run_line_magic("deploy", "digits")  # newest version
    assert capsys.readouterr().out.startswith("digits v2 is live (was v1)")
    assert_serves(ns, versions, 2)
    assert api.server_status().pid == pid  # same process: a swap, not a restart


def test_redeploying_the_live_version_changes_nothing(
    ns: Any, versions: dict, capsys: pytest.CaptureFixture
) -> None:
    ns.run_line_magic("deploy", "digits@2")
    assert capsys.readouterr().out.strip() == "digits v2 is already live; nothing changed"
    assert_serves(ns, versions, 2)
    # the rollback below still returns to v1 and the history lists no v2 → v2 event


def test_rollback_returns_to_v1(ns: Any, versions: dict, capsys: pytest.CaptureFixture) -> None:
    ns.run_line_magic("rollback", "digits")
    assert capsys.readouterr().out.startswith("digits v1 is live again (was v2)")
    assert_serves(ns, versions, 1)


def test_history_records_every_transition(ns: Any, capsys: pytest.CaptureFixture) -> None:
    events = api.history("digits")
    assert [(e.action, e.from_version, e.to_version) for e in events] == [
        ("deploy", None, 1),
        ("deploy", 1, 2),
        ("rollback", 2, 1),
    ]
    ns.run_line_magic("history", "digits")
    rows = capsys.readouterr().out.splitlines()[2:]
    assert [row.split()[-3:] for row in rows] == [
        ["deploy", "-", "v1"],
        ["deploy", "v1", "v2"],
        ["rollback", "v2", "v1"],
    ]


def test_models_shows_what_exists_and_what_is_live(ns: Any, capsys: pytest.CaptureFixture) -> None:
    assert ns.run_line_magic("models", "") is None
    lines = capsys.readouterr().out.splitlines()
    v1 = next(line for line in lines if line.startswith("digits") and " v1 " in line)
    v2 = next(line for line in lines if line.startswith("digits") and " v2 " in line)
    assert "LIVE" in v1
    assert "accuracy=" in v1
    assert "LIVE" not in v2
    assert "inference process serves" not in "\n".join(lines)


def test_serve_status_and_token(ns: Any, capsys: pytest.CaptureFixture) -> None:
    ns.run_line_magic("serve", "status --json")
    status = json.loads(capsys.readouterr().out)
    assert status["url"].startswith("http://127.0.0.1:")
    assert status["pid"] > 0
    ns.run_line_magic("serve", "status")
    out = capsys.readouterr().out
    assert status["url"] in out
    assert "digits" in out
    assert "v1" in out
    ns.run_line_magic("serve", "token")
    assert len(capsys.readouterr().out.strip()) >= 16
    ns.run_line_magic("serve", "logs --lines 5")
    assert len(capsys.readouterr().out.strip().splitlines()) <= 5


# A second kernel: a fresh process and shell find the running inference process through the
# home folder's state file and use it as is.
RESTARTED_KERNEL = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from IPython.core.history import HistoryAccessor
    HistoryAccessor.enabled = False
    from IPython.core.interactiveshell import InteractiveShell
    from kernel_magics import api

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "kernel_magics")
    shell.user_ns["X"] = np.load(sys.argv[1])
    raw = shell.run_line_magic("predict", "digits X --raw")
    status = api.server_status()
    models = status.to_wire()["models"]
    print(json.dumps({"pid": status.pid, "models": models, "raw": raw.tolist()}))
    """
)


def _without_stats(models: dict) -> dict:
    as_json = json.loads(json.dumps(models))
    return {name: {k: v for k, v in m.items() if k != "stats"} for name, m in as_json.items()}


def test_restarted_kernel_reattaches_without_redeploying(
    ns: Any, versions: dict, tmp_path: Path
) -> None:
    before = api.server_status()
    X = ns.user_ns["X"][:ROWS]
    np.save(tmp_path / "x.npy", X)
    done = subprocess.run(
        [sys.executable, "-c", RESTARTED_KERNEL, str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["pid"] == before.pid
    # the same models as before; their request counters ("stats") moved with the predict
    assert _without_stats(seen["models"]) == _without_stats(before.to_wire()["models"])
    np.testing.assert_allclose(np.array(seen["raw"]), local(versions[1], X), rtol=1e-5, atol=1e-5)
    assert len(api.history("digits")) == 3  # nothing was redeployed


@pytest.mark.parametrize(
    ("magic", "line", "expected"),
    [
        ("deploy", "nope", "no registered model named 'nope'"),
        ("deploy", "digits@99", "no version 99"),
        ("deploy", "digits@staging", "alias 'staging'"),
        ("rollback", "digits --to 99", "no version 99"),
        ("predict", "digits undefined_var", "undefined_var"),
        ("predict", "nope X[:2]", "nope"),
        ("predict", "digits X[:2, :10]", "10"),
        ("predict", "digits X[:2, :3, None]", "2-D"),
        ("train", "Net()", "--data"),
        ("train", "Net() --data X y --epochs -1", "--epochs"),
        ("undeploy", "nope", "nope"),
    ],
)
def test_bad_input_changes_nothing(
    ns: Any, versions: dict, magic: str, line: str, expected: str
) -> None:
    with pytest.raises(UsageError) as caught:
        ns.run_line_magic(magic, line)
    assert type(caught.value) is UsageError  # exactly: IPython then shows no traceback
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert_serves(ns, versions, 1)
    assert [v.version for v in api.models()[0].versions] == [1, 2]


def test_undeploy_stops_serving(ns: Any, versions: dict, capsys: pytest.CaptureFixture) -> None:
    ns.run_line_magic("undeploy", "digits")
    assert capsys.readouterr().out.strip() == "digits is no longer served (was v1)"
    (summary,) = api.models()
    assert summary.live_version is None
    assert summary.served_version is None
    with pytest.raises(UsageError) as caught:
        ns.run_line_magic("predict", "digits X[:2]")
    assert type(caught.value) is UsageError
    message = str(caught.value)  # the next step: the model is registered, deploy it
    assert "no deployed model named 'digits'" in message
    assert "it is registered: %deploy digits" in message
    assert api.history("digits")[-1].action == "undeploy"
