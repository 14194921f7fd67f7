"""%register and api.register: a model trained anywhere enters the lifecycle as a new version,
through the same registration path as %train (real IPython shell, real MLflow store)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from IPython.core.error import UsageError

from kernel_magics import api, display
from kernel_magics.config import load_settings
from kernel_magics.errors import InvalidInput, NotFound
from kernel_magics.registration import RegisterResult
from kernel_magics.store import Store

OWN_LOOP_CELL = """
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))
opt = torch.optim.Adam(net.parameters(), lr=1e-2)
Xt, yt = torch.from_numpy(X[:600]), torch.from_numpy(y[:600])
for step in range(60):  # a hand-written loop: no %train involved
    idx = torch.randint(0, 600, (64,))
    opt.zero_grad()
    F.cross_entropy(net(Xt[idx]), yt[idx]).backward()
    opt.step()
with torch.no_grad():
    accuracy = float((net.eval()(Xt).argmax(1) == yt).float().mean())
net.train()  # left in training mode, as a loop often leaves it
"""


@pytest.fixture(scope="module")
def shell(ns: Any, run_cell: Any) -> Any:
    run_cell(ns, OWN_LOOP_CELL)
    return ns


def _store(home: Path) -> Store:
    return Store(load_settings(home=home))


def _versions(home: Path) -> dict[str, int]:
    return {s.name: len(s.versions) for s in api.models(settings=load_settings(home=home))}


def test_register_an_own_loop_model(shell: Any, run_cell: Any, km_home: Path) -> None:
    r = run_cell(
        shell,
        "r = %register net --name own --example X[:5] --task classification "
        "--classes 0 1 2 3 4 5 6 7 8 9 --metrics '{\"accuracy\": 0.91}' "
        '--params \'{"steps": 60, "optimizer": "adam"}\' --recipe \'own loop, 60 Adam steps\'\n'
        "r",
    )
    assert isinstance(r, RegisterResult)
    assert (r.name, r.version, r.format, r.parent) == ("own", 1, "pt2", None)
    assert r.recipe == "own loop, 60 Adam steps"
    assert len(r.sha256) == 64
    assert shell.user_ns["net"].training  # the caller's mode is left alone
    run = _store(km_home).client.get_run(r.run_id)
    assert run.data.metrics == {"accuracy": 0.91}
    assert run.data.params == {"steps": "60", "optimizer": "adam"}
    assert run.info.status == "FINISHED"
    info = _store(km_home).resolve("own", 1)
    assert info.task == "classification"
    assert info.classes == list(range(10))
    assert info.recipe == "own loop, 60 Adam steps"
    assert info.sha256 == r.sha256
    # the views the front end registered: text for terminals, a table in a notebook
    views = shell.display_formatter.format(r)[0]
    assert views["text/plain"].startswith("own v1 registered")
    assert "own loop, 60 Adam steps" in views["text/html"] == r._repr_html_()


def test_exported_in_eval_mode(shell: Any, km_home: Path) -> None:
    net = shell.user_ns["net"]
    store = _store(km_home)
    path = Path(store.local_path(store.resolve("own", 1)))
    graph = torch.export.load(str(path / "data" / "model.pt2")).module()
    rows = torch.from_numpy(shell.user_ns["X"][:8])
    with torch.no_grad():
        net.eval()
        expected = net(rows)
        net.train()
        # dropout is off in the graph: the same rows give the eval-mode answer, every time
        torch.testing.assert_close(graph(rows), expected)
        torch.testing.assert_close(graph(rows), expected)


def test_lineage_parent_and_one_row_example(shell: Any, run_cell: Any, km_home: Path) -> None:
    r = run_cell(
        shell,
        "%register net --name own-small --example X[:1] --parent own@1 --recipe 'pruned'",
    )
    assert r.parent == "own@1"
    assert r.version == 1
    assert any("repeated to 2" in note for note in r.notes)
    summary = {s.name: s for s in api.models()}["own-small"]
    assert summary.versions[0].tags["km.parent"] == "own@1"
    assert summary.versions[0].tags["km.recipe"] == "pruned"
    text = display.models_text(api.models())
    row = next(line for line in text.splitlines() if line.startswith("own-small"))
    assert "own@1" in row
    assert "parent" in text.splitlines()[0]


def test_parent_by_alias_is_stored_as_its_version(shell: Any, km_home: Path) -> None:
    store = _store(km_home)
    store.client.set_registered_model_alias("own", "champion", "1")
    r = api.register(
        shell.user_ns["net"], torch.from_numpy(shell.user_ns["X"][:3]), name="own",
        parent="own@champion",
    )  # fmt: skip
    assert (r.version, r.parent) == (2, "own@1")


def test_api_register_takes_tensors_and_dataframes(shell: Any) -> None:
    X = shell.user_ns["X"]
    frame = pd.DataFrame(X[:4], columns=[f"p{i}" for i in range(64)])
    r = api.register(shell.user_ns["net"], frame, name="from-frame", task="other")
    assert r.version == 1
    assert r.format == "pt2"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("42 --name bad --example X[:2]", "the model must be a torch.nn.Module, got int"),
        ("net --name bad --example None", "give an example"),
        ("net --name bad", "give an example"),
        ("net --name bad --example 'hello'", "the example is a single str"),
        ("net --name bad --example X[:0]", "the example has no rows"),
        ("net --name bad --example X[:5, :10]", "the model failed on the example: RuntimeError"),
        ("net --name bad --example X[:5] --metrics '{\"acc\": }'", "--metrics is not valid JSON"),
        ('net --name bad --example X[:5] --metrics \'{"acc": "hi"}\'', "metric 'acc' must be"),
        ("net --name bad --example X[:5] --params '[1, 2]'", "params must map names"),
        ("net --name bad --example X[:5] --parent own@99", "model 'own' has no version 99"),
        ("net --name bad --example X[:5] --parent nope@1", "no registered model named 'nope'"),
        ("net --name bad --example X[:5] --parent own", "parent must be NAME@VERSION"),
        ("net --name bad --example X[:5] --task clustering", "invalid choice"),
        ("net --name 'bad name' --example X[:5]", "invalid model name"),
        ("net --example X[:5]", "--name"),
        ("net --name bad", "--example"),
        ("undefined_net --name bad --example X[:5]", "undefined_net"),
    ],
)
def test_bad_input_is_one_line_and_registers_nothing(
    shell: Any, km_home: Path, line: str, expected: str
) -> None:
    before = _versions(km_home)
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("register", line)
    message = str(caught.value)
    assert type(caught.value) is UsageError
    assert "\n" not in message
    assert expected in message
    assert _versions(km_home) == before


def test_core_errors_are_typed(shell: Any) -> None:
    with pytest.raises(NotFound):
        api.register(shell.user_ns["net"], shell.user_ns["X"][:2], name="x", parent="own@42")
    with pytest.raises(InvalidInput, match="task must be one of classification, regression"):
        api.register(shell.user_ns["net"], shell.user_ns["X"][:2], name="x", task="clustering")
    with pytest.raises(InvalidInput, match="classes must be numbers or strings"):
        api.register(shell.user_ns["net"], shell.user_ns["X"][:2], name="x", classes=[object()])


def test_classes_as_words_or_a_json_list(shell: Any, km_home: Path) -> None:
    shell.run_line_magic(
        "register", "net --name labels --example X[:2] --task classification --classes zero one"
    )
    shell.run_line_magic("register", "net --name labels --example X[:2] --classes '[0, \"1\"]'")
    store = _store(km_home)
    assert store.resolve("labels", 1).classes == ["zero", "one"]
    assert json.loads(store.resolve("labels", 2).tags["km.classes"]) == [0, "1"]


def test_registered_versions_deploy_like_trained_ones(shell: Any) -> None:
    """Registration writes what a %train version has: the hash tag the deploy plan checks."""
    from kernel_magics.serving.control.lifecycle import Lifecycle

    settings = load_settings()
    store = Store(settings)
    plan = Lifecycle(settings, store).plan("own", "deploy", "1")  # checks the hash
    assert plan.to_version == 1
    assert plan.spec is not None
    assert (plan.spec.format, plan.spec.sha256) == ("pt2", store.resolve("own", 1).sha256)


class _Recurrent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(4, 8, batch_first=True)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def test_registering_an_rnn_shows_no_noise(shell: Any, capfd: pytest.CaptureFixture[str]) -> None:
    """torch.export's warning about an RNN's flat weights is harmless (they are views of its
    registered parameters) and MLflow's artifact-download bar is not the user's business: neither
    reaches the cell. The version still serves as pt2."""
    import warnings

    example = torch.randn(3, 5, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = api.register(_Recurrent(), example, name="gru-quiet", task="other")
    assert r.format == "pt2"
    assert not [w for w in caught if "assigned during export" in str(w.message)]
    assert "Downloading artifacts" not in capfd.readouterr().err
