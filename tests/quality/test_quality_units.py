"""The inference log's pieces in process: the sampler's spread, the ``since`` windows, the
writer's bounded queue and eviction against a real SQLite file, and live metrics against
scikit-learn's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from kernel_magics.errors import InvalidInput
from kernel_magics.quality.drift_log import logged_rows
from kernel_magics.quality.live import classification, regression
from kernel_magics.quality.log_reader import read_json_columns, read_log, since_epoch
from kernel_magics.quality.log_writer import InferenceLog, RowShape, Sample, Sampler


@pytest.mark.parametrize(("rate", "n", "kept"), [(1.0, 50, 50), (0.1, 1000, 100), (0.0, 50, 0)])
def test_the_sampler_keeps_an_even_share_first_request_included(rate, n, kept):
    sampler = Sampler(rate)
    taken = [i for i in range(n) if sampler.take()]
    assert len(taken) == kept
    if rate:
        assert taken[0] == 0
        assert set(np.diff(taken)) <= {round(1 / rate)}


def test_since_windows():
    now = 1_000_000.0
    assert since_epoch("90s", now) == now - 90
    assert since_epoch("2d", now) == now - 2 * 86400
    assert since_epoch(30, now) == now - 30
    assert since_epoch(pd.Timestamp(now, unit="s"), now) == now  # naive: UTC
    for bad in ("yesterday", -1, True, "1w"):
        with pytest.raises(InvalidInput):
            since_epoch(bad, now)


def test_the_writer_drops_beyond_its_queue_and_evicts_the_oldest(tmp_path):
    log = InferenceLog(tmp_path, max_rows=5, queue_size=8, interval_s=60)
    shape = RowShape(None, ["a", "b"], classifier=True)
    for i in range(12):  # the thread sleeps 60 s: the queue fills and the rest is dropped
        log.add(Sample("m", 1, f"r{i}", np.eye(1, 3) * i, np.array([[0.2, 0.8]]), 1.0, shape))
    assert log.dropped_count == 4
    assert log.flush(10)
    assert log.written_count == 8
    frame = read_log(tmp_path, "m")
    assert frame.request_id.tolist() == ["r3", "r4", "r5", "r6", "r7"]  # the newest 5 of 8
    assert frame.output.iloc[0] == [0.2, 0.8]
    several = RowShape(None, None, classifier=False)  # two output values: no predicted value
    log.add(Sample("m2", 1, "s", np.eye(2, 3), np.array([[1.0, 2.0], [3.0, 4.0]]), 1.0, several))
    assert log.flush(10)
    # drift's reader without pandas: read_log's rows, newest first, the columns aligned
    newest = read_json_columns(tmp_path, "m", ("input", "predicted"), limit=2)
    assert newest == {"input": frame.input.tolist()[:-3:-1], "predicted": ["b", "b"]}
    assert read_json_columns(tmp_path, "m2", ("predicted",)) == {"predicted": [None, None]}
    assert logged_rows(tmp_path, "m2", 1) == ([[0, 1, 0], [1, 0, 0]], [[3, 4], [1, 2]])
    assert read_json_columns(tmp_path, "none", ("input",)) == {"input": []}
    log.close()


def test_live_figures_match_scikit_learn():
    truth = ["a", "b", "b", "c", "a", "c", "c"]
    pred = ["a", "b", "c", "c", "b", "c", "a"]
    figures = classification(pred, truth)
    assert figures["accuracy"] == pytest.approx(4 / 7)
    assert figures["f1_macro"] == pytest.approx(f1_score(truth, pred, average="macro"))
    assert regression([1.0, 2.0], [2.0, 4.0]) == {"mse": 2.5, "mae": 1.5}


def test_quality_lines_name_the_flags_per_served_version_with_the_live_figures():
    """%monitor's and the panel's line: a live and a canary version with drift checks, an old
    version with feedback only; more than six flags are counted, not named."""
    from kernel_magics.display.quality import quality_lines
    from kernel_magics.records import DriftSummary, ModelState, ServerStatus

    many = tuple("abcdefgh")
    status = ServerStatus(
        url=None,
        pid=None,
        status="ready",
        models={"shop": ModelState.from_wire({"name": "shop", "version": 2})},
        drift=(
            DriftSummary("shop", 2, 1.0, 800, (), {"a": 0.031}),
            DriftSummary("shop", 3, 1.0, 12_000, many, dict.fromkeys(many, 0.5)),
        ),
    )
    live = {"shop": {1: {"labelled": 40, "mse": 0.25, "mae": 0.5}, 2: {"labelled": 3}}}
    assert quality_lines(status, live) == {
        "shop": [
            "v1 live MSE 0.25, MAE 0.5 (40 labelled)",
            "v2 drift: none flagged (max PSI 0.03) over 800 rows"
            " · live no comparable labels (3 labelled)",
            "v3 drift: a, b, c, d, e, f and 2 more flagged (max PSI 0.50) over 12,000 rows",
        ]
    }
    assert quality_lines(status, live, only="other") == {}
    assert quality_lines(None, live) == {}
