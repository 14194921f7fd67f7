"""Two workers behind one listening socket: both swap together, /metrics aggregates both, and
killing one leaves the other serving while it is respawned."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests
from kit.prometheus import series
from kit.serving import MLP, assert_served, auth, log_model, rows

from kernel_magics.config import Settings, load_settings
from kernel_magics.serving.process.pids import pid_alive
from kernel_magics.targets.local import LocalTarget


@pytest.fixture(scope="module")
def settings(km_home: Path) -> Settings:
    return load_settings(workers=2)


@pytest.fixture(scope="module")
def deployed(settings: Settings, client: LocalTarget) -> list:
    logged = [log_model(settings, "two", MLP(seed=s), rows(4)) for s in (6, 7)]
    client.deploy("two", "1")
    return logged


def _fresh_predict(client: LocalTarget) -> tuple[int, int]:
    """A new connection each time, so the kernel spreads them over both workers."""
    host, port = client.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        body = json.dumps({"instances": rows(1).tolist()})
        conn.request("POST", "/v1/models/two:predict", body,
                     {"Content-Type": "application/json", **auth(client)})  # fmt: skip
        resp = conn.getresponse()
        resp.read()
        return resp.status, int(resp.getheader("X-Model-Version", "0"))
    finally:
        conn.close()


def _requests_total(client: LocalTarget) -> float:
    text = requests.get(f"{client.url}/metrics", headers=auth(client), timeout=10).text
    return series(text, "km_requests_total", model="two")


def test_two_workers_swap_together_and_metrics_aggregate(client, deployed, settings):
    state = json.loads(settings.state_file.read_text())
    assert len(state["workers"]) == 2
    assert state["workers_ready"] == 2
    before = _requests_total(client)
    answers = [_fresh_predict(client) for _ in range(30)]
    assert answers == [(200, 1)] * 30
    # Whichever worker answers /metrics, it reports the requests of both.
    assert _requests_total(client) - before == 30
    client.deploy("two", "2")
    assert [_fresh_predict(client) for _ in range(30)] == [(200, 2)] * 30
    out, version = client.predict("two", rows(5, seed=40))
    assert version == 2
    assert_served(out, deployed[1].expected(rows(5, seed=40)))


def test_one_worker_killed_the_other_keeps_serving(client, deployed, settings):
    state = json.loads(settings.state_file.read_text())
    victim, survivor = state["workers"]
    stop, errors, answered = threading.Event(), [], []

    def hammer() -> None:
        while not stop.is_set():
            try:
                status, version = _fresh_predict(client)
                (answered if status == 200 else errors).append(status)
            except (OSError, http.client.HTTPException) as err:
                errors.append(err)  # only requests in flight on the killed worker

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    os.kill(victim, signal.SIGKILL)
    killed, seen = time.monotonic(), len(answered)
    time.sleep(1.0)
    served_meanwhile = len(answered) - seen
    deadline = killed + 60
    while time.monotonic() < deadline:
        state = json.loads(settings.state_file.read_text())
        if state["workers_ready"] == 2 and victim not in state["workers"]:
            break
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join()
    assert state["workers_ready"] == 2, state
    assert survivor in state["workers"]
    assert not pid_alive(victim)
    assert served_meanwhile > 0, "nothing was answered while a worker was down"
    assert len(errors) <= 3, errors  # at most one in-flight request per hammering thread
    assert _fresh_predict(client) == (200, 2)
