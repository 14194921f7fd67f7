"""Keras 3 models under the torch backend: the design documents' Dense Sequential compiled, fit
and registered unchanged but for the import line, exported with torch.export and checked
against ``model.predict``, deployed, predicted over real HTTP, rolled back; MLflow's keras
flavor loads the same version; bad input in one line. Real IPython shell, real MLflow store,
one real inference process."""

from __future__ import annotations

import json
import os
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is first imported, as a user does

import keras
import mlflow
import numpy as np
import pytest
import requests
from IPython.core.error import UsageError
from kit.serving import assert_served
from sklearn.datasets import load_breast_cancer

from kernel_magics import api
from kernel_magics.config import load_settings
from kernel_magics.frameworks import TAG_CONVERSION, TOLERANCE
from kernel_magics.store import Store

DESIGN_CELL = """
from keras.models import Sequential
from keras.layers import Dense

model = Sequential([Dense(64, activation="relu"), Dense(64, activation="relu"),
                    Dense(1, activation="sigmoid")])
model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
model.fit(X, y, epochs=2, batch_size=64, verbose=0)
"""

V2_CELL = """
model2 = Sequential([Dense(8, activation="relu"), Dense(1, activation="sigmoid")])
model2.compile(optimizer="adam", loss="binary_crossentropy")
model2.fit(X, y, epochs=1, verbose=0)
"""


@pytest.fixture(scope="module")
def shell(ip: Any, run_cell: Any) -> Any:
    X, y = load_breast_cancer(return_X_y=True)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
    ip.user_ns.update(X=X, y=y)
    keras.utils.set_random_seed(0)
    run_cell(ip, DESIGN_CELL)
    return ip


@pytest.fixture(scope="module")
def registered(shell: Any, run_cell: Any) -> Any:
    return run_cell(shell, "%register model --name keras-mlp --example X[:2]")


def _conversion(name: str, version: int) -> dict:
    return json.loads(Store(load_settings()).resolve(name, version).tags[TAG_CONVERSION])


def test_the_design_documents_model_registers_checked(registered: Any) -> None:
    assert registered.format == "pt2"
    assert any("exported with torch.export" in n and "model.predict" in n for n in registered.notes)
    record = _conversion("keras-mlp", registered.version)
    assert record["converter"] == "torch.export"
    assert record["input_dtype"] == "float32"
    assert record["rows_checked"] == 2
    assert 0 <= record["max_abs_diff"] <= record["tolerance"] == TOLERANCE


def test_served_answers_are_model_predict(registered: Any, shell: Any) -> None:
    X, model = shell.user_ns["X"], shell.user_ns["model"]
    api.deploy("keras-mlp")
    rows = X[100:164]
    served = api.predict("keras-mlp", rows)
    expected = model.predict(rows, verbose=0)
    assert served.shape == expected.shape == (64, 1)
    assert np.abs(served - expected).max() <= _conversion("keras-mlp", 1)["tolerance"]


def test_mlflow_loads_the_keras_flavor(registered: Any, shell: Any) -> None:
    X, model = shell.user_ns["X"], shell.user_ns["model"]
    with Store(load_settings()).tracking():
        info = mlflow.models.get_model_info(f"models:/keras-mlp/{registered.version}")
        loaded = mlflow.pyfunc.load_model(f"models:/keras-mlp/{registered.version}")
    assert info.flavors["python_function"]["loader_module"] == "mlflow.keras"
    assert {"keras", "pytorch"} <= set(info.flavors)
    assert np.abs(np.asarray(loaded.predict(X[:8])) - model.predict(X[:8], verbose=0)).max() < 1e-6


def test_v2_hot_swaps_in_and_rolls_back(registered: Any, shell: Any, run_cell: Any) -> None:
    X, first = shell.user_ns["X"], shell.user_ns["model"]
    run_cell(shell, V2_CELL)
    v2 = run_cell(shell, "%register model2 --name keras-mlp --example X[:2] --sample X[:50]")
    assert v2.version == registered.version + 1
    api.deploy("keras-mlp")
    rows = X[:20]
    second = shell.user_ns["model2"].predict(rows, verbose=0)
    assert np.abs(api.predict("keras-mlp", rows) - second).max() <= TOLERANCE
    api.rollback("keras-mlp")
    back = api.predict("keras-mlp", rows)
    assert np.abs(back - first.predict(rows, verbose=0)).max() <= TOLERANCE


def test_evaluate_reads_a_sigmoid_as_a_probability(registered: Any, shell: Any) -> None:
    X, y, model = shell.user_ns["X"], shell.user_ns["y"], shell.user_ns["model"]
    assert _conversion("keras-mlp", registered.version)["outputs"] == "probabilities"
    ev = api.evaluate(f"keras-mlp@{registered.version}", X, y)
    predicted = (model.predict(X, verbose=0)[:, 0] > 0.5).astype(int)
    assert ev.metrics["accuracy"] == pytest.approx(float((predicted == y).mean()))


TRAIN_CELL = """
trained = Sequential([Dense(16, activation="relu"), Dense(1, activation="sigmoid")])
trained.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
r = %train trained --data X y --epochs 3 --batch-size 32 --name keras-trained
"""


def test_train_fits_a_compiled_model_with_its_own_fit(shell: Any, run_cell: Any) -> None:
    run_cell(shell, TRAIN_CELL)
    r, trained = shell.user_ns["r"], shell.user_ns["trained"]
    assert r.format == "pt2"
    assert r.version == 1
    assert [h["epoch"] for h in r.history] == [1, 2, 3]
    assert {"loss", "val_loss", "accuracy"} <= set(r.history[0])  # Keras's own epoch logs
    assert r.metrics["accuracy"] > 0.8  # the project's metrics on the validation split
    with Store(load_settings()).tracking():
        run = mlflow.get_run(r.run_id)
        val_loss = mlflow.MlflowClient().get_metric_history(r.run_id, "val_loss")
    assert run.data.params["epochs"] == "3"
    assert run.data.params["model_class"] == "Sequential"
    assert run.data.params["seed"] == "0"
    assert [m.step for m in val_loss] == [1, 2, 3]  # Keras's epoch logs, one step each
    assert run.data.metrics["accuracy"] == pytest.approx(r.metrics["accuracy"])
    info = Store(load_settings()).resolve("keras-trained", 1)
    assert info.task == "classification"
    X = shell.user_ns["X"]
    assert np.abs(r.predict(X[:4]) - trained.predict(X[:4], verbose=0)).max() <= TOLERANCE


def test_an_uncompiled_model_does_not_train(shell: Any, run_cell: Any) -> None:
    run_cell(shell, "bare = Sequential([Dense(1)])")
    with pytest.raises(UsageError) as err:
        run_cell(shell, "%train bare --data X y --name keras-bare")
    assert "not compiled" in str(err.value)
    assert "\n" not in str(err.value)
    assert not [s for s in api.models() if s.name == "keras-bare"]


def test_another_backend_is_one_line(
    shell: Any, run_cell: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the torch backend is installed here: the backend keras reports is what cannot run.
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(UsageError) as err:
        run_cell(shell, "%register model --name keras-jax --example X[:2]")
    message = str(err.value)
    assert "set KERAS_BACKEND=torch before importing keras" in message
    assert "\n" not in message
    assert not [s for s in api.models() if s.name == "keras-jax"]


def test_invocations_answer_as_the_keras_pyfunc(registered: Any, shell: Any) -> None:
    """``mlflow models serve`` answers ``{"predictions": pyfunc.predict(rows)}``: the keras
    flavor's predict, which the served program must match to the bit."""
    X = shell.user_ns["X"]
    api.deploy("keras-mlp", registered.version)
    with Store(load_settings()).tracking():
        pyfunc = mlflow.pyfunc.load_model(f"models:/keras-mlp/{registered.version}")
    expected = json.loads(json.dumps({"predictions": pyfunc.predict(X[:6]).tolist()}))
    status = api.server_status()
    assert status is not None
    columns = [str(i) for i in range(X.shape[1])]
    for doc in (
        {"inputs": X[:6].tolist()},
        {"dataframe_split": {"columns": columns, "data": X[:6].tolist()}},
    ):
        mine = requests.post(
            f"{status.url}/v1/models/keras-mlp/invocations",
            json=doc,
            headers={"Authorization": f"Bearer {api.server_token()}"},
            timeout=30,
        )
        assert mine.status_code == 200, mine.text
        answer = mine.json()
        assert list(answer) == list(expected)  # the pyfunc's shape: {"predictions": rows}
        # its numbers up to float32 rounding (the served pt2 program and Keras's own forward
        # may group a product's rows differently)
        assert_served(np.array(answer["predictions"]), np.array(expected["predictions"]))
