"""fit: real training on bundled data, determinism, up-front model checks, interrupts."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from kernel_magics.errors import InvalidInput, TrainingInterrupted
from kernel_magics.training.config import TrainConfig
from kernel_magics.training.data import prepare_data
from kernel_magics.training.fit import EpochResult, FitResult, _batch_sizes, fit


@pytest.fixture(scope="module")
def digits(digits_xy):
    X, y = digits_xy
    return prepare_data(X / 16.0, y, seed=0)


@pytest.fixture(scope="module")
def diabetes(diabetes_xy):
    X, y = diabetes_xy
    return prepare_data(X, y, seed=0)


def test_digits_mlp_learns(digits, make_mlp, recorder):
    model = make_mlp()
    seen: list[EpochResult] = []
    started = time.perf_counter()
    result = fit(
        model, digits, TrainConfig(epochs=5, lr=3e-3), on_epoch=seen.append, progress=recorder
    )
    assert time.perf_counter() - started < 10
    assert isinstance(result, FitResult)  # an interrupt raises instead of returning
    assert [r.epoch for r in result.history] == [1, 2, 3, 4, 5] == [r.epoch for r in seen]
    assert all(r.epochs == 5 and r.seconds >= 0 for r in result.history)
    assert result.final_metrics["accuracy"] > 0.8
    assert set(result.final_metrics) == {
        "train_loss",
        "val_loss",
        "accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
    }
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert not model.training  # left in eval mode
    # The reporter saw start, one epoch_end per epoch, then finish("done"); step once per batch.
    steps = math.ceil(len(digits.X_train) / 64)
    assert recorder.calls[0] == ("start", (5, steps, "Sequential"))
    assert recorder.kinds() == ["start"] + ["epoch_end"] * 5 + ["finish"]
    assert recorder.calls[-1][1][0] == "done"
    assert "accuracy" in recorder.calls[-1][1][1]
    assert recorder.steps == 5 * steps


def test_diabetes_regression_gives_finite_metrics(diabetes, make_mlp):
    model = make_mlp(n_in=10, n_out=1)
    result = fit(model, diabetes, TrainConfig(epochs=3, lr=1e-2))
    assert set(result.history[-1].metrics) == {"mse", "mae", "r2"}
    assert all(math.isfinite(v) for v in result.final_metrics.values())


def test_single_target_model_may_return_a_vector(diabetes):
    class Flat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(10, 1)

        def forward(self, x):
            return self.linear(x).squeeze(-1)  # shape (rows,)

    result = fit(Flat(), diabetes, TrainConfig(epochs=1))
    assert math.isfinite(result.final_metrics["mse"])


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


def test_same_seed_gives_identical_weights(digits, make_mlp):
    def train(seed):
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 10)
        )
        fit(model, digits, TrainConfig(epochs=2, seed=seed))
        return _weights(model)

    a, b, c = train(1), train(1), train(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_fit_leaves_the_global_random_stream_alone(digits, make_mlp):
    model = make_mlp()
    state = torch.get_rng_state()
    fit(model, digits, TrainConfig(epochs=1, seed=123))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop", "SGD"])
def test_every_optimizer_trains(digits, make_mlp, name):
    lr = 1e-2 if "sgd" in name.lower() else 1e-3
    result = fit(
        make_mlp(), digits, TrainConfig(epochs=2, lr=lr, optimizer=name, weight_decay=1e-4)
    )
    assert result.final_metrics["accuracy"] > 0.5


def test_without_validation_set_metrics_are_on_training_rows(digits_xy, make_mlp):
    X, y = digits_xy
    data = prepare_data(X / 16.0, y, val_split=0)
    result = fit(make_mlp(), data, TrainConfig(epochs=2))
    assert result.metrics_on == "train"
    assert result.history[0].metrics_on == "train"
    assert math.isfinite(result.final_metrics["val_loss"])


def test_batchnorm_never_gets_a_single_row_batch(make_mlp):
    # 65 training rows with batch_size 64 would leave a last batch of 1 row, which BatchNorm
    # rejects in train mode; fit merges it into the previous batch.
    assert _batch_sizes(65, 64) == [65]
    assert _batch_sizes(129, 64) == [64, 65]
    assert _batch_sizes(10, 64) == [10]
    assert _batch_sizes(128, 64) == [64, 64]
    assert _batch_sizes(1, 64) == [1]
    rng = np.random.default_rng(0)
    data = prepare_data(rng.normal(size=(65, 4)), np.arange(65) % 2, val_split=0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)
    )
    fit(model, data, TrainConfig(epochs=2, batch_size=64))


# -- model checks -----------------------------------------------------------------------------
class Boom(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x):
        raise RuntimeError("shapes do not line up\nsecond line")


class Pair(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x):
        return self.linear(x), x


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda m: m(n_out=5), r"^model output has 5 columns but the data has 10 classes$"),
        (lambda m: m(n_in=32), r"^model failed on a batch of the training data: RuntimeError: "),
        (lambda m: Boom(), r"^model failed on a batch of the training data: RuntimeError: "),
        (lambda m: Pair(), r"^model returned a tuple; it must return one tensor$"),
        (lambda m: torch.nn.Identity(), r"^the model has no trainable parameters$"),
        (lambda m: m().double(), r"^model failed on a batch .*dtype"),
    ],
)
def test_model_that_does_not_fit_the_data(digits, make_mlp, recorder, model, message):
    with pytest.raises(InvalidInput, match=message) as info:
        fit(model(make_mlp), digits, TrainConfig(epochs=1), progress=recorder)
    assert "\n" not in str(info.value)
    assert recorder.calls == []  # rejected before any progress was shown


def test_regression_width_message(diabetes, make_mlp):
    with pytest.raises(
        InvalidInput, match=r"^model output has 3 columns but the data has 1 target"
    ):
        fit(make_mlp(n_in=10, n_out=3), diabetes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "epochs must be a whole number >= 1, got 0"),
        ({"epochs": 2.5}, "epochs must be a whole number >= 1"),
        ({"lr": 0}, "lr must be a positive number, got 0"),
        ({"lr": -1e-3}, "lr must be a positive number"),
        ({"lr": float("nan")}, "lr must be a positive number"),
        ({"batch_size": 0}, "batch_size must be a whole number >= 1, got 0"),
        ({"weight_decay": -1}, "weight_decay must be a number >= 0"),
        ({"seed": "x"}, "seed must be an integer"),
        (
            {"optimizer": "lbfgs"},
            "unknown optimizer 'lbfgs'; choose one of adam, adamw, sgd, rmsprop",
        ),
    ],
)
def test_bad_arguments(digits, make_mlp, kwargs, message):
    with pytest.raises(InvalidInput) as info:
        fit(make_mlp(), digits, TrainConfig(**kwargs))
    assert message in str(info.value)


def test_not_prepared_data(make_mlp):
    with pytest.raises(InvalidInput, match="data must come from prepare_data"):
        fit(make_mlp(), (np.ones((4, 64)), np.zeros(4)))


def test_divergence_is_reported(diabetes, make_mlp, recorder):
    model = make_mlp(n_in=10, n_out=1)
    with pytest.raises(InvalidInput, match=r"training diverged at epoch 1/3: the loss became"):
        fit(model, diabetes, TrainConfig(epochs=3, lr=1e6, optimizer="sgd"), progress=recorder)
    assert recorder.calls[-1][1][0] == "failed"
    assert not model.training


# -- interrupts and failures ------------------------------------------------------------------
def test_interrupt_from_on_epoch(digits, make_mlp, recorder):
    model = make_mlp()

    def on_epoch(result):
        if result.epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match=r"^training interrupted at epoch 3/10$") as info:
        fit(model, digits, TrainConfig(epochs=10), on_epoch=on_epoch, progress=recorder)
    assert isinstance(info.value.__cause__, KeyboardInterrupt)
    assert [r.epoch for r in info.value.history] == [1, 2, 3]
    assert recorder.calls[-1] == ("finish", ("interrupted", "training interrupted at epoch 3/10"))
    _still_usable(model)


class InterruptOnCall(torch.nn.Module):
    """Raises KeyboardInterrupt on its n-th forward, as a kernel interrupt would mid-batch."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)
        self.calls, self.n = 0, n

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.linear(x)


def test_interrupt_inside_forward(digits, recorder):
    model = InterruptOnCall(3)  # call 1 is fit's check, 2 and 3 are training batches
    with pytest.raises(TrainingInterrupted, match=r"^training interrupted at epoch 1/4$") as info:
        fit(model, digits, TrainConfig(epochs=4), progress=recorder)
    assert isinstance(info.value.__cause__, KeyboardInterrupt)
    assert recorder.kinds() == ["start", "finish"]
    assert recorder.calls[-1][1][0] == "interrupted"
    _still_usable(model)


def test_interrupt_during_the_check_is_an_interrupt(digits):
    with pytest.raises(TrainingInterrupted, match="before the first epoch"):
        fit(InterruptOnCall(1), digits)


def _still_usable(model):
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        out = model(torch.rand(3, 64))
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()


def test_failing_callback_reports_failed_and_reraises(digits, make_mlp, recorder):
    model = make_mlp()

    def on_epoch(result):
        raise RuntimeError("store is down")

    with pytest.raises(RuntimeError, match="store is down"):
        fit(model, digits, TrainConfig(epochs=2), on_epoch=on_epoch, progress=recorder)
    assert recorder.calls[-1] == ("finish", ("failed", "store is down"))
    assert not model.training
