"""Reference profiles and drift statistics on their own (numpy/scipy, no store): shifted features
are flagged and only those, categories through chi², tensor rows through per-row statistics,
rows in the inference log's shapes (records, lists of numbers), and the profile's JSON."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kernel_magics.errors import InvalidInput
from kernel_magics.quality.drift import drift_report, population_stability
from kernel_magics.quality.profile import SAMPLE_SIZE, ReferenceProfile


def _normal(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 5)).astype(np.float32)


def test_two_shifted_features_are_flagged_and_only_they() -> None:
    profile = ReferenceProfile.capture(_normal(3000, 0))
    current = _normal(2000, 1)
    current[:, 1] += 0.8  # a moved mean
    current[:, 4] *= 2.5  # a wider spread, same mean
    report = drift_report(profile, current)
    assert report.flagged == ["x1", "x4"]
    assert {f.test for f in report.features} == {"ks"}
    assert all(f.p_value < 1e-6 and f.psi > 0.2 for f in report.features if f.flagged)


@pytest.mark.parametrize("rows", [60, 2000, 100_000])
def test_the_same_distribution_flags_nothing_at_any_size(rows: int) -> None:
    profile = ReferenceProfile.capture(_normal(3000, 0))
    assert drift_report(profile, _normal(rows, 7)).flagged == []


def test_categories_use_chi2_and_a_new_category_counts_as_drift() -> None:
    rng = np.random.default_rng(0)
    reference = pd.DataFrame(
        {"age": rng.normal(40, 10, 2000), "color": rng.choice(["red", "blue"], 2000)}
    )
    profile = ReferenceProfile.capture(reference)
    assert [f.kind for f in profile.features] == ["numeric", "categorical"]
    same = [
        {"age": float(a), "color": str(c)}
        for a, c in zip(rng.normal(40, 10, 500), rng.choice(["red", "blue"], 500), strict=True)
    ]
    assert drift_report(profile, same).flagged == []
    moved = [
        {"age": float(a), "color": str(c)}
        for a, c in zip(
            rng.normal(40, 10, 500),
            rng.choice(["red", "blue", "green"], 500, p=[0.2, 0.3, 0.5]),
            strict=True,
        )
    ]
    report = drift_report(profile, moved)
    assert report.flagged == ["color"]
    color = report.features[1]
    assert color.test == "chi2"
    assert color.bins[-1] == "green"  # the new category, after the reference ones
    assert color.reference_shares[-1] == 0.0
    assert color.current_shares[-1] > 0.4


def test_tensor_rows_drift_by_their_row_statistics() -> None:
    rng = np.random.default_rng(0)
    images = rng.random((800, 1, 8, 8)).astype(np.float32)
    profile = ReferenceProfile.capture(images)
    assert profile.layout == "tensor"
    assert [f.name for f in profile.features] == ["row_mean", "row_std", "row_min", "row_max"]
    same = rng.random((400, 1, 8, 8)).tolist()  # as the log keeps a tensor row: nested lists
    assert drift_report(profile, same).flagged == []
    brighter = (0.3 + rng.random((400, 1, 8, 8))).tolist()  # the same spread, shifted up
    assert drift_report(profile, brighter).flagged == ["row_mean", "row_min", "row_max"]
    long_rows = ReferenceProfile.capture(rng.random((50, 65)))  # over 64 values a row
    assert long_rows.layout == "tensor"


def test_predictions_are_compared_as_class_shares_or_values() -> None:
    rng = np.random.default_rng(0)
    X = _normal(1000, 0)
    scores = rng.random((1000, 3))
    profile = ReferenceProfile.capture(X, scores, task="classification", classes=["a", "b", "c"])
    assert profile.predictions[0].categories.keys() == {"a", "b", "c"}
    skewed = scores.copy()
    skewed[:600, 2] += 1  # class "c" answered far more often
    report = drift_report(profile, _normal(1000, 1), skewed)
    assert report.flagged == ["prediction"]
    assert report.features[-1].prediction
    labels = np.asarray(["a", "b", "c"])[scores.argmax(axis=1)].tolist()  # answered labels
    assert drift_report(profile, _normal(1000, 1), labels).flagged == []
    per_position = ReferenceProfile.capture(X, rng.random((1000, 7, 3)), task="classification")
    assert sum(per_position.predictions[0].categories.values()) == 7000  # a label a position
    values = ReferenceProfile.capture(X, X[:, :1] * 2, task="regression")
    assert drift_report(values, X, X[:, :1] * 2 + 3).flagged == ["prediction"]


def test_the_profile_round_trips_through_json_and_stays_small() -> None:
    X = _normal(50_000, 0)
    X[::10, 2] = np.nan
    profile = ReferenceProfile.capture(X)
    again = ReferenceProfile.from_json(profile.to_json())
    assert again == profile
    feature = again.features[2]
    assert feature.stats["missing"] == pytest.approx(0.1)
    assert feature.counts[-1] == 5000
    assert len(feature.sample) == SAMPLE_SIZE
    assert len(profile.to_json()) < 100_000
    missing_more = _normal(1000, 1)
    missing_more[::2, 2] = np.nan  # half missing: only the missing bin moved
    assert drift_report(profile, missing_more).flagged == ["x2"]


def test_psi_and_bad_rows() -> None:
    assert population_stability(np.array([50, 50]), np.array([50, 50])) == 0.0
    assert population_stability(np.array([90, 10]), np.array([10, 90])) > 1
    profile = ReferenceProfile.capture(_normal(100, 0))
    with pytest.raises(InvalidInput, match="rows have 3 values; the reference rows had 5"):
        drift_report(profile, np.zeros((4, 3)))
    with pytest.raises(InvalidInput, match="no current rows"):
        drift_report(profile, np.zeros((0, 5)))
    table = ReferenceProfile.capture(pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]}))
    with pytest.raises(InvalidInput, match="miss the reference column\\(s\\) b$"):
        drift_report(table, [{"a": 1.0}])
    with pytest.raises(InvalidInput, match="records with the columns a, b or lists of 2 values"):
        drift_report(table, [[1.0]])
    # a tuple of rows is rows here (a request's rows must be a JSON list)
    assert drift_report(table, ([1.0, "x"], [2.0, "y"])).flagged == []
