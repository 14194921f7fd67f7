"""One rule for metric names: which metrics headline a version and which way each improves,
read the same by the progress line, ``%models``, the registry browser, ``%compare`` and
``%optimize``'s chart (each kept a copy of its own before, and the copies disagreed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kernel_magics import display
from kernel_magics.display import dashboards as views
from kernel_magics.display import optimize as display_optimize
from kernel_magics.display.svg import COLORS
from kernel_magics.evaluation.promotion import decide
from kernel_magics.metric_names import KEY_METRICS, direction, is_better, key_metrics


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("val_loss", "lower"),
        ("mse", "lower"),
        ("mean_absolute_error", "lower"),
        ("f1_macro", "higher"),
        ("roc_auc", "higher"),
        ("eval.accuracy", "higher"),
        ("km.eval.r2", "higher"),
        ("cv.accuracy_std", "lower"),  # a spread across folds: smaller is steadier
        ("epochs", None),
    ],
)
def test_direction(name: str, expected: str | None) -> None:
    assert direction(name) == expected


def test_key_metrics_per_task_best_first() -> None:
    metrics = {"r2": 0.8, "mae": 1.5, "mse": 2.5, "accuracy": 0.9, "val_loss": 0.3}
    assert list(key_metrics(metrics, "regression")) == ["mse", "mae", "r2"]
    assert list(key_metrics(metrics, "classification")) == ["accuracy"]
    assert list(key_metrics(metrics)) == ["accuracy", "mse", "mae", "r2"]
    assert key_metrics({"val_loss": 0.3, "lr": 0.1}, "classification") == {"val_loss": 0.3}
    assert key_metrics({"lr": 0.1}) == {}
    # a language model trained on text: perplexity first, whether the task is said or not
    lm = {"perplexity": 120.0, "accuracy": 0.1, "val_loss": 4.8}
    assert list(key_metrics(lm, "text-generation")) == ["perplexity", "accuracy"]
    assert list(key_metrics(lm)) == ["perplexity", "accuracy"]
    assert direction("perplexity") == "lower"


def test_the_models_table_and_the_progress_line_show_the_same_regression_metrics() -> None:
    from kernel_magics.training.fit import EpochResult
    from kernel_magics.training.progress import epoch_line

    metrics = {"mse": 2.5, "mae": 1.25, "r2": 0.8}
    row = SimpleNamespace(version=1, created=None, metrics=metrics, task="regression")
    table = display.messages._metrics_text(metrics, "regression")
    line = epoch_line(EpochResult(1, 1, 1.0, 1.0, metrics, 0.1))
    for name in KEY_METRICS["regression"]:
        assert f"{name}=" in table
        assert f"{name}=" in views.version_label(row, None)
        assert f" {name} " in line


def test_registry_comparison_bolds_the_smaller_spread() -> None:
    rows = [
        SimpleNamespace(version=1, metrics={"accuracy_std": 0.05}),
        SimpleNamespace(version=2, metrics={"accuracy_std": 0.01}),
    ]
    html_text = views.comparison_html("digits", rows, [{}, {}])
    assert "<b>0.01</b>" in html_text
    assert "<b>0.05</b>" not in html_text


def test_optimize_chart_colours_a_lower_score_as_worse() -> None:
    chart = display_optimize.bar_chart([("r2", 0.9), ("mse", 0.9), ("size_bytes", 0.5)])
    bars = [part.split('fill="')[1].split('"')[0] for part in chart.split("<rect")[1:]]
    assert bars == [COLORS[3], COLORS[2], COLORS[2]]  # r2 fell: worse; mse and size fell: better
    assert is_better("accuracy", 1.01, 1.0)
    assert not is_better("p50_us_b1", 1.2, 1.0)


def test_promotion_reads_the_same_direction() -> None:
    assert decide("cv.accuracy_std", 2, 0.01, 1, 0.05).deploy
    assert not decide("r2", 2, 0.7, 1, 0.8).deploy
