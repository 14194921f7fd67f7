"""fit on rows of any shape with any loss: images, sequences, tokens, one label per position,
several regression outputs, built-in losses by name and custom loss callables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kernel_magics.errors import InvalidInput
from kernel_magics.training.config import TrainConfig
from kernel_magics.training.data import prepare_data
from kernel_magics.training.fit import fit


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.head = torch.nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.head(x.flatten(1))


class Tagger(torch.nn.Module):
    """One class per position: (rows, positions) int64 tokens -> (rows, positions, classes)."""

    def __init__(self, vocab: int = 30, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, 16)
        self.head = torch.nn.Linear(16, classes)

    def forward(self, tokens):
        return self.head(self.embed(tokens))


@pytest.fixture(scope="module")
def images(digits_xy):
    X, y = digits_xy
    return prepare_data((X[:600] / 16.0).reshape(-1, 1, 8, 8), y[:600])


@pytest.fixture(scope="module")
def tagged():
    tokens = np.random.default_rng(0).integers(0, 30, size=(300, 8))
    return prepare_data(tokens, tokens % 3, task="classification")


def test_cnn_on_images_learns(images):
    result = fit(SmallCNN(), images, TrainConfig(epochs=2, lr=3e-3))
    assert result.final_metrics["accuracy"] > 0.6


def test_per_position_cross_entropy_by_default(tagged):
    result = fit(Tagger(), tagged, TrainConfig(epochs=5, lr=3e-2))
    # accuracy over every position: the tag is a function of the token, easy to learn
    assert result.final_metrics["accuracy"] > 0.8
    assert set(result.final_metrics) >= {"accuracy", "f1_macro", "val_loss"}


def test_custom_loss_callable(tagged):
    calls = []

    def tag_loss(outputs, targets):
        calls.append(outputs.shape)
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))

    result = fit(Tagger(), tagged, TrainConfig(epochs=2, lr=1e-2, loss=tag_loss))
    assert calls[0] == (2, 8, 3)  # the check before training: 2 rows, as the model answers
    assert result.final_metrics["accuracy"] > 0.6


@pytest.mark.parametrize("loss", ["mse", "l1", "huber"])
def test_regression_losses_on_several_outputs(diabetes_xy, make_mlp, loss):
    X, y = diabetes_xy
    data = prepare_data(X, np.stack([y, -y], axis=1) / 100.0)
    assert data.n_outputs == 2
    result = fit(make_mlp(n_in=10, n_out=2), data, TrainConfig(epochs=2, lr=1e-2, loss=loss))
    assert set(result.history[-1].metrics) == {"mse", "mae", "r2"}
    assert all(math.isfinite(v) for v in result.final_metrics.values())


def test_bce_on_zero_one_targets(make_mlp):
    X = np.random.default_rng(0).normal(size=(200, 6))
    labels = np.stack([X[:, 0] > 0, X[:, 1] > 0], axis=1).astype(np.float32)  # two labels
    data = prepare_data(X, labels, task="regression")
    result = fit(make_mlp(n_in=6, n_out=2), data, TrainConfig(epochs=3, lr=1e-2, loss="bce"))
    assert math.isfinite(result.final_metrics["val_loss"])
    with pytest.raises(InvalidInput, match="loss 'bce' needs targets between 0 and 1"):
        fit(make_mlp(n_in=6, n_out=2), prepare_data(X, labels * 3), TrainConfig(loss="bce"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"loss": "hinge"}, "unknown loss 'hinge'; choose one of cross_entropy, mse"),
        ({"loss": 3}, "unknown loss 3"),
        ({"task": "classification", "loss": "mse"}, "loss 'mse' is for regression targets"),
        ({"task": "clustering"}, "task must be 'classification' or 'regression'"),
    ],
)
def test_bad_loss_options(changes, message):
    with pytest.raises(InvalidInput, match=message):
        TrainConfig(**changes)


def test_a_builtin_loss_implies_the_task():
    assert TrainConfig(loss="mse").target_task == "regression"
    assert TrainConfig(loss="cross_entropy").target_task == "classification"
    assert TrainConfig(loss=F.mse_loss).target_task is None  # a callable: from the targets
    assert TrainConfig(loss=F.mse_loss).params("regression")["loss"] == "mse_loss"


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (lambda out, y: out.sum(dim=(1, 2)), r"^the loss must return a scalar tensor, got \(2,\)$"),
        (lambda out, y: 1.0, r"^the loss must return a scalar tensor, got float$"),
        (lambda out, y: out.nope, r"^the loss failed on a batch of the training data: "),
    ],
)
def test_a_broken_custom_loss_fails_before_training(tagged, recorder, loss, message):
    with pytest.raises(InvalidInput, match=message):
        fit(Tagger(), tagged, TrainConfig(loss=loss), progress=recorder)
    assert recorder.calls == []


def test_per_position_labels_need_per_position_outputs(tagged):
    class PerRow(Tagger):
        def forward(self, tokens):
            return super().forward(tokens).mean(1)  # (rows, classes)

    with pytest.raises(InvalidInput, match=r"shape \(2, 3\) for 2 rows; it must be \(rows, 8, 3\)"):
        fit(PerRow(), tagged, TrainConfig(epochs=1))


def test_a_tagger_on_regression_targets_is_told_about_the_task():
    tokens = np.random.default_rng(0).integers(0, 30, size=(40, 8))
    data = prepare_data(tokens, tokens % 3)  # several integer columns: regression targets
    with pytest.raises(InvalidInput, match="pass task='classification'"):
        fit(Tagger(), data, TrainConfig(epochs=1))


def test_int64_features_on_a_float_model_get_a_hint(make_mlp):
    X = np.random.default_rng(0).integers(0, 5, size=(40, 64))
    data = prepare_data(X, np.arange(40) % 2)
    with pytest.raises(InvalidInput, match=r"X is int64, kept for token ids .*astype\('float32'\)"):
        fit(make_mlp(n_out=2), data, TrainConfig(epochs=1))
