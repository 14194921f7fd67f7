"""%train on rows of any shape, in a real IPython shell against a real MLflow store: a CNN on
digit images, a GRU on sequences, an embedding model on int64 tokens, several regression
outputs, and a per-position tagger with a loss defined in the notebook. Each version is exported
with the full row shape and a dynamic batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kernel_magics import api
from kernel_magics.config import load_settings
from kernel_magics.store import Store

MODELS_CELL = """
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        return self.head(F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1))

class GRUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(3, 16, batch_first=True)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1])

class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, tokens):
        return self.head(self.embed(tokens).mean(1))

class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(40, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens):
        return self.head(self.embed(tokens))

def tag_loss(outputs, targets):
    return F.cross_entropy(outputs.movedim(-1, 1), targets, label_smoothing=0.05)

rng = np.random.default_rng(0)
images = X[:400].reshape(-1, 1, 8, 8)
labels = y[:400]
sequences = rng.normal(size=(300, 6, 3)).astype(np.float32)
seq_labels = (sequences[:, :, 0].sum(axis=1) > 0).astype(int)
tokens = rng.integers(0, 40, size=(300, 7))
token_labels = (tokens < 20).sum(axis=1) > 3
tags = tokens % 3
features = rng.normal(size=(300, 5))
targets = np.stack([features[:, 0] + features[:, 1], features[:, 2] * 2], axis=1)
"""


@pytest.fixture(scope="module")
def shell(ns: Any, run_cell: Any) -> Any:
    torch.manual_seed(0)
    run_cell(ns, MODELS_CELL)
    return ns


def _run_params(home: Path, run_id: str) -> dict[str, str]:
    return Store(load_settings(home=home)).client.get_run(run_id).data.params


def _signature_and_graph(home: Path, name: str, version: int) -> tuple[Any, Any]:
    """The version's MLflow input schema and (pt2) exported module, read from the store."""
    from mlflow.models import Model

    store = Store(load_settings(home=home))
    path = Path(store.local_path(store.resolve(name, version)))
    spec = Model.load(str(path)).signature.inputs.inputs[0]
    return spec, torch.export.load(str(path / "data" / "model.pt2")).module()


def test_cnn_on_images(shell: Any, km_home: Path) -> None:
    r = shell.run_line_magic("train", "CNN() --data images labels --epochs 2 --lr 3e-3 --name cnn")
    assert (r.name, r.version, r.format) == ("cnn", 1, "pt2")
    assert r.metrics["accuracy"] > 0.5
    spec, graph = _signature_and_graph(km_home, "cnn", 1)
    assert spec.shape == (-1, 1, 8, 8)
    assert spec.type == np.dtype("float32")
    batch = torch.from_numpy(shell.user_ns["images"][:3])  # 3 rows: the batch is dynamic
    with torch.no_grad():
        torch.testing.assert_close(graph(batch), r.model(batch))


def test_gru_on_sequences(shell: Any, km_home: Path) -> None:
    r = shell.run_line_magic("train", "GRUNet() --data sequences seq_labels --epochs 2 --name gru")
    assert r.format == "pt2"
    assert 0 <= r.metrics["accuracy"] <= 1
    spec, graph = _signature_and_graph(km_home, "gru", r.version)
    assert spec.shape == (-1, 6, 3)
    assert graph(torch.zeros(7, 6, 3)).shape == (7, 2)


def test_embedding_model_on_int64_tokens(shell: Any, km_home: Path) -> None:
    r = shell.run_line_magic("train", "Bag() --data tokens token_labels --epochs 2 --name bag")
    assert [c for c in api.models() if c.name == "bag"][0].versions[0].task == "classification"
    spec, graph = _signature_and_graph(km_home, "bag", r.version)
    assert spec.shape == (-1, 7)
    assert spec.type == np.dtype("int64")
    tokens = torch.from_numpy(shell.user_ns["tokens"][:4])
    with torch.no_grad():
        torch.testing.assert_close(graph(tokens), r.model(tokens))


def test_several_regression_outputs(shell: Any, km_home: Path) -> None:
    shell.run_cell("reg = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 2))")
    r = shell.run_line_magic(
        "train", "reg --data features targets --epochs 3 --lr 1e-2 --loss huber --name reg2"
    )
    assert {"mse", "mae", "r2"} <= set(r.metrics)
    params = _run_params(km_home, r.run_id)
    assert params["loss"] == "huber"
    assert params["task"] == "regression"


def test_per_position_tagger_with_a_notebook_loss(shell: Any, km_home: Path) -> None:
    r = shell.run_line_magic(
        "train",
        "Tagger() --data tokens tags --task classification --loss tag_loss --epochs 4 "
        "--lr 3e-2 --name tagger",
    )
    assert r.metrics["accuracy"] > 0.6  # per position
    assert _run_params(km_home, r.run_id)["loss"] == "tag_loss"
    spec, graph = _signature_and_graph(km_home, "tagger", r.version)
    assert spec.shape == (-1, 7)
    assert spec.type == np.dtype("int64")
    assert graph(torch.zeros(2, 7, dtype=torch.int64)).shape == (2, 7, 3)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("Tagger() --data tokens tags --loss no_such_loss", "unknown loss 'no_such_loss'"),
        ("Tagger() --data tokens tags --loss 42", "unknown loss 42"),
        ("Tagger() --data tokens tags --task classification --loss mse", "is for regression"),
        ("CNN() --data images[:, :, :0] labels", "X has an empty dimension"),
    ],
)
def test_mistakes_stay_one_line(shell: Any, line: str, expected: str) -> None:
    from IPython.core.error import UsageError

    before = {s.name: len(s.versions) for s in api.models()}
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("train", line + " --name mistake")
    assert type(caught.value) is UsageError
    assert "\n" not in str(caught.value)
    assert expected in str(caught.value)
    assert {s.name: len(s.versions) for s in api.models()} == before


class ZMQInteractiveShell:  # a Jupyter kernel, as far as the progress resolution can tell
    display_formatter = None


def test_the_extension_registers_the_widget(shell: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import IPython

    from kernel_magics.training.progress import ENV_VAR, make_progress
    from kernel_magics.widgets.progress import WidgetProgress

    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(IPython, "get_ipython", ZMQInteractiveShell)
    assert type(make_progress("auto")) is WidgetProgress  # what api.train(progress="auto") gets
