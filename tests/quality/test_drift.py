"""%drift and api.drift against a real store: the reference profile captured by %train (the
training split) and %register --reference is in the version's folder and hash; current data
with two shifted columns is flagged on exactly those, unshifted data on none, a string column
through chi², image rows through their per-row statistics; a version without a profile, or
with a changed one, is refused in one line."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from IPython.core.error import UsageError

from kernel_magics import api
from kernel_magics.config import load_settings
from kernel_magics.errors import IntegrityError
from kernel_magics.formats.verified import verified_folder
from kernel_magics.quality.drift import DriftReport
from kernel_magics.quality.profile import FOLDER_PATH, read_profile
from kernel_magics.store import Store

COLUMNS = ["a", "b", "c", "d"]


def _table(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, 4)).astype(np.float32), columns=COLUMNS)
    frame["color"] = rng.choice(["red", "green", "blue"], rows, p=[0.5, 0.3, 0.2])
    return frame


def _mlp(n_in: int, n_out: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(n_in, 16), torch.nn.ReLU(), torch.nn.Linear(16, n_out)
    )


@pytest.fixture(scope="module")
def shell(ip: Any) -> Any:
    """A classifier trained on a table with a string column (the class is a's sign), an image
    classifier, and a model registered without a reference."""
    frame = _table(800, 0)
    labels = np.where(frame["a"] > 0, "pos", "neg")
    api.train(_mlp(7, 2), frame, labels, name="table", epochs=10, lr=2e-2, encode="onehot")
    rng = np.random.default_rng(0)
    images = rng.random((400, 1, 8, 8)).astype(np.float32)
    conv = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))
    api.train(conv, images, (images[:, 0, 2, 5] > 0.5).astype(np.int64), name="img", epochs=2)
    api.register(_mlp(4, 2), np.zeros((2, 4), np.float32), name="bare", task="classification")
    ip.user_ns.update(frame=frame, images=images, rng=rng)
    return ip


def _store() -> Store:
    return Store(load_settings())


def test_the_profile_is_the_training_split_inside_the_versions_hash(shell: Any) -> None:
    store = _store()
    info = store.resolve("table", 1)
    profile = read_profile(verified_folder(store, info))
    assert profile is not None
    assert profile.layout == "table"
    assert profile.rows == 640  # the training split of 800 rows (val_split 0.2)
    assert [f.name for f in profile.features] == [*COLUMNS, "color"]
    assert profile.features[-1].categories.keys() == {"red", "green", "blue"}
    assert profile.predictions[0].categories.keys() <= {"pos", "neg"}


def test_two_shifted_columns_are_flagged_and_only_they(shell: Any) -> None:
    current = _table(600, 1)
    current["b"] += 1.0
    current["d"] *= 3
    shell.user_ns["shifted"] = current
    report = shell.run_line_magic("drift", "table --data shifted")
    assert isinstance(report, DriftReport)
    assert (report.name, report.version, report.rows) == ("table", 1, 600)
    assert report.flagged == ["b", "d"]  # a, on which the answers depend, did not move
    shell.user_ns["same"] = _table(600, 2)
    assert shell.run_line_magic("drift", "table@1 --data same").flagged == []


def test_a_moved_decision_column_moves_the_predictions_too(shell: Any) -> None:
    current = _table(600, 3)
    current["a"] += 1.5  # most rows now answer "pos"
    report = api.drift("table", data=current)
    assert report.flagged == ["a", "prediction"]
    assert report.features[-1].test == "chi2"


def test_a_string_column_is_compared_with_chi2(shell: Any) -> None:
    current = _table(600, 4)
    current["color"] = np.random.default_rng(5).choice(["red", "green", "blue"], 600)
    report = api.drift("table", data=current)
    assert report.flagged == ["color"]
    assert report.features[4].test == "chi2"


def test_image_rows_drift_by_their_row_statistics(shell: Any) -> None:
    rng = np.random.default_rng(9)
    same = rng.random((300, 1, 8, 8)).astype(np.float32)
    report = api.drift("img", data=same)
    assert [f.feature for f in report.features[:4]] == ["row_mean", "row_std", "row_min", "row_max"]
    assert report.flagged == []
    darker = (0.5 * rng.random((300, 1, 8, 8))).astype(np.float32)  # mean, spread, max move
    assert {"row_mean", "row_std", "row_max"} <= set(api.drift("img", data=darker).flagged)


def test_register_reference_and_the_views(shell: Any, run_cell: Any) -> None:
    run_cell(shell, "import torch; net = torch.nn.Sequential(torch.nn.Linear(4, 3))")
    shell.user_ns["X"] = np.random.default_rng(0).normal(size=(500, 4)).astype(np.float32)
    shell.run_line_magic(
        "register", "net --name own --example X[:2] --task classification --reference X"
    )
    shell.user_ns["X2"] = shell.user_ns["X"] + np.array([0, 0, 2, 0], np.float32)
    report = shell.run_line_magic("drift", "own --data X2")
    assert "x2" in report.flagged
    text = shell.display_formatter.format(report)[0]["text/plain"]
    assert "feature" in text.splitlines()[1]
    assert "DRIFT" in text
    assert "flagged when p < 0.01 and PSI ≥ 0.1" in text
    page = report._repr_html_()
    assert page.count("<svg") == len(report.flagged)
    shell.run_line_magic(  # %train --reference: the profile of other rows than the split
        "train",
        "torch.nn.Linear(4,1) --data X X[:,0] --task regression --epochs 1 --name own-t "
        "--reference X2",
    )
    assert "x2" not in api.drift("own-t", data=shell.user_ns["X2"]).flagged
    pruned = api.optimize("own", prune=0.5)  # a derived version keeps its parent's reference
    derived = api.drift("own", data=shell.user_ns["X2"], version=pruned.version)
    assert derived.version == 2
    assert [f.feature for f in derived.features if f.flagged and not f.prediction] == ["x2"]


def test_a_version_without_a_profile_is_one_line(shell: Any) -> None:
    shell.user_ns["X4"] = np.zeros((3, 4), np.float32)
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("drift", "bare --data X4")
    message = str(caught.value)
    assert "\n" not in message
    assert "bare v1 has no reference profile" in message
    assert "--reference" in message


def test_a_changed_profile_fails_the_hash_check(shell: Any) -> None:
    store = _store()
    api.register(
        _mlp(4, 2),
        np.zeros((2, 4), np.float32),
        name="tampered",
        task="classification",
        reference=np.random.default_rng(0).normal(size=(100, 4)).astype(np.float32),
    )
    path = verified_folder(store, store.resolve("tampered", 1)) / FOLDER_PATH
    path.write_text(path.read_text().replace('"rows":100', '"rows":101', 1))
    with pytest.raises(IntegrityError, match="changed since registration"):
        api.drift("tampered", data=np.zeros((5, 4), np.float32))


def test_a_scikit_learn_version_keeps_its_profile_with_its_predictions(shell: Any) -> None:
    from sklearn.linear_model import LogisticRegression

    X = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
    api.train(LogisticRegression(), X, (X[:, 0] > 0).astype(np.int64), name="sk")
    store = _store()
    profile = read_profile(verified_folder(store, store.resolve("sk", 1)))
    assert profile is not None
    assert profile.predictions[0].categories.keys() == {"0", "1"}
    moved = X + np.array([2, 0, 0], np.float32)  # the decision column: answers move too
    assert api.drift("sk", data=moved).flagged == ["x0", "prediction"]
