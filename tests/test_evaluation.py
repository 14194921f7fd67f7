"""%evaluate, --cv and %compare in a real IPython shell against a real store: the metrics are
scikit-learn's (checked against sklearn called directly on the model's own outputs), they are
logged to the version (an evaluation run and km.eval.* tags), cross-validation trains fresh
models per fold, the comparison marks the better value, and mistakes are one-line UsageErrors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from IPython.core.error import UsageError
from sklearn import metrics as skm

from kernel_magics import api
from kernel_magics.config import load_settings
from kernel_magics.display import evaluation as display_eval
from kernel_magics.evaluation import CVResult, EvaluationResult, decide
from kernel_magics.evaluation.compare import Comparison
from kernel_magics.metric_names import direction
from kernel_magics.store import Store

TRAIN, TEST = slice(0, 1200), slice(1200, None)


def usage_error(ip: Any, magic: str, line: str) -> str:
    with pytest.raises(UsageError) as caught:
        ip.run_line_magic(magic, line)
    assert type(caught.value) is UsageError
    message = str(caught.value)
    assert message
    assert "\n" not in message
    return message


def _mlp(n_in: int, n_out: int, seed: int, hidden: int = 16) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out)
    )


@pytest.fixture(scope="module")
def versions(ns: Any) -> dict[int, Any]:
    """digits v1 (1 epoch, barely trained) and v2 (8 epochs): v2 is clearly better."""
    X, y = ns.user_ns["X"], ns.user_ns["y"]
    out = {}
    for epochs in (1, 8):
        r = api.train(_mlp(64, 10, 0), X[TRAIN], y[TRAIN], name="digits", epochs=epochs, lr=1e-2)
        out[r.version] = r
    assert sorted(out) == [1, 2]
    return out


def _outputs(model: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(torch.from_numpy(X)).numpy()


# -- classification ---------------------------------------------------------------------------
def test_classification_metrics_are_sklearns(ns: Any, versions: dict, run_cell: Any) -> None:
    e = run_cell(ns, "e = %evaluate digits@2 --data X[1200:] y[1200:]\ne")
    assert isinstance(e, EvaluationResult)
    assert (e.name, e.version, e.task) == (
        "digits",
        2,
        "classification",
    )
    X, y = ns.user_ns["X"][TEST], ns.user_ns["y"][TEST]
    scores = _outputs(versions[2].model, X)
    predicted = scores.argmax(axis=1)
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y, predicted, average="macro", zero_division=0
    )
    probs = torch.softmax(torch.from_numpy(scores).double(), dim=1).numpy()
    expected = {
        "accuracy": skm.accuracy_score(y, predicted),
        "precision_macro": precision,
        "recall_macro": recall,
        "f1_macro": f1,
        "roc_auc": skm.roc_auc_score(y, probs, multi_class="ovr"),
    }
    assert e.metrics == pytest.approx(expected, rel=1e-6)
    per_class = skm.precision_recall_fscore_support(y, predicted, zero_division=0)
    assert [e.per_class[str(c)]["f1"] for c in range(10)] == pytest.approx(list(per_class[2]))
    assert [e.per_class[str(c)]["support"] for c in range(10)] == list(per_class[3])
    assert e.confusion == skm.confusion_matrix(y, predicted).tolist()
    assert e.rows == len(y)
    assert e.forward_seconds > 0
    assert e.other_seconds > 0


def test_evaluation_is_logged_to_the_version(ns: Any, km_home: Path) -> None:
    e = ns.user_ns["e"]
    store = Store(load_settings())
    tags = store.resolve("digits", 2).tags
    for metric, value in e.metrics.items():
        assert float(tags[f"km.eval.{metric}"]) == pytest.approx(value, rel=1e-5)
    assert tags["km.eval.run"] == e.run_id
    assert tags["km.eval.rows"] == str(e.rows)
    run = store.client.get_run(e.run_id)
    assert run.info.status == "FINISHED"
    assert (run.data.tags["km.model"], run.data.tags["km.version"]) == ("digits", "2")
    assert run.data.metrics["accuracy"] == pytest.approx(e.metrics["accuracy"])
    assert "f1_class_3" in run.data.metrics
    document = json.loads(
        Path(store.client.download_artifacts(e.run_id, "evaluation.json")).read_text()
    )
    assert document["confusion"] == e.confusion


def test_views_are_registered(ns: Any) -> None:
    e = ns.user_ns["e"]
    bundle = ns.display_formatter.format(e)[0]
    assert bundle["text/plain"].startswith("digits v2 on 597 rows (classification)")
    assert "confusion matrix" in bundle["text/plain"]
    assert "<img alt='confusion matrix'" in bundle["text/html"]  # matplotlib is installed
    assert e._repr_html_() == bundle["text/html"]
    heat_map = display_eval.confusion_html([[3, 1], [0, 4]], ["a", "b"])
    assert heat_map.startswith("<img") or "<table" in heat_map


def test_string_labels_and_binary_roc_auc(ns: Any) -> None:
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = ((X - X.mean(axis=0)) / X.std(axis=0)).astype(np.float32)
    labels = np.where(y == 1, "benign", "malignant")
    r = api.train(_mlp(30, 2, 0), X[:400], labels[:400], name="cancer", epochs=3, lr=1e-2)
    e = api.evaluate("cancer", X[400:], labels[400:])
    assert e.labels == ["benign", "malignant"]
    assert set(e.per_class) == {"benign", "malignant"}
    probs = torch.softmax(torch.from_numpy(_outputs(r.model, X[400:])).double(), dim=1).numpy()
    truth = (labels[400:] == "malignant").astype(int)
    assert e.metrics["roc_auc"] == pytest.approx(skm.roc_auc_score(truth, probs[:, 1]), rel=1e-6)


# -- regression ---------------------------------------------------------------------------------
def test_regression_metrics_are_sklearns() -> None:
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X, y = X.astype(np.float32), ((y - y.mean()) / y.std()).astype(np.float32)
    r = api.train(_mlp(10, 1, 0), X[:300], y[:300], name="diabetes", epochs=3, lr=1e-2)
    e = api.evaluate("diabetes", X[300:], y[300:])
    predicted = _outputs(r.model, X[300:])[:, 0]
    assert e.task == "regression"
    assert e.metrics == pytest.approx(
        {
            "mse": skm.mean_squared_error(y[300:], predicted),
            "mae": skm.mean_absolute_error(y[300:], predicted),
            "r2": skm.r2_score(y[300:], predicted),
        },
        rel=1e-5,
    )
    assert e.residuals == pytest.approx(y[300:] - predicted, abs=1e-5)
    assert "<img alt='residual plot'" in display_eval.evaluation_html(e)
    assert "<svg" in display_eval._residuals_svg([0.0, 1.0], [0.5, -0.5])


# -- cross-validation ---------------------------------------------------------------------------
def test_cross_validation_of_the_recipe(ns: Any, versions: dict, run_cell: Any) -> None:
    cv = run_cell(ns, "cv = %evaluate digits@1 --data X[:600] y[:600] --cv 3 --model Net()\ncv")
    assert isinstance(cv, CVResult)
    assert (cv.folds, len(cv.per_fold)) == (3, 3)
    assert cv.recipe["epochs"] == 1
    assert cv.recipe["lr"] == 1e-2
    accuracies = [fold["accuracy"] for fold in cv.per_fold]
    assert cv.metrics["accuracy"] == pytest.approx((np.mean(accuracies), np.std(accuracies)))
    tags = Store(load_settings()).resolve("digits", 1).tags
    assert float(tags["km.cv.accuracy"]) == pytest.approx(cv.metrics["accuracy"][0], rel=1e-5)
    assert tags["km.cv.folds"] == "3"
    assert "3-fold cross-validation" in ns.display_formatter.format(cv)[0]["text/plain"]
    again = api.evaluate(
        "digits@1", ns.user_ns["X"][:600], ns.user_ns["y"][:600], cv=3, model=ns.user_ns["Net"]
    )
    assert again.per_fold == cv.per_fold  # seeded folds and initial weights: repeatable


# -- comparison ---------------------------------------------------------------------------------
def test_compare_marks_the_better_version(ns: Any, versions: dict, run_cell: Any) -> None:
    c = run_cell(ns, "%compare digits 1 2")
    assert isinstance(c, Comparison)
    assert c.versions == [1, 2]
    accuracy = c.row("accuracy", "metrics")
    assert accuracy.values == pytest.approx(
        [versions[1].metrics["accuracy"], versions[2].metrics["accuracy"]]
    )
    assert accuracy.best == [1]
    assert c.row("val_loss").best == [1]
    assert c.row("eval.accuracy").values[1] is not None  # %evaluate digits@2 above
    assert c.row("epochs", "params").values == ["1", "8"]
    assert c.row("epochs").best == []
    assert c.row("parameters").values == [64 * 16 + 16 + 16 * 10 + 10] * 2
    assert c.row("size_bytes").values[0] > 0
    assert all(v > 0 for v in c.row("latency_ms").values)
    text, html = display_eval.comparison_text(c), display_eval.comparison_html(c)
    line = next(
        row for row in text.splitlines() if row.startswith("metrics") and " accuracy" in row
    )
    assert line.rstrip().endswith("*")
    assert line.count("*") == 1
    assert "background:#dafbe1" in html


def test_lineage_rows(ns: Any, versions: dict) -> None:
    X = ns.user_ns["X"]
    api.register(versions[2].model, X[:5], name="digits", parent="digits@2", recipe="same weights")
    c = api.compare("digits", 2, 3)
    assert c.row("parent", "lineage").values == [None, "digits@2"]
    assert c.row("recipe", "lineage").values == [None, "same weights"]


def test_directions() -> None:
    assert [direction(n) for n in ("val_loss", "f1_macro", "mse", "r2", "epochs")] == [
        "lower",
        "higher",
        "lower",
        "higher",
        None,
    ]


# -- promotion ----------------------------------------------------------------------------------
def test_promotion_decisions() -> None:
    assert decide("accuracy", 2, 0.9).deploy  # nothing live
    assert decide("accuracy", 2, 0.95, 1, 0.90, margin=0.01).deploy
    kept = decide("accuracy", 2, 0.905, 1, 0.90, margin=0.01)
    assert not kept.deploy
    assert kept.reason.startswith("keeping v1")
    assert decide("mse", 2, 0.8, 1, 1.0, margin=0.1).deploy  # lower is better
    assert not decide("mse", 2, 1.2, 1, 1.0).deploy
    assert not decide("accuracy", 2, 0.9, 2, 0.9).deploy  # already live


# -- mistakes -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("magic", "line", "expected"),
    [
        ("evaluate", "digits", "--data"),
        ("evaluate", "digits --data X", "--data"),
        ("evaluate", "nope --data X y", "no registered model"),
        ("evaluate", "digits@9 --data X y", "no version 9"),
        ("evaluate", "digits --data X y[:5]", "rows"),
        ("evaluate", "digits --data X[:, :10] y", "shape"),
        ("evaluate", "digits --data X undefined_y", "undefined_y"),
        ("evaluate", "digits --data X (y + 20)", "labels"),
        ("evaluate", "digits --data X y --cv 3", "--model"),
        ("evaluate", "digits --data X y --cv 1 --model Net()", "2 folds"),
        ("evaluate", "digits --data X y --cv 3 --model Nett()", "Nett"),
        ("evaluate", "digits --data X y --model Net()", "--cv"),
        ("compare", "digits 1", "two versions"),
        ("compare", "digits 1 1", "repeat"),
        ("compare", "digits 1 9", "no version 9"),
        ("pipeline", "", "required"),
        ("pipeline", "missing.ipynb", "no such notebook"),
        ("pipeline", "rerun", "RUN_ID"),
        ("pipeline", "rerun 0123456789abcdef", "no run"),
        ("pipeline", "a.ipynb b.ipynb", "one notebook"),
    ],
)
def test_mistakes_are_one_line_usage_errors(
    ns: Any, versions: dict, magic: str, line: str, expected: str
) -> None:
    assert expected in usage_error(ns, magic, line)
