"""The inference log, X-Request-ID and feedback on the real inference process over real HTTP
(one process for the module): sampled requests appear in ``api.inference_log`` with the id the
client sent, a blocked writer drops and counts samples without failing a request, eviction
keeps the newest rows, feedback joins the log into live accuracy and MSE, bad feedback bodies
answer 4xx JSON, and a restarted process keeps the log."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from kit.serving import auth, log_model

from kernel_magics import api
from kernel_magics.config import Settings, load_settings
from kernel_magics.errors import InvalidInput
from kernel_magics.quality.log_store import log_path
from kernel_magics.serving.process.cleanup import state_pids, stop_pids
from kernel_magics.targets.local import LocalTarget

MAX_ROWS = 40  # rows kept per model
QUEUE = 200  # samples a worker's writer may have waiting (it writes every 0.25 s)


class FirstThree(torch.nn.Module):
    """A classifier whose answer is known: the scores are the first three features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3] * 1.0


class RowSum(torch.nn.Module):
    """A regressor whose answer is known: the sum of the features."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def settings(km_home: Path) -> Settings:
    return load_settings(log_max_rows=MAX_ROWS, log_queue=QUEUE, log_sample=1.0)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[LocalTarget]:
    c = LocalTarget(settings)
    example = np.eye(4, dtype=np.float32)
    log_model(settings, "pick", FirstThree().eval(), example, task="classification")
    log_model(settings, "total", RowSum().eval(), example, task="regression")
    c.ensure_running(timeout=90)
    c.deploy("pick")
    c.deploy("total")
    try:
        yield c
    finally:
        pids = state_pids(settings.state_file)
        c.stop()
        stop_pids(pids)


@pytest.fixture(scope="module")
def http(client: LocalTarget) -> requests.Session:
    session = requests.Session()
    session.headers.update(auth(client))
    return session


def predict(http: requests.Session, client: LocalTarget, name: str, rows, rid=None, **kw):
    headers = {"X-Request-ID": rid} if rid is not None else {}
    return http.post(
        f"{client.url}/v1/models/{name}:predict",
        json={"instances": np.asarray(rows).tolist()},
        headers=headers,
        timeout=30,
        **kw,
    )


def wait_for_log(settings: Settings, name: str, rows: int, timeout: float = 10) -> object:
    deadline = time.monotonic() + timeout
    while True:
        frame = api.inference_log(name, settings=settings)
        if len(frame) >= rows or time.monotonic() > deadline:
            return frame
        time.sleep(0.05)


def test_sampled_requests_are_logged_with_the_client_request_id(http, client, settings):
    rows = np.array([[3, 1, 2, 0], [0, 5, 1, 0]], dtype=np.float32)
    answer = predict(http, client, "pick", rows, rid="order-17")
    assert answer.status_code == 200
    assert answer.headers["X-Request-ID"] == "order-17"
    frame = wait_for_log(settings, "pick", 2)
    mine = frame[frame.request_id == "order-17"]
    assert list(mine.columns) == [
        "time", "version", "request_id", "row", "input", "output", "latency_ms"
    ]  # fmt: skip
    assert list(mine.row) == [0, 1]
    assert mine.input.tolist() == rows.tolist()
    assert mine.output.tolist() == [[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]]
    assert (mine.version == 1).all()
    assert (mine.latency_ms > 0).all()
    assert str(mine.time.dt.tz) == "UTC"


def test_invocations_and_v2_are_logged_too(http, client, settings):
    row = [[1.0, 7.0, 2.0, 0.0]]
    v2 = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": row}]}
    answers = [
        http.post(f"{client.url}/v2/models/pick/infer", json=v2, headers={"X-Request-ID": "v2-1"}),
        http.post(
            f"{client.url}/v1/models/pick/invocations",
            json={"instances": row},
            headers={"X-Request-ID": "inv-1"},
        ),
    ]
    assert [a.status_code for a in answers] == [200, 200]
    assert [a.headers["X-Request-ID"] for a in answers] == ["v2-1", "inv-1"]
    deadline = time.monotonic() + 10
    while not {"v2-1", "inv-1"} <= set(
        (frame := api.inference_log("pick", settings=settings)).request_id
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    logged = frame[frame.request_id.isin(["v2-1", "inv-1"])]
    assert logged.input.tolist() == [row[0], row[0]]
    assert logged.output.tolist() == [[1.0, 7.0, 2.0], [1.0, 7.0, 2.0]]


def test_every_answer_carries_a_request_id(http, client):
    generated = predict(http, client, "pick", np.ones((1, 4), np.float32))
    other = predict(http, client, "pick", np.ones((1, 4), np.float32))
    assert generated.headers["X-Request-ID"] != other.headers["X-Request-ID"]
    assert len(generated.headers["X-Request-ID"]) > 8
    # an insane id (a space, too long) is replaced, not echoed
    for bad in ("two words", "x" * 129):
        answer = predict(http, client, "pick", np.ones((1, 4), np.float32), rid=bad)
        assert answer.status_code == 200
        assert answer.headers["X-Request-ID"] != bad
    # errors and other routes too
    missing = predict(http, client, "nope", np.ones((1, 4), np.float32), rid="lost-1")
    assert missing.status_code == 404
    assert missing.headers["X-Request-ID"] == "lost-1"
    assert "X-Request-ID" in requests.get(f"{client.url}/ping", timeout=10).headers


def test_eviction_keeps_the_newest_rows(http, client, settings):
    for i in range(MAX_ROWS + 15):
        answer = predict(http, client, "total", [[i, 0, 0, 0]], rid=f"ev-{i}")
        assert answer.status_code == 200
    deadline = time.monotonic() + 10
    while True:
        frame = api.inference_log("total", settings=settings)
        if frame.request_id.iloc[-1:].tolist() == [f"ev-{MAX_ROWS + 14}"]:
            break
        assert time.monotonic() < deadline, "the last request was never logged"
        time.sleep(0.05)
    assert frame.request_id.tolist() == [f"ev-{i}" for i in range(15, MAX_ROWS + 15)]
    assert frame.output.tolist() == [float(i) for i in range(15, MAX_ROWS + 15)]
    newest = api.inference_log("total", limit=3, settings=settings)
    assert newest.request_id.tolist() == [f"ev-{i}" for i in range(MAX_ROWS + 12, MAX_ROWS + 15)]
    assert len(api.inference_log("total", since="1h", settings=settings)) == MAX_ROWS
    assert api.inference_log("total", since=pd_future(), settings=settings).empty


def pd_future():
    import pandas as pd

    return pd.Timestamp.now(tz="UTC") + pd.Timedelta(hours=1)


def test_feedback_gives_live_accuracy_per_version(http, client, settings):
    rng = np.random.default_rng(0)
    rows = rng.permutation(np.eye(3, 4, dtype=np.float32).repeat(4, axis=0))  # 12 rows
    answered = predict(http, client, "pick", rows, rid="batch-a")
    assert answered.status_code == 200
    truth = rows[:, :3].argmax(axis=1)
    labels = truth.copy()
    labels[:3] = (labels[:3] + 1) % 3  # three wrong answers out of twelve
    wait_for_log(settings, "pick", 12)
    items = [{"request_id": "batch-a", "row": i, "label": int(y)} for i, y in enumerate(labels)]
    items.append({"request_id": "never-sent", "label": 1})
    result = api.feedback("pick", items, settings=settings)
    assert result == {"accepted": 12, "unknown": ["never-sent"]}
    live = api.live_metrics("pick", settings=settings)
    assert set(live) == {1}
    assert live[1]["labelled"] == 12
    assert live[1]["accuracy"] == pytest.approx(9 / 12)
    from sklearn.metrics import f1_score

    assert live[1]["f1_macro"] == pytest.approx(f1_score(labels, truth, average="macro"))

    # a regressor: MSE and MAE of the answered sums
    answered = predict(http, client, "total", [[1, 2, 0, 0], [4, 0, 0, 0]], rid="sum-1")
    assert answered.status_code == 200
    feedback = {"feedback": [{"request_id": "sum-1", "row": 0, "label": 4.0},
                             {"request_id": "sum-1", "row": 1, "label": 4.0}]}  # fmt: skip
    deadline = time.monotonic() + 10
    while api.feedback("total", feedback, settings=settings)["accepted"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    figures = api.live_metrics("total", settings=settings)[1]
    assert figures["labelled"] == 2
    assert figures["mse"] == pytest.approx((1.0**2 + 0.0) / 2)
    assert figures["mae"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"feedback": []}',
        b'{"feedback": [{"row": 0, "label": 1}]}',
        b'{"feedback": [{"request_id": "a", "label": [1, 2]}]}',
        b'{"feedback": [{"request_id": "a", "row": -1, "label": 1}]}',
        b'{"feedback": [{"request_id": "a"}]}',
        b'{"feedback": [{"request_id": "a", "label": 1, "extra": 2}]}',
        b'{"feedback": [], "more": 1}',
    ],
)
def test_bad_feedback_bodies_answer_400_json(http, client, body):
    answer = http.post(
        f"{client.url}/v1/models/pick/feedback",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 400
    assert answer.json()["error"]
    assert predict(http, client, "pick", np.ones((1, 4), np.float32)).status_code == 200


def test_feedback_needs_a_token_and_a_deployed_model(http, client):
    body = {"feedback": [{"request_id": "a", "label": 1}]}
    url = f"{client.url}/v1/models/pick/feedback"
    assert requests.post(url, json=body, timeout=10).status_code == 401
    unknown = http.post(f"{client.url}/v1/models/nope/feedback", json=body, timeout=10)
    assert unknown.status_code == 404
    assert "nope" in unknown.json()["error"]
    assert http.get(url, timeout=10).status_code == 405


def test_a_blocked_writer_drops_and_counts_without_failing_requests(http, client, settings):
    def dropped() -> int:
        status = client.status()
        assert status is not None
        return status.inference_log.get("dropped", 0)

    before = dropped()
    holder = sqlite3.connect(str(log_path(settings.home)), timeout=10)
    holder.execute("BEGIN EXCLUSIVE")  # the writer waits for this lock, its queue fills
    try:
        answers = [
            predict(http, client, "pick", np.ones((1, 4), np.float32), rid=f"blocked-{i}")
            for i in range(QUEUE * 3)
        ]
    finally:
        holder.rollback()
        holder.close()
    assert [a.status_code for a in answers] == [200] * len(answers)
    assert dropped() - before >= QUEUE  # the queue held QUEUE at most (+1 being written)
    metrics = http.get(f"{client.url}/metrics", timeout=10).text
    assert "km_inference_log_dropped_total" in metrics
    # the writer goes on once the lock is gone (a request sent while its queue is still full
    # of what it held is dropped too: send until one is logged)
    deadline = time.monotonic() + 10
    for attempt in range(1000):
        rid = f"after-block-{attempt}"
        assert predict(http, client, "pick", np.ones((1, 4), np.float32), rid=rid).ok
        time.sleep(0.1)
        if any(
            r.startswith("after-block")
            for r in api.inference_log("pick", settings=settings).request_id
        ):
            break
        assert time.monotonic() < deadline, "the writer did not recover"


def test_a_restarted_process_keeps_the_log(http, client, settings):
    answer = predict(http, client, "total", [[5, 5, 0, 0]], rid="before-restart")
    assert answer.status_code == 200
    wait_for_log(settings, "total", 1)
    deadline = time.monotonic() + 10
    while "before-restart" not in set(api.inference_log("total", settings=settings).request_id):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.stop()
    assert "before-restart" in set(api.inference_log("total", settings=settings).request_id)
    client.ensure_running(timeout=90)  # the live versions come back from the store
    result = api.feedback(
        "total", [{"request_id": "before-restart", "label": 10.0}], settings=settings
    )
    assert result == {"accepted": 1, "unknown": []}
    answer = predict(requests_session(client), client, "total", [[1, 1, 1, 1]], rid="after")
    assert answer.status_code == 200
    deadline = time.monotonic() + 10
    while "after" not in set(api.inference_log("total", settings=settings).request_id):
        assert time.monotonic() < deadline
        time.sleep(0.05)


def requests_session(client: LocalTarget) -> requests.Session:
    session = requests.Session()
    session.headers.update(auth(client))
    return session


def test_log_sample_share_per_deploy(http, client, settings):
    with pytest.raises(InvalidInput, match="log_sample"):
        client.deploy("pick", log_sample=2)
    client.deploy("pick", log_sample=0.25)
    for i in range(9):
        assert predict(http, client, "pick", np.ones((1, 4), np.float32), rid=f"s-{i}").ok
    deadline = time.monotonic() + 10
    while "s-8" not in set((frame := api.inference_log("pick", settings=settings)).request_id):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    logged = [rid for rid in frame.request_id if rid.startswith("s-")]
    assert logged == ["s-0", "s-4", "s-8"]  # a quarter, evenly, the first one included


def test_magics_show_the_log_live_metrics_and_the_monitor_line(ip, client, settings, capsys):
    client.deploy("pick", log_sample=1.0)  # the test before logged a quarter
    # two rows: the second gets its feedback later, for the monitor below
    rows = [[0, 0, 9, 0], [0, 0, 9, 0]]
    answered = predict(requests_session(client), client, "pick", rows, rid="magic-1")
    assert answered.status_code == 200
    deadline = time.monotonic() + 10
    while "magic-1" not in set(api.inference_log("pick", settings=settings).request_id):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    capsys.readouterr()
    ip.run_line_magic("log", "pick --limit 1")
    out = capsys.readouterr().out
    assert "magic-1" in out
    assert "[0.0,0.0,9.0]" in out
    assert "1 logged rows" in out

    api.feedback("pick", [{"request_id": "magic-1", "label": 2}], settings=settings)
    live = ip.run_line_magic("evaluate", "pick --live --since 1h")
    assert live.versions[1]["labelled"] >= 1
    assert "v1 live accuracy" in ip.display_formatter.format(live)[0]["text/plain"]
    run_id = live.runs[1]
    from kernel_magics.api._context import _store

    history = _store(settings).client.get_metric_history(run_id, "live_accuracy")
    assert history[-1].value == pytest.approx(live.versions[1]["accuracy"])

    from kernel_magics.widgets.monitor import LIVE_EVERY_S, ServiceMonitor, snapshot_views

    text, _ = snapshot_views(settings, "pick")
    assert "pick v1 live accuracy" in text

    # %monitor reads live metrics every LIVE_EVERY_S, not every tick, and they still update
    now = [0.0]
    monitor = ServiceMonitor(settings, "pick", interval_s=60, clock=lambda: now[0])
    monitor.tick()
    labelled = monitor.live["pick"][1][1]["labelled"]
    assert f"({labelled:,} labelled)" in monitor.static_text()
    second = [{"request_id": "magic-1", "row": 1, "label": 2}]
    fed = api.feedback("pick", second, settings=settings)
    assert fed["accepted"] == 1
    now[0] = LIVE_EVERY_S / 2
    monitor.tick()  # read half the interval ago: the same figures
    assert f"({labelled:,} labelled)" in monitor.static_text()
    now[0] = LIVE_EVERY_S
    monitor.tick()
    assert f"({labelled + 1:,} labelled)" in monitor.static_text()

    from IPython.core.error import UsageError

    for line in ("pick --live --data X y", "pick@1 --live", "pick --since 1h"):
        with pytest.raises(UsageError):
            ip.run_line_magic("evaluate", line)
    with pytest.raises(UsageError):
        ip.run_line_magic("log", "pick --since yesterday")
