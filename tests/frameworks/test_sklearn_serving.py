"""scikit-learn estimators through the whole lifecycle: register (converted to ONNX and checked
against the estimator, or served by the estimator itself with the reason said), deploy, predict
over real HTTP, hot swap to v2, rollback; %train of an estimator; model files by path; bad
input. Real IPython shell, real MLflow store in a temp home, one real inference process."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import mlflow
import numpy as np
import onnx
import pandas as pd
import pytest
import requests
import torch
from IPython.core.error import UsageError
from kit.mlflow_serve import MlflowServe
from sklearn.datasets import load_diabetes
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kernel_magics import api
from kernel_magics.config import load_settings
from kernel_magics.frameworks import TAG_CONVERSION, TOLERANCE
from kernel_magics.frameworks.files import UnpicklingWarning
from kernel_magics.frameworks.sklearn_models import run_graph, to_onnx_graph
from kernel_magics.store import Store


@pytest.fixture(scope="module")
def data(digits: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    X, y = digits
    return X[:600], y[:600]


@pytest.fixture(scope="module")
def mlp(data: tuple[np.ndarray, np.ndarray]) -> MLPClassifier:
    X, y = data
    return MLPClassifier((32,), max_iter=300, random_state=0).fit(X, y)


@pytest.fixture(scope="module")
def registered_mlp(km_home: Path, data: Any, mlp: MLPClassifier) -> Any:
    X, _ = data
    return api.register(mlp, X[:2], name="sk-mlp", sample=X[:300])


@pytest.fixture(scope="module")
def shell(ip: Any, data: tuple[np.ndarray, np.ndarray]) -> Any:
    """The notebook: X and y loaded."""
    X, y = data
    ip.user_ns.update(X=X, y=y)
    return ip


def _conversion(name: str, version: int) -> dict:
    info = Store(load_settings()).resolve(name, version)
    return json.loads(info.tags[TAG_CONVERSION])


def _post(path: str, doc: Any, content_type: str = "application/json") -> requests.Response:
    status = api.server_status()
    assert status is not None
    return requests.post(
        f"{status.url}{path}",
        data=doc if isinstance(doc, bytes) else json.dumps(doc),
        headers={"Content-Type": content_type, "Authorization": f"Bearer {api.server_token()}"},
        timeout=30,
    )


@pytest.fixture(scope="module")
def mlflow_url(registered_mlp: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow models serve`` on the version's own folder (its sklearn flavor)."""
    with Store(load_settings()).tracking():
        folder = mlflow.artifacts.download_artifacts(f"models:/sk-mlp/{registered_mlp.version}")
    server = MlflowServe(folder, tmp_path_factory.mktemp("mlflow-serve") / "serve.log")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def _versions(name: str) -> int:
    return sum(len(s.versions) for s in api.models() if s.name == name)


# -- a converted classifier ---------------------------------------------------------------------
def test_a_classifier_converts_and_states_its_tolerance(registered_mlp: Any) -> None:
    r = registered_mlp
    assert r.format == "onnx"
    assert any("converted to ONNX with float32 inputs" in n for n in r.notes)
    record = _conversion("sk-mlp", r.version)
    assert record["converter"] == "skl2onnx"
    assert record["input_dtype"] == "float32"
    assert record["rows_checked"] == 302  # the example and the sample
    assert 0 <= record["max_abs_diff"] <= record["tolerance"] == TOLERANCE
    info = Store(load_settings()).resolve("sk-mlp", r.version)
    assert info.task == "classification"
    assert info.classes == list(range(10))


def test_served_answers_are_the_estimators(registered_mlp: Any, data: Any, mlp: Any) -> None:
    X, _ = data
    api.deploy("sk-mlp")
    rows = X[300:364]
    probabilities = api.predict("sk-mlp", rows, raw=True)
    assert probabilities.shape == (64, 10)
    tolerance = _conversion("sk-mlp", registered_mlp.version)["tolerance"]
    assert np.abs(probabilities - mlp.predict_proba(rows)).max() <= tolerance
    assert (api.predict("sk-mlp", rows) == mlp.predict(rows)).all()
    labelled = _post("/v1/models/sk-mlp:predict?labels=true", {"instances": rows.tolist()})
    assert labelled.status_code == 200, labelled.text
    assert labelled.json()["labels"] == mlp.predict(rows).tolist()


def test_bad_rows_get_a_4xx_and_the_model_keeps_serving(registered_mlp: Any, data: Any) -> None:
    X, _ = data
    api.deploy("sk-mlp")
    wrong = _post("/v1/models/sk-mlp:predict", {"instances": [[1.0, 2.0, 3.0]]})
    assert 400 <= wrong.status_code < 500
    assert "error" in wrong.json()
    words = _post("/v1/models/sk-mlp:predict", {"instances": [["a"] * 64]})
    assert 400 <= words.status_code < 500
    assert "error" in words.json()
    assert api.predict("sk-mlp", X[:3], raw=True).shape == (3, 10)


def test_mlflow_pyfunc_loads_the_version(registered_mlp: Any, data: Any, mlp: Any) -> None:
    X, _ = data
    with Store(load_settings()).tracking():
        loaded = mlflow.pyfunc.load_model(f"models:/sk-mlp/{registered_mlp.version}")
    assert (np.asarray(loaded.predict(X[:8])) == mlp.predict(X[:8])).all()


def test_v2_hot_swaps_in_and_rolls_back(registered_mlp: Any, data: Any, mlp: Any) -> None:
    X, y = data
    other = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y)
    v2 = api.register(other, X[:2], name="sk-mlp", sample=X[:100])
    assert v2.version == registered_mlp.version + 1
    assert v2.format == "onnx"
    rows = X[400:450]
    api.deploy("sk-mlp")
    served = api.predict("sk-mlp", rows, raw=True)
    assert np.abs(served - other.predict_proba(rows)).max() <= _conversion("sk-mlp", 2)["tolerance"]
    api.rollback("sk-mlp")
    back = api.predict("sk-mlp", rows, raw=True)
    assert np.abs(back - mlp.predict_proba(rows)).max() <= _conversion("sk-mlp", 1)["tolerance"]


def _invocation_cases(X: np.ndarray) -> list[tuple[str, bytes, str]]:
    rows = X[:5].tolist()
    columns = [str(i) for i in range(X.shape[1])]
    csv = "\n".join([",".join(columns)] + [",".join(map(str, r)) for r in rows])
    records = [dict(zip(columns, r, strict=True)) for r in rows]
    docs = {
        "split": {"dataframe_split": {"columns": columns, "data": rows}},
        "records": {"dataframe_records": records},
        "inputs": {"inputs": rows},
        "instances": {"instances": rows},
        "wrong features": {"inputs": [[1.0] * 10]},
        "strings": {"inputs": [["a"] * X.shape[1]]},
    }
    cases = [(name, json.dumps(doc).encode(), "application/json") for name, doc in docs.items()]
    return [*cases, ("csv", csv.encode(), "text/csv")]


def test_invocations_answer_as_mlflow_models_serve(
    registered_mlp: Any, data: Any, mlflow_url: str
) -> None:
    X, _ = data
    api.deploy("sk-mlp", registered_mlp.version)
    for name, body, ctype in _invocation_cases(X):
        theirs = requests.post(
            f"{mlflow_url}/invocations", data=body, headers={"Content-Type": ctype}, timeout=30
        )
        mine = _post("/v1/models/sk-mlp/invocations", body, ctype)
        assert mine.status_code // 100 == theirs.status_code // 100, (name, theirs.text, mine.text)
        if theirs.status_code == 200:
            assert mine.json() == theirs.json(), name  # the estimator's labels, as predict answers
        else:
            assert mine.json()["error"], name


def test_evaluate_compare_and_explain_an_estimators_versions(
    registered_mlp: Any, data: Any, mlp: Any, shell: Any
) -> None:
    X, y = data
    held_out, truth = X[300:], y[300:]
    ev = api.evaluate(f"sk-mlp@{registered_mlp.version}", held_out, truth)
    assert ev.metrics["accuracy"] == pytest.approx(accuracy_score(truth, mlp.predict(held_out)))
    # the outputs are probabilities already: scored as they are, not through a softmax
    expected_auc = roc_auc_score(truth, mlp.predict_proba(held_out), multi_class="ovr")
    assert ev.metrics["roc_auc"] == pytest.approx(expected_auc, abs=1e-6)

    comparison = api.compare("sk-mlp", 1, 2)
    assert comparison.row("format").values == ["onnx", "onnx"]
    assert all(v is not None and v > 0 for v in comparison.row("latency_ms").values)

    e = api.explain(f"sk-mlp@{registered_mlp.version}", X[:2])
    assert e.method == "Feature Ablation"
    assert e.attributions.shape == (2, 64)
    header = shell.display_formatter.format(e)[0]["text/plain"]
    assert "Feature Ablation on 2 rows" in header


def test_a_converted_estimator_quantizes_to_int8(registered_mlp: Any, data: Any) -> None:
    X, y = data
    r = api.optimize(
        f"sk-mlp@{registered_mlp.version}", quantize="dynamic", X=X, y=y, progress="none"
    )
    assert r.format == "onnx"
    assert r.parent == f"sk-mlp@{registered_mlp.version}"
    assert r.figures.size_bytes < r.parent_figures.size_bytes
    assert r.figures.metrics["accuracy"] >= r.parent_figures.metrics["accuracy"] - 0.02


# -- a DataFrame with a string column ----------------------------------------------------------
def _table(rows: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "age": rng.normal(40, 10, rows),
            "color": rng.choice(["red", "green", "blue"], rows),
            "income": rng.normal(50, 20, rows),
        }
    )
    return frame, ((frame.age > 40) ^ (frame.color == "red")).to_numpy().astype(int)


TABLE_CELL = """
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

columns = ColumnTransformer([("color", OneHotEncoder(), ["color"]),
                             ("numbers", StandardScaler(), ["age", "income"])])
pipe = Pipeline([("columns", columns), ("model", LogisticRegression())]).fit(df, labels)
"""


def test_a_pipeline_with_a_string_column_serves_json_rows(shell: Any, run_cell: Any) -> None:
    frame, labels = _table(300)
    shell.user_ns.update(df=frame, labels=labels)
    run_cell(shell, TABLE_CELL)
    pipe = shell.user_ns["pipe"]
    r = run_cell(shell, "%register pipe --name sk-table --example df[:2] --sample df[:200]")
    assert r.format == "onnx"
    assert r.notes[0].startswith("one-hot encoded before the model")
    record = _conversion("sk-table", r.version)
    assert record["converter"] == "skl2onnx"
    api.deploy("sk-table")
    rows = frame[200:216]
    labelled = _post(
        "/v1/models/sk-table:predict?labels=true", {"instances": rows.to_dict("records")}
    )
    assert labelled.status_code == 200, labelled.text
    assert labelled.json()["labels"] == pipe.predict(rows).tolist()
    served = np.asarray(labelled.json()["predictions"])
    assert np.abs(served - pipe.predict_proba(rows)).max() <= record["tolerance"]
    split = {"dataframe_split": rows.to_dict("split")}
    invoked = _post("/v1/models/sk-table/invocations", split)
    assert invoked.json() == {"predictions": pipe.predict(rows).tolist()}
    unknown = _post("/v1/models/sk-table:predict", {"instances": [{**rows.iloc[0], "color": "x"}]})
    assert unknown.status_code == 400
    assert "not seen in training" in unknown.json()["error"]
    assert api.predict("sk-table", rows).tolist() == pipe.predict(rows).tolist()


# -- where float32 changes a tree's answer ------------------------------------------------------
def test_a_tree_that_float32_would_change_is_served_exactly(km_home: Path, data: Any) -> None:
    X, y = data
    forest = make_pipeline(StandardScaler(), RandomForestClassifier(20, random_state=0)).fit(X, y)
    float32_graph = to_onnx_graph(forest, X.astype(np.float64), np.float32, classifier=True)
    changed = run_graph(float32_graph, X.astype(np.float32)) - forest.predict_proba(X)
    assert np.abs(changed).max() > TOLERANCE  # the trap is real on these rows

    r = api.register(forest, X[:2], name="sk-forest", sample=X)
    assert r.format == "sklearn"
    assert any("not converted to ONNX" in n and "float32" in n for n in r.notes)
    record = _conversion("sk-forest", r.version)
    assert record["served_by"] == "sklearn"
    assert "float32" in record["reason"]
    api.deploy("sk-forest")
    rows = X[:64]  # float32 holds these exactly; the version takes them as float64
    expected = forest.predict_proba(rows.astype(np.float64))
    assert np.array_equal(api.predict("sk-forest", rows, raw=True), expected)
    assert (api.predict("sk-forest", rows) == forest.predict(rows)).all()


def test_a_regressor_answers_its_predictions(km_home: Path) -> None:
    X, y = load_diabetes(return_X_y=True)
    ridge = make_pipeline(StandardScaler(), Ridge()).fit(X, y)
    r = api.register(ridge, X[:2], name="sk-ridge", sample=X[:100])
    assert r.format == "onnx"
    assert "--sample" not in " ".join(r.notes)
    info = Store(load_settings()).resolve("sk-ridge", r.version)
    assert info.task == "regression"
    api.deploy("sk-ridge")
    served = api.predict("sk-ridge", X[200:232])
    tolerance = _conversion("sk-ridge", r.version)["tolerance"]
    # float32 on the wire and in the graph: the stated tolerance covers both
    assert served.shape == (32, 1)
    assert np.abs(served[:, 0] - ridge.predict(X[200:232].astype(np.float32))).max() <= tolerance


# -- %train and %register in a notebook ---------------------------------------------------------
def test_train_fits_an_estimator_and_registers_it(shell: Any, run_cell: Any, data: Any) -> None:
    X, _ = data
    run_cell(shell, "from sklearn.neural_network import MLPClassifier")
    run_cell(shell, "r = %train MLPClassifier((32,), max_iter=200) --data X y --name sk-trained")
    r = shell.user_ns["r"]
    assert r.format == "onnx"
    assert r.version == 1
    assert set(r.metrics) >= {"accuracy", "f1_macro"}
    assert r.metrics["accuracy"] > 0.8
    assert r.history == [{"epoch": 1, **r.metrics}]
    assert isinstance(r.net, MLPClassifier)
    assert r.predict(X[:5]).shape == (5, 10)
    with Store(load_settings()).tracking():
        run = mlflow.get_run(r.run_id)
    assert run.data.params["model_class"] == "MLPClassifier"
    assert run.data.metrics["accuracy"] == pytest.approx(r.metrics["accuracy"])
    assert run.data.params["hidden_layer_sizes"] == "[32]"
    assert run.data.params["seed"] == "0"
    assert "epochs" not in run.data.params  # its own fit has no epochs to count


def test_register_an_onnx_file_without_a_warning(
    shell: Any, run_cell: Any, tmp_path: Path, data: Any, capsys: Any
) -> None:
    X, _ = data
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    path = tmp_path / "model.onnx"
    torch.onnx.export(  # as the design documents export a model
        net,
        (torch.zeros(2, 64),),
        str(path),
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
    )
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run_cell(shell, f"%register {path} --name exported --example X[:2]")
    assert not [w for w in caught if issubclass(w.category, UnpicklingWarning)]
    assert "warning" not in capsys.readouterr().err
    assert r.format == "onnx"
    api.deploy("exported")
    with torch.no_grad():
        expected = net(torch.from_numpy(X[:20])).numpy()
    assert np.abs(api.predict("exported", X[:20]) - expected).max() < 1e-5

    # the same graph as an onnx.ModelProto, no example: its fixed input shape gives one
    v2 = api.register(onnx.load(str(path)), name="exported")
    assert v2.format == "onnx"
    assert v2.notes == ["example: 2 rows of zeros"]
    api.deploy("exported")
    assert np.abs(api.predict("exported", X[:20]) - expected).max() < 1e-5


def test_register_a_joblib_file_after_one_warning_line(
    shell: Any, run_cell: Any, tmp_path: Path, data: Any, mlp: Any, capsys: Any
) -> None:
    X, _ = data
    path = tmp_path / "model.joblib"
    joblib.dump(mlp, path)
    capsys.readouterr()
    r = run_cell(shell, f"%register {path} --name from-file --example X[:2]")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "unpickling" in line]
    assert lines == [
        "warning: unpickling model.joblib runs the code it holds: load only files you trust"
    ]
    assert r.format == "onnx"
    assert any("unpickled model.joblib" in n for n in r.notes)
    assert any("pass more rows to check on" in n for n in r.notes)  # 2 example rows only
    api.deploy("from-file")
    assert (api.predict("from-file", X[:30]) == mlp.predict(X[:30])).all()


# -- bad input: one line, nothing registered ----------------------------------------------------
def test_bad_models_fail_in_one_line_and_register_nothing(
    shell: Any, run_cell: Any, tmp_path: Path, data: Any, mlp: Any
) -> None:
    X, y = data
    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("not a model")
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(b"\x80\x04 this is no pickle")
    text = tmp_path / "numbers.joblib"
    joblib.dump([1, 2, 3], text)
    shell.user_ns["unfitted"] = MLPClassifier((8,))
    shell.user_ns["fitted"] = mlp
    shell.user_ns["words"] = pd.DataFrame({"color": ["red", "blue"], "age": [40.0, 50.0]})
    cases = {
        "%register unfitted --name bad --example X[:2]": "not fitted",
        "%register 42 --name bad --example X[:2]": "torch.nn.Module",
        f"%register {not_onnx} --name bad": "not an ONNX model",
        f"%register {broken} --name bad --example X[:2]": "could not be unpickled",
        f"%register {text} --name bad --example X[:2]": "not a scikit-learn model",
        f"%register {tmp_path / 'missing.onnx'} --name bad": "no model file",
        "%register fitted --name bad --example words": "the example has string columns",
    }
    for line, said in cases.items():
        with pytest.raises(UsageError) as err:
            run_cell(shell, line)
        message = str(err.value)
        assert said in message, (line, message)
        assert "\n" not in message, (line, message)
    assert _versions("bad") == 0
