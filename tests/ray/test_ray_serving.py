"""The ray target end to end on a real local Ray head: deploy → predict (core API and plain HTTP
to Ray's proxy, :predict and /invocations) → a version swap under load with no failed request →
rollback → history, bad input answered 4xx with a JSON error, each request metered (the
status snapshot's counters, Prometheus's series on the proxy's ``/metrics``), a tampered version
refused while the live one keeps serving, and what Ray has no equivalent for refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests
from kit.load import Load
from kit.prometheus import series
from kit.ray_head import RayHead, ray_settings, url
from kit.serving import MLP, Logged, log_model, rows

from kernel_magics import api
from kernel_magics.api._context import _target  # the target the api predicts through
from kernel_magics.config import Settings
from kernel_magics.display.rates import model_rates
from kernel_magics.errors import IntegrityError, InvalidInput, NotFound
from kernel_magics.records import VersionStats

X = rows(6, seed=7)


def close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Same outputs up to float32 rounding (the replica runs torch on one thread)."""
    np.testing.assert_allclose(np.asarray(actual, np.float32), expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def settings(km_home: Path, ray_head: RayHead) -> Settings:
    return ray_settings(km_home, ray_head)


@pytest.fixture(scope="module")
def mlp(settings: Settings) -> list[Logged]:
    return [
        log_model(settings, "mlp", MLP(seed=seed).eval(), rows(4, seed=seed)) for seed in (1, 2, 3)
    ]


def test_deploy_then_predict_over_the_api_and_plain_http(settings: Settings, mlp: list[Logged]):
    result = api.deploy("mlp@1", settings=settings)
    assert (result.action, result.version, result.previous_version) == ("deploy", 1, None)
    assert result.url == f"http://127.0.0.1:{settings.port}"
    expected = mlp[0].expected(X)

    close(api.predict("mlp", X, raw=True, settings=settings), expected)
    labels = api.predict("mlp", X, settings=settings)  # a classifier answers its labels
    np.testing.assert_array_equal(labels, expected.argmax(axis=1))

    r = requests.post(url(settings, "mlp"), json={"instances": X.tolist()}, timeout=30)
    assert r.status_code == 200
    assert r.headers["x-model-version"] == "1"
    close(r.json()["predictions"], expected)

    r = requests.post(url(settings, "mlp", "/invocations"), json={"inputs": X.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    close(r.json()["predictions"], expected)

    status = api.server_status(settings=settings)
    assert status is not None
    assert status.target == "ray"
    assert status.models["mlp"].version == 1
    assert status.models["mlp"].input == {"dtype": "float32", "shape": [-1, 32]}
    (summary,) = api.models(settings=settings)
    assert summary.name == "mlp"
    assert summary.served_version == 1

    # the replica meters each request as a worker does: %monitor's rates, Prometheus's series
    stats = status.models["mlp"].stats
    assert stats is not None
    assert (stats.requests, stats.rows, stats.errors, stats.latency_count) == (4, 24, 0, 4)
    requests.post(url(settings, "mlp"), json={"instances": X.tolist()}, timeout=30)
    later = api.server_status(settings=settings)
    assert later is not None
    (rates,) = model_rates(status, later, only="mlp")  # other modules share the cluster
    assert rates.requests == 5
    assert rates.rows_s
    assert rates.p50_ms is not None
    scraped = requests.get(f"http://127.0.0.1:{settings.port}/metrics", timeout=30)
    assert scraped.status_code == 200
    assert series(scraped.text, "km_requests_total", model="mlp", version="1") == 5
    assert series(scraped.text, "km_batch_size_sum", model="mlp", version="1") == 30


def test_bad_input_is_a_4xx_json_error(settings: Settings, mlp: list[Logged]):
    before = _stats(settings)
    cases = [
        (url(settings, "mlp"), {"json": {"instances": rows(2, features=5).tolist()}}, 400),
        (
            url(settings, "mlp"),
            {"data": b"{not json", "headers": {"content-type": "application/json"}},
            400,
        ),
        (url(settings, "mlp"), {"data": b"x", "headers": {"content-type": "text/plain"}}, 415),
        (url(settings, "mlp", "/invocations"), {"json": {"nope": [1]}}, 400),
        (url(settings, "nobody"), {"json": {"instances": X.tolist()}}, 404),
        # labels need a classifier registered with its classes; this one has none
        (url(settings, "mlp", ":predict?labels=true"), {"json": {"instances": X.tolist()}}, 400),
    ]
    for endpoint, kwargs, status in cases:
        r = requests.post(endpoint, timeout=30, **kwargs)
        assert r.status_code == status, (endpoint, kwargs, r.text)
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"]
    r = requests.get(url(settings, "mlp"), timeout=30)
    assert r.status_code == 405
    assert "POST" in r.json()["error"]
    r = requests.post(url(settings, "mlp", "/deploy"), json={}, timeout=30)
    assert r.status_code == 501
    assert "kernel side" in r.json()["error"]
    with pytest.raises(InvalidInput, match="32"):
        api.predict("mlp", rows(2, features=5), settings=settings)
    with pytest.raises(NotFound):
        api.predict("nobody", X, settings=settings)
    after = _stats(settings)  # five bad requests to mlp, then api.predict's: its errors
    assert (after.errors - before.errors, after.server_errors, after.requests) == (
        6,
        0,
        before.requests,
    )


def _stats(settings: Settings) -> VersionStats:
    status = api.server_status(settings=settings)
    assert status is not None
    stats = status.models["mlp"].stats
    assert stats is not None
    return stats


def test_version_swap_under_load_fails_no_request(settings: Settings, mlp: list[Logged]):
    with Load(url(settings, "mlp"), {"instances": X[:1].tolist()}, threads=4) as load:
        load.wait_for(50)
        result = api.deploy("mlp@2", max_batch_size=16, settings=settings)
        load.mark()  # every request sent from here on must be answered by v2
        load.wait_for(100)
    assert (result.version, result.previous_version) == (2, 1)
    assert load.failed == []
    assert load.seen[1] > 0
    assert load.seen[2] > 0
    assert set(load.after_mark) == {2}
    state = api.server_status(settings=settings)
    assert state is not None
    assert state.models["mlp"].max_batch_size == 16


def test_rollback_reuses_the_standby_and_history_lists_every_step(
    settings: Settings, mlp: list[Logged]
):
    result = api.rollback("mlp", settings=settings)
    assert (result.action, result.version, result.previous_version) == ("rollback", 1, 2)
    assert result.reused  # the replaced version stayed loaded
    close(api.predict("mlp", X, raw=True, settings=settings), mlp[0].expected(X))
    events = [
        (e.action, e.from_version, e.to_version) for e in api.history("mlp", settings=settings)
    ]
    assert events == [("deploy", None, 1), ("deploy", 1, 2), ("rollback", 2, 1)]


def test_a_tampered_version_is_refused_and_the_live_one_keeps_serving(
    settings: Settings, mlp: list[Logged]
):
    weights = Path(mlp[2].path) / "data" / "model.pt2"
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(IntegrityError, match="changed since registration"):
        api.deploy("mlp@3", settings=settings)
    _, version = _target(settings).predict("mlp", X)
    assert version == 1


def test_logs_and_token_name_what_ray_lacks(settings: Settings, mlp: list[Logged]):
    with pytest.raises(InvalidInput, match="ray target keeps no log"):
        api.server_logs(settings=settings)
    with pytest.raises(InvalidInput, match="no bearer token"):
        api.server_token(settings=settings)


def test_undeploy_removes_the_application(settings: Settings, mlp: list[Logged]):
    result = api.undeploy("mlp", settings=settings)
    assert (result.action, result.version, result.previous_version) == ("undeploy", None, 1)
    r = requests.post(url(settings, "mlp"), json={"instances": X.tolist()}, timeout=30)
    assert r.status_code == 404
    assert "no deployed model" in r.json()["error"]
    assert api.history("mlp", settings=settings)[-1].action == "undeploy"
