"""Deploy, rollback, undeploy, failed deploys, hot swap under load, worker crash and restart,
through the real supervisor and the kernel-side client."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from kit.serving import (
    MLP,
    SLOW_S,
    Branchy,
    FailsOnBigBatches,
    Logged,
    Slow,
    assert_served,
    auth,
    log_model,
    log_pickled,
    rows,
)

from kernel_magics.config import Settings
from kernel_magics.errors import DeployFailed, InvalidInput, NotFound, ServiceUnavailable
from kernel_magics.serving.process.pids import pid_alive
from kernel_magics.store import Store
from kernel_magics.targets.local import LocalTarget


@pytest.fixture(scope="module")
def versions(settings: Settings, client: LocalTarget) -> list[Logged]:
    return [log_model(settings, "swap", MLP(seed=s), rows(4, seed=s)) for s in (1, 2, 3)]


def served(client: LocalTarget, name: str, X: np.ndarray) -> tuple[np.ndarray, int]:
    return client.predict(name, X)


def test_deploy_rollback_undeploy(client, versions, settings):
    v1, v2, v3 = versions
    X = rows(6, seed=30)
    r = client.deploy("swap", "1")
    assert (r.version, r.previous_version, r.action) == (1, None, "deploy")
    out, version = served(client, "swap", X)
    assert version == 1
    assert_served(out, v1.expected(X))
    r = client.deploy("swap")  # newest
    assert (r.version, r.previous_version) == (3, 1)
    assert_served(served(client, "swap", X)[0], v3.expected(X))
    r = client.rollback("swap")
    assert (r.version, r.previous_version, r.action) == (1, 3, "rollback")
    assert r.load_ms == 0.0, "v1 was kept loaded beside v3: rolling back to it loads nothing"
    out, version = served(client, "swap", X)
    assert version == 1
    assert_served(out, v1.expected(X))
    r = client.rollback("swap", to=2)
    assert r.version == 2
    assert_served(served(client, "swap", X)[0], v2.expected(X))
    info = client.model("swap")
    assert [e.to_version for e in info.history] == [1, 3, 1, 2]
    assert Store(settings).live_version("swap") == 2
    r = client.undeploy("swap")
    assert (r.version, r.previous_version, r.action) == (None, 2, "undeploy")
    with pytest.raises(NotFound, match="no deployed model named 'swap'"):
        served(client, "swap", X)
    assert Store(settings).live_version("swap") is None
    with pytest.raises(InvalidInput, match="not deployed"):
        client.undeploy("swap")
    client.deploy("swap", "2")
    assert served(client, "swap", X)[1] == 2


def test_unknown_models_versions_and_bad_bodies(client, versions):
    with pytest.raises(NotFound):
        client.deploy("no-such-model")
    with pytest.raises(NotFound):
        client.deploy("swap", "99")
    with pytest.raises(InvalidInput, match="unknown deploy option"):
        client.deploy("swap", "1", colour="red")
    url = f"{client.url}/v1/models/swap/deploy"
    r = requests.post(url, data=b"{nope", headers=auth(client))
    assert r.status_code == 400
    assert "JSON" in r.json()["error"]
    r = requests.post(url, json={"max_batch_size": 0}, headers=auth(client))
    assert r.status_code == 400
    r = requests.post(f"{client.url}/v1/models/swap/rollback", json={"to": "x"},
                      headers=auth(client))  # fmt: skip
    assert r.status_code == 400


def test_failed_deploy_keeps_the_old_version(client, settings, versions):
    X = rows(3, seed=31)
    before = served(client, "swap", X)
    bad = log_pickled(settings, "swap", FailsOnBigBatches(seed=9), rows(4))
    with pytest.raises(DeployFailed, match="warm-up forward"):
        client.deploy("swap", str(bad.version))
    after = served(client, "swap", X)
    assert after[1] == before[1]
    np.testing.assert_array_equal(after[0], before[0])
    # Tampered files: the hash check refuses them before any worker loads them.
    tampered = log_model(settings, "swap", MLP(seed=8), rows(4))
    with open(Path(tampered.path) / "data" / "model.pt2", "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(DeployFailed, match="changed since registration"):
        client.deploy("swap", str(tampered.version))
    assert served(client, "swap", X)[1] == before[1]
    assert Store(settings).live_version("swap") == before[1]


def test_pickle_format_and_fixed_batch_models(client, settings):
    branchy = log_pickled(settings, "branchy", Branchy(seed=4), rows(4))
    client.deploy("branchy")
    X = rows(5, seed=32)
    out, _ = served(client, "branchy", X)
    np.testing.assert_allclose(out, branchy.expected(X), rtol=1e-5, atol=1e-6)
    assert client.model("branchy").format == "pickle"
    # A one-row input example fixes the exported batch at 1: rows are forwarded one at a time.
    single = log_model(settings, "single", MLP(seed=5), rows(1))
    client.deploy("single")
    assert client.model("single").fixed_batch == 1
    out, _ = served(client, "single", X)
    one_by_one = np.concatenate([single.expected(X[i : i + 1]) for i in range(len(X))])
    np.testing.assert_array_equal(out, one_by_one)


def _hammer(client: LocalTarget, stop: threading.Event, log: list, errors: list) -> None:
    host, port = client.url.split("//")[1].split(":")
    headers = {"Content-Type": "application/json", **auth(client)}
    body = json.dumps({"instances": rows(1).tolist()})
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    while not stop.is_set():
        sent = time.monotonic()
        try:
            conn.request("POST", "/v1/models/swap:predict", body, headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                errors.append(resp.status)
            log.append((sent, int(resp.getheader("X-Model-Version", "0"))))
        except (OSError, http.client.HTTPException) as err:
            errors.append(err)
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.close()


def test_swap_under_load_loses_nothing(client, versions):
    client.deploy("swap", "1")
    stop, log, errors = threading.Event(), [], []
    threads = [threading.Thread(target=_hammer, args=(client, stop, log, errors)) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    client.deploy("swap", "3")
    swapped = time.monotonic()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert {v for _, v in log} == {1, 3}
    late = [v for sent, v in log if sent > swapped]
    assert late
    assert set(late) == {3}, "a request sent after the swap got the old version"


def test_swap_answers_after_the_old_version_sent_its_last_response(client, settings):
    """A request in the old version's forward when the swap happens is answered before the swap
    call returns: from then on, nothing the old version computed is still on its way."""
    for seed in (1, 2):
        log_pickled(settings, "slow", Slow(seed=seed), rows(4))
    client.deploy("slow", "1", max_batch_size=1)
    client.deploy("slow", "2", max_batch_size=1)  # v1 stays loaded: the rollback is a dict swap
    host, port = client.url.split("//")[1].split(":")
    body = json.dumps({"instances": rows(1).tolist()}).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/models/slow:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s"
            % (client.token().encode(), len(body), body)
        )
        time.sleep(SLOW_S / 4)  # v2's forward is under way
        started = time.monotonic()
        # v1 keeps the options its deploy asked for, so the rollback reuses the loaded v1
        assert client.rollback("slow").load_ms == 0
        assert time.monotonic() - started < 5 * SLOW_S
        sock.setblocking(False)
        answer = sock.recv(1 << 16)  # already here, or BlockingIOError
    assert answer.startswith(b"HTTP/1.1 200")
    assert b"x-model-version: 2" in answer.lower()
    assert served(client, "slow", rows(1))[1] == 1
    assert client.model("slow").max_batch_size == 1


def test_racing_deploys_stay_consistent(client, settings, versions):
    results: list = []

    def go(ref: str) -> None:
        results.append(client.deploy("swap", ref))

    threads = [threading.Thread(target=go, args=(ref,)) for ref in ("1", "2", "3", "2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    # every call has answered; the last history write may still be under way until settled
    client.settle("swap")
    live = Store(settings).live_version("swap")
    history = Store(settings).history("swap")
    assert history[-1]["to_version"] == live
    assert served(client, "swap", rows(1))[1] == live == client.model("swap").version


def test_sigkilled_worker_is_respawned_and_reloaded(client, settings):
    before = served(client, "swap", rows(2))[1]
    state = json.loads(settings.state_file.read_text())
    old = state["workers"][0]
    os.kill(old, signal.SIGKILL)
    killed = time.monotonic()
    deadline = killed + 60
    while time.monotonic() < deadline:
        try:
            out, version = served(client, "swap", rows(2))
            state = json.loads(settings.state_file.read_text())
            if state["workers"][0] != old:
                break
        except ServiceUnavailable:
            pass
        time.sleep(0.05)
    else:
        pytest.fail("the worker was not respawned")
    print(f"back serving {time.monotonic() - killed:.2f} s after SIGKILL")
    assert version == before
    assert state["status"] == "ready"
    assert state["pid"] == client.status().pid
    assert not pid_alive(old)
    assert served(client, "branchy", rows(2))[1] >= 1


def test_restart_restores_live_models_and_stop_cleans_up(client, settings):
    live = {m.name: m.version for m in client.models()}
    state = json.loads(settings.state_file.read_text())
    pids = [state["pid"], *state["workers"]]
    assert client.stop() is True
    assert not settings.state_file.exists()
    assert not any(pid_alive(p) for p in pids)
    with pytest.raises(ServiceUnavailable):
        client.predict("swap", rows(1))
    url = client.ensure_running(timeout=90)
    restored = {name: m.version for name, m in client.status().models.items()}
    assert restored == live
    assert url.startswith("http://127.0.0.1:")


def test_sigkilled_supervisor_comes_back_on_the_next_call(client, settings):
    """The whole process tree gone (supervisor SIGKILLed, its workers die with it): the next
    kernel-side call answers "restarting" at once and starts it again, which restores every
    live version from the store alone."""
    live = {m.name: m.version for m in client.models()}
    assert live, "the tests above leave models deployed"
    state = json.loads(settings.state_file.read_text())
    os.kill(state["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(state["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(ServiceUnavailable, match="restarting"):
        client.predict("swap", rows(1))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            served(client, "swap", rows(1))
            break
        except ServiceUnavailable as err:
            if "restarting" not in str(err):
                pytest.fail(f"unexpected answer while the process restarts: {err}")
            time.sleep(0.1)
    else:
        pytest.fail("the inference process did not come back")
    new = json.loads(settings.state_file.read_text())
    assert new["pid"] != state["pid"]
    assert {name: m.version for name, m in client.status().models.items()} == live
    assert not any(pid_alive(p) for p in state["workers"])
