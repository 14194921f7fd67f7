"""Canary traffic splits on the real inference process over real HTTP: a deterministic share
(exact to ±1 per worker without a request id; by a hash of ``X-Request-ID`` with one), both
versions metered, 0 failed requests through promote and through a rollback that drops the
canary, and a restarted process restores the split from the store."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from kit.load import Load
from kit.serving import MLP, auth, log_model, rows

from kernel_magics.config import Settings, load_settings
from kernel_magics.display import status as display_status
from kernel_magics.errors import InvalidInput
from kernel_magics.store import Store
from kernel_magics.targets.local import LocalTarget

WORKERS = 1
THREADS, PER_THREAD = 4, 500  # 2,000 requests: the split is exact to ±1 per worker


@pytest.fixture(scope="module")
def settings(km_home: Path) -> Settings:
    return load_settings(workers=WORKERS)


@pytest.fixture(scope="module")
def mlp(settings: Settings, client: LocalTarget) -> str:
    for seed in (1, 2):
        log_model(settings, "mlp", MLP(seed=seed).eval(), rows(4, seed=seed))
    client.deploy("mlp", "1")
    return "mlp"


def send(client: LocalTarget, n: int, threads: int = THREADS) -> tuple[Counter, int]:
    """``n`` 1-row predictions from each of ``threads`` threads: versions seen, failures."""
    seen: Counter = Counter()
    failed = [0]
    lock = threading.Lock()
    body = {"instances": rows(1).tolist()}

    def run() -> None:
        s = requests.Session()
        s.headers.update(auth(client))
        local: Counter = Counter()
        bad = 0
        for _ in range(n):
            r = s.post(predict_url(client), json=body, timeout=30)
            if r.status_code == 200:
                local[int(r.headers["X-Model-Version"])] += 1
            else:
                bad += 1
        with lock:
            seen.update(local)
            failed[0] += bad

    ts = [threading.Thread(target=run) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return seen, failed[0]


def predict_url(client: LocalTarget) -> str:
    return f"{client.url}/v1/models/mlp:predict"


def load(client: LocalTarget) -> Load:
    """Three clients sending 1-row predictions to ``mlp`` until the ``with`` block ends."""
    return Load(predict_url(client), {"instances": rows(1).tolist()}, auth(client))


def test_canary_takes_its_exact_share(client: LocalTarget, mlp: str) -> None:
    result = client.deploy(mlp, "2", canary=10)
    assert (result.action, result.version, result.previous_version) == ("canary", 2, 1)
    assert result.canary == 10
    assert Store(client.settings).live_version(mlp) == 1  # the live alias stays
    seen, failed = send(client, PER_THREAD)
    assert failed == 0
    total = THREADS * PER_THREAD
    # deterministic: after n requests a worker sent exactly floor(n * 10 / 100) to the canary
    assert abs(seen[2] - total // 10) <= WORKERS, seen
    assert seen[1] + seen[2] == total
    info = requests.get(f"{client.url}/v1/models/{mlp}", headers=auth(client)).json()
    assert info["version"] == 1
    assert info["canary"] == {"version": 2, "percent": 10}
    assert client.model(mlp).canary == {"version": 2, "percent": 10}  # the record, too
    shown = display_status.status_text(client.status())  # what %serve status prints
    assert "v1 (live) + canary v2 at 10%" in shown


def test_a_request_id_always_gets_the_same_version(client: LocalTarget, mlp: str) -> None:
    body = {"instances": rows(1).tolist()}
    for i in range(40):
        rid = f"req-{i}"
        want = 2 if zlib.crc32(rid.encode()) % 100 < 10 else 1
        for _ in range(2):
            r = requests.post(
                f"{client.url}/v1/models/{mlp}:predict",
                json=body,
                headers={**auth(client), "X-Request-ID": rid},
            )
            assert int(r.headers["X-Model-Version"]) == want


def test_both_versions_are_metered_and_reachable_by_version(client: LocalTarget, mlp: str) -> None:
    text = requests.get(f"{client.url}/metrics", headers=auth(client)).text
    counts = {
        v: sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("km_requests_total{")
            and 'model="mlp"' in line
            and f'version="{v}"' in line
        )
        for v in (1, 2)
    }
    assert counts[1] > 0
    assert counts[2] > 0
    x = rows(2)
    body = {"inputs": [{"name": "input-0", "shape": [2, 32], "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    r = requests.post(
        f"{client.url}/v2/models/mlp/versions/2/infer", json=body, headers=auth(client)
    )
    assert r.status_code == 200
    assert r.json()["model_version"] == "2"
    meta = requests.get(f"{client.url}/v2/models/mlp", headers=auth(client)).json()
    assert meta["versions"] == ["1", "2"]


def test_a_restarted_process_restores_the_split(client: LocalTarget, mlp: str) -> None:
    client.stop()
    client.ensure_running(timeout=90)
    seen, failed = send(client, 100, threads=1)
    assert failed == 0
    assert seen == Counter({1: 90, 2: 10})


def test_a_respawned_worker_restores_the_split(
    client: LocalTarget, mlp: str, settings: Settings
) -> None:
    (victim,) = json.loads(settings.state_file.read_text())["workers"]
    os.kill(victim, signal.SIGKILL)  # a worker this module's process started
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = json.loads(settings.state_file.read_text())
        if state["workers_ready"] == WORKERS and victim not in state["workers"]:
            break
        time.sleep(0.1)
    assert victim not in state["workers"], state
    seen, failed = send(client, 50, threads=1)
    assert failed == 0
    assert seen == Counter({1: 45, 2: 5})


def test_promote_under_load_fails_nothing(client: LocalTarget, mlp: str) -> None:
    with load(client) as sent:
        sent.wait_for(50)
        result = client.promote(mlp)
        after = sent.wait_for(100)
    assert (result.action, result.version, result.previous_version) == ("promote", 2, 1)
    assert sent.failed == []
    assert set(sent.versions[after + 3 * 2 :]) == {2}  # in flight at the call: one per thread
    assert Store(client.settings).live_version(mlp) == 2
    assert client.history(mlp)[-1].action == "promote"
    with pytest.raises(InvalidInput, match="no canary"):
        client.promote(mlp)


def test_rollback_drops_a_running_canary_under_load(client: LocalTarget, mlp: str) -> None:
    assert client.deploy(mlp, "1", canary=25).action == "canary"
    with load(client) as sent:
        sent.wait_for(100)
        result = client.rollback(mlp)
        after = sent.wait_for(200)
    assert (result.action, result.version, result.previous_version) == ("canary-drop", 2, 1)
    assert sent.failed == []
    assert 1 in sent.versions[:after]  # the canary had its share before
    assert set(sent.versions[after + 3 * 2 :]) == {2}  # the live version keeps all traffic
    assert Store(client.settings).live_version(mlp) == 2
    assert client.history(mlp)[-1].action == "canary-drop"
    info = requests.get(f"{client.url}/v1/models/{mlp}", headers=auth(client)).json()
    assert info["canary"] is None
    # a plain rollback afterwards is the usual swap to the version live before (v1)
    assert client.rollback(mlp).version == 1


def test_bad_canary_requests_are_refused(client: LocalTarget, mlp: str) -> None:
    with pytest.raises(InvalidInput, match="between 1 and 99"):
        client.deploy(mlp, "2", canary=100)
    with pytest.raises(InvalidInput, match="live version"):
        client.deploy(mlp, "1", canary=10)
    np.testing.assert_equal(Store(client.settings).live_version(mlp), 1)


def test_the_magics_and_the_cli_words(
    client: LocalTarget, mlp: str, ip: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    ip.run_line_magic("deploy", "mlp@2 --canary 20")
    assert "mlp v2 is a canary for 20% of requests (v1 stays live)" in capsys.readouterr().out
    ip.run_line_magic("promote", "mlp")
    assert "mlp v2 is live (was v1)" in capsys.readouterr().out
    ip.run_line_magic("deploy", "mlp@1 --canary 5")
    ip.run_line_magic("rollback", "mlp")
    out = capsys.readouterr().out
    assert "mlp: canary v1 dropped; v2 takes all traffic" in out
    assert Store(client.settings).live_version(mlp) == 2
