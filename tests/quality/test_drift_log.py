"""%drift over the inference log: a table model trained here is deployed in the real inference
process, real HTTP requests with two shifted columns are logged, and `%drift NAME` flags exactly
those; a window of the newest unshifted rows flags none."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
import torch
from IPython.core.error import UsageError
from kit.serving import auth

from kernel_magics import api
from kernel_magics.config import load_settings
from kernel_magics.targets.local import LocalTarget

COLUMNS = ["a", "b", "c", "d"]


def _table(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(rows, 4)).astype(np.float32), columns=COLUMNS)
    frame["color"] = rng.choice(["red", "green", "blue"], rows, p=[0.5, 0.3, 0.2])
    return frame


@pytest.fixture(scope="module")
def served(ip: Any) -> Iterator[tuple[requests.Session, str]]:
    """A classifier of a's sign on a table with a string column, trained and deployed in an
    inference process that updates its drift gauges every half second."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERNEL_MAGICS_DRIFT_INTERVAL_S", "0.5")
        mp.setenv("KERNEL_MAGICS_LOG_SAMPLE", "1")  # every request logged, not the default share
        yield _deploy()


def _deploy() -> tuple[requests.Session, str]:
    frame = _table(600, 0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(7, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    labels = np.where(frame["a"] > 0, "pos", "neg")
    api.train(net, frame, labels, name="shop", epochs=5, lr=2e-2, encode="onehot")
    api.deploy("shop")
    client = LocalTarget(load_settings())
    session = requests.Session()
    session.headers.update(auth(client))
    return session, client.url


def _send(served: tuple[requests.Session, str], frame: pd.DataFrame) -> None:
    session, url = served
    records = frame.to_dict("records")
    for start in range(0, len(records), 100):  # requests of 100 rows, as clients send them
        answer = session.post(
            f"{url}/v1/models/shop:predict",
            json={"instances": records[start : start + 100]},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text


def _wait_for_rows(rows: int) -> None:
    deadline = time.monotonic() + 20
    while len(api.inference_log("shop")) < rows and time.monotonic() < deadline:
        time.sleep(0.05)


def test_drift_over_logged_requests_flags_the_shifted_columns(served: Any, ip: Any) -> None:
    with pytest.raises(UsageError, match="shop v1 has no logged requests"):
        ip.run_line_magic("drift", "shop")
    shifted = _table(500, 1)
    shifted["b"] += 1.0
    shifted["d"] *= 3
    _send(served, shifted)
    _wait_for_rows(500)
    report = ip.run_line_magic("drift", "shop")
    assert report.rows == 500
    assert report.source == "the inference log"
    assert report.flagged == ["b", "d"]
    assert report.features[-1].feature == "prediction"  # the logged labels were compared

    _send(served, _table(300, 2))  # then the traffic goes back to normal
    _wait_for_rows(800)
    assert ip.run_line_magic("drift", "shop --window 300rows").flagged == []
    assert ip.run_line_magic("drift", "shop --window 1h").flagged == ["b", "d"]
    with pytest.raises(UsageError, match="not a duration"):
        ip.run_line_magic("drift", "shop --window soon")


def _gauges(served: tuple[requests.Session, str], metric: str) -> dict[str, float]:
    session, url = served
    text = session.get(f"{url}/metrics", timeout=30).text
    out = {}
    for labels, value in re.findall(rf"^{metric}{{(.*)}} (\S+)$", text, re.M):
        named = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if (named["model"], named["version"]) == ("shop", "1"):
            out[named["feature"]] = float(value)
    return out


def test_the_inference_process_exports_drift_gauges(served: Any) -> None:
    """After the first test's traffic (500 shifted rows, then 300 normal ones): the gauges over
    the newest logged rows flag b and d."""
    deadline = time.monotonic() + 20
    while not _gauges(served, "km_drift_flagged") and time.monotonic() < deadline:
        time.sleep(0.2)
    flagged = _gauges(served, "km_drift_flagged")
    assert {f for f, v in flagged.items() if v == 1.0} == {"b", "d"}
    assert set(flagged) == {*COLUMNS, "color", "prediction"}
    psi = _gauges(served, "km_drift_psi")
    assert psi["b"] > 0.1
    assert psi["a"] < 0.1


def test_status_and_monitor_show_the_latest_drift_check_with_live_accuracy(
    served: Any, ip: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The drift monitor's latest check reaches ``/v1/status`` (flags, PSI, rows compared) and
    ``%monitor`` writes it in one quality line per version next to the live accuracy from
    feedback; the widget keeps a mark per tick and feature."""
    from kernel_magics.widgets.monitor import ServiceMonitor

    settings = load_settings()
    deadline = time.monotonic() + 20
    check = None
    while (check is None or check.rows < 800) and time.monotonic() < deadline:
        status = api.server_status()
        assert status is not None
        check = status.drift_of("shop", 1)
        time.sleep(0.2)
    assert check is not None
    assert check.rows == 800  # every logged row: fewer than drift_window_rows
    assert check.flagged == ("b", "d")
    assert set(check.psi) == {*COLUMNS, "color", "prediction"}
    assert check.max_psi == max(check.psi.values()) > 0.1

    logged = api.inference_log("shop", limit=20)
    truth = [  # the true class: the sign of a, which the model learnt
        {"request_id": r.request_id, "row": r.row, "label": "pos" if r.input["a"] > 0 else "neg"}
        for r in logged.itertuples()
    ]
    api.feedback("shop", truth)
    live = api.live_metrics("shop")[1]
    capsys.readouterr()
    ip.run_line_magic("monitor", "shop")
    text = capsys.readouterr().out
    line = next(x for x in text.splitlines() if "drift:" in x).strip()
    assert line.startswith("shop v1 drift: b, d flagged (max PSI ")
    assert f" over 800 rows · live accuracy {live['accuracy']:.3f}, F1 " in line
    assert line.endswith(" (20 labelled)")

    monitor = ServiceMonitor(settings, "shop", interval_s=60)
    monitor.tick()
    monitor.tick()
    strip = monitor.drift_svg()
    rows = dict(re.findall(r'data-label="shop v1 (\w+)">(.*?)</g>', strip))
    assert set(rows) == {*COLUMNS, "color", "prediction"}
    assert [rows[f].count('class="flagged"') for f in ("b", "d")] == [2, 2]
    assert rows["a"].count('class="clear"') == 2
    assert "flagged" not in rows["a"]
    assert "since " in rows["b"]
    assert "since " not in rows["a"]
