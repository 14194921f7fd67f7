"""%explain and api.explain in a real IPython shell against a real store: Integrated Gradients
on versions trained and registered here find the feature the data depends on, add up to the
change of the output from the baseline (completeness), follow --target by label and by index,
render as tables with a bar plot or heat maps, and refuse mistakes in one line without
touching the store."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from IPython.core.error import UsageError

from kernel_magics import api
from kernel_magics.config import load_settings
from kernel_magics.errors import InvalidInput
from kernel_magics.evaluation.loading import load_version
from kernel_magics.explain import Explanation
from kernel_magics.store import Store

COLUMNS = ["signal", "noise_a", "noise_b", "noise_c"]


def _mlp(n_in: int, n_out: int, hidden: int = 16) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out)
    )


@pytest.fixture(scope="module")
def shell(ip: Any) -> Any:
    """Tabular data where only column "signal" decides the class ("high" / "low") and only
    column 1 (then 2) moves the two regression outputs; a classifier and a regressor trained
    on them, and an image-shaped classifier whose class is one pixel's sign."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 4)).astype(np.float32)
    frame = pd.DataFrame(X, columns=COLUMNS)
    labels = np.where(X[:, 0] > 0, "high", "low")
    api.train(_mlp(4, 2), frame, labels, name="toy", epochs=15, lr=2e-2)
    targets = np.stack([3 * X[:, 1], -2 * X[:, 2]], axis=1).astype(np.float32)
    api.train(_mlp(4, 2), X, targets, name="reg", epochs=15, lr=2e-2, task="regression")
    images = rng.normal(size=(300, 1, 8, 8)).astype(np.float32)
    torch.manual_seed(0)
    conv = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(256, 2),
    )
    api.train(conv, images, (images[:, 0, 2, 5] > 0).astype(np.int64), name="img", epochs=8)
    ip.user_ns.update(X=X, frame=frame, labels=labels, images=images)
    return ip


def _outputs(ref: str, rows: np.ndarray) -> np.ndarray:
    """The version's outputs, computed here with the loaded graph (not through explain)."""
    loaded = load_version(Store(load_settings()), ref)
    with torch.no_grad():
        return loaded.call(torch.from_numpy(np.ascontiguousarray(rows))).numpy()


def usage_error(ip: Any, line: str) -> str:
    with pytest.raises(UsageError) as caught:
        ip.run_line_magic("explain", line)
    assert type(caught.value) is UsageError
    message = str(caught.value)
    assert message
    assert "\n" not in message
    return message


def test_a_bare_name_explains_the_live_version(shell: Any) -> None:
    """What %predict answers with is what %explain explains: the live version, else the
    newest; the header says which and why."""
    X = shell.user_ns["X"]
    for seed in (1, 2):
        torch.manual_seed(seed)
        api.train(_mlp(4, 2), X, (X[:, 0] > 0).astype(np.int64), name="pair", epochs=1)
    store = Store(load_settings())
    store.set_live("pair", 1)
    try:
        live = shell.run_line_magic("explain", "pair X[:3]")
        assert (live.version, live.why) == (1, "the live version; v2 is newer")
        text = shell.display_formatter.format(live)[0]["text/plain"]
        assert text.startswith("pair v1 (the live version; v2 is newer): Integrated Gradients")
        asked = api.explain("pair@2", X[:3])
        assert (asked.version, asked.why) == (2, "")
    finally:
        store.set_live("pair", None)
    newest = api.explain("pair", X[:3])
    assert (newest.version, newest.why) == (2, "the newest version; none is live")


# -- a tabular classifier -----------------------------------------------------------------------
def test_the_deciding_feature_ranks_first(shell: Any, run_cell: Any) -> None:
    e = run_cell(shell, "e = %explain toy frame[:20]\ne")
    assert isinstance(e, Explanation)
    assert (e.ref, e.task) == ("toy@1", "classification")
    assert e.feature_names == COLUMNS  # from the DataFrame
    assert e.attributions.shape == (20, 4)
    assert e.outputs.shape == (20, 2)
    assert e.ranking()[0][0] == "signal"
    importance = e.importance()
    assert importance[0] > 2 * importance[1:].max()
    # default target: each row's predicted class, named by the version's km.classes
    assert e.targets == e.outputs.argmax(axis=1).tolist()
    assert e.target_labels == e.predicted
    assert set(e.target_labels) == {"high", "low"}
    assert e.target_labels == np.where(shell.user_ns["X"][:20, 0] > 0, "high", "low").tolist()


def test_attributions_add_up_to_the_output_change(shell: Any) -> None:
    """Completeness: sum of attributions = F(x)[t] - F(baseline)[t], up to Captum's delta."""
    rows = shell.user_ns["X"][:20]
    for baseline in ("zeros", "mean"):
        e = api.explain("toy", rows, baseline=baseline, steps=100)
        start = np.zeros(4, np.float32) if baseline == "zeros" else rows.mean(axis=0)
        at_x = _outputs("toy@1", rows)[np.arange(20), e.targets]
        at_baseline = _outputs("toy@1", start[None].repeat(20, axis=0))[np.arange(20), e.targets]
        change = at_x - at_baseline
        sums = e.attributions.sum(axis=1)
        assert sums == pytest.approx(change, abs=0.02 * max(1.0, float(np.abs(change).max())))
        assert e.delta == pytest.approx(sums - change, abs=1e-4)
        assert e.outputs[np.arange(20), e.targets] == pytest.approx(at_x, abs=1e-5)
    # without DataFrame columns, a version registered from arrays has f0..fN
    assert api.explain("reg", rows[:2], target=0).feature_names == ["f0", "f1", "f2", "f3"]


def test_a_given_baseline_row(shell: Any) -> None:
    rows = shell.user_ns["X"][:5]
    given = api.explain("toy", rows, baseline=rows.mean(axis=0))
    mean = api.explain("toy", rows, baseline="mean")
    assert (given.baseline, mean.baseline) == ("given", "mean")
    np.testing.assert_allclose(given.attributions, mean.attributions, rtol=1e-4, atol=1e-6)
    with pytest.raises(InvalidInput, match=r"the baseline has shape \(3,\), but toy@1 takes"):
        api.explain("toy", rows, baseline=[0.0, 0.0, 0.0])


def test_target_by_label_and_by_index(shell: Any, run_cell: Any) -> None:
    by_label = run_cell(shell, "%explain toy frame[:6] --target low")
    by_index = run_cell(shell, "%explain toy@1 frame[:6] --target 1")
    classes = Store(load_settings()).resolve("toy", 1).classes
    assert classes == ["high", "low"]
    assert by_label.targets == by_index.targets == [1] * 6
    assert by_label.target_labels == by_index.target_labels == ["low"] * 6
    np.testing.assert_allclose(by_label.attributions, by_index.attributions, rtol=1e-5)
    high = api.explain("toy", shell.user_ns["frame"][:6], target="high")
    # the two logits pull in opposite directions on the deciding feature
    assert (
        np.sign(high.attributions[:, 0]).tolist() != np.sign(by_label.attributions[:, 0]).tolist()
    )
    assert high.target_labels == ["high"] * 6
    assert high.targets == [0] * 6


# -- a regressor with two outputs -------------------------------------------------------------
def test_regression_output_by_index(shell: Any, run_cell: Any) -> None:
    first = run_cell(shell, "%explain reg X[:30] --target 0 --rows 10")
    second = api.explain("reg", shell.user_ns["X"][:10], target="1")
    assert (first.task, first.rows, first.predicted) == ("regression", 10, None)
    assert first.target_labels == ["output 0"] * 10
    assert second.targets == [1] * 10
    assert first.ranking()[0][0] == "f1"
    assert second.ranking()[0][0] == "f2"


# -- an image-shaped model ----------------------------------------------------------------------
def test_image_rows_get_heat_maps(shell: Any, run_cell: Any) -> None:
    e = run_cell(shell, "%explain img images[:3]")
    assert e.attributions.shape == (3, 1, 8, 8)
    assert e.feature_names == []
    assert not e.tabular
    # the pixel that decides the class carries the largest mean |attribution|
    assert np.unravel_index(e.importance().argmax(), (1, 8, 8)) == (0, 2, 5)
    bundle = shell.display_formatter.format(e)[0]
    assert "<img alt='attribution heat maps'" in bundle["text/html"]
    assert "largest mean |attr| at [0,2,5]" in bundle["text/plain"]


# -- views ----------------------------------------------------------------------------------------
def test_views_are_registered(shell: Any) -> None:
    e = shell.user_ns["e"]
    bundle = shell.display_formatter.format(e)[0]
    text = bundle["text/plain"]
    assert text.startswith(
        "toy v1 (the newest version; none is live): Integrated Gradients on 20 rows "
        "(classification;"
    )
    assert "sum of attributions" in text
    assert "signal" in text
    html = bundle["text/html"]
    assert "<img alt='feature attributions'" in html
    assert "noise_a" in html
    assert e._repr_html_() == html
    assert "--target CLASS" in shell.find_line_magic("explain").__doc__


# -- mistakes -------------------------------------------------------------------------------------
def _store_state() -> tuple[list[Any], int]:
    store = Store(load_settings())
    versions = sorted(
        (v.name, v.version, sorted(v.tags.items())) for v in store.client.search_model_versions()
    )
    experiments = [x.experiment_id for x in store.client.search_experiments()]
    return versions, len(store.client.search_runs(experiments))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("nope X[:2]", "nope"),
        ("toy@9 frame[:2]", "9"),
        ("toy images[:2]", "X has rows of shape (1, 8, 8), but toy@1 takes rows of shape (4,)"),
        ("toy frame[:2] --target medium", "toy@1 has no class 'medium'"),
        ("toy frame[:2] --target 5", "output index 5 is out of range: toy@1 has 2 outputs"),
        ("toy frame", "X has 600 rows; at most 200 are explained at once"),
        ("reg X[:2]", "reg@1 has 2 outputs: choose the one to explain with target=K"),
        ("toy frame[:2] --baseline median", "invalid choice: 'median'"),
        ("toy frame[:2] --steps 1", "steps must be an integer in 2..1000"),
        ("toy undefined_name", "cannot evaluate the input `undefined_name`"),
        ("toy frame[:0]", "X has no rows to explain"),
    ],
)
def test_mistakes_are_one_line_usage_errors(shell: Any, line: str, expected: str) -> None:
    before = _store_state()
    assert expected in usage_error(shell, line)
    assert _store_state() == before


def test_integer_inputs_are_refused(shell: Any) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Embedding(10, 4), torch.nn.Flatten(), torch.nn.Linear(12, 2)
    )
    tokens = np.random.default_rng(0).integers(0, 10, size=(40, 3))
    api.train(model, tokens, (tokens[:, 0] > 4).astype(np.int64), name="tokens", epochs=1)
    shell.user_ns["tokens"] = tokens
    message = usage_error(shell, "tokens tokens[:2]")
    assert "takes int64 inputs (token ids, masks), which have no gradient" in message


def test_onnx_versions_get_feature_ablation(shell: Any) -> None:
    """No gradients through onnxruntime: each feature set to the baseline's, one at a time,
    and the change of the target output is its attribution; the header says so."""
    ns = shell.user_ns
    r = api.optimize("toy", export="onnx", X=ns["X"], y=ns["labels"], progress="none")
    e = api.explain(f"toy@{r.version}", ns["frame"][:3])
    assert e.method == "Feature Ablation"
    assert "Feature Ablation on 3 rows" in shell.display_formatter.format(e)[0]["text/plain"]
    rows = ns["X"][:3]
    full = _outputs(f"toy@{r.version}", rows)
    for j in range(rows.shape[1]):
        ablated = rows.copy()
        ablated[:, j] = 0.0  # the zeros baseline
        change = full - _outputs(f"toy@{r.version}", ablated)
        expected = change[np.arange(3), e.targets]
        np.testing.assert_allclose(e.attributions[:, j], expected, rtol=1e-5, atol=1e-6)
    assert e.ranking()[0][0] == "signal"
