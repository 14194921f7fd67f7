"""The Models panel's REST routes over HTTP, without a browser: the Jupyter server runs in this
process with the extension loaded (under pytest-jupyter's base URL ``/a%40b/``, so the routes
must follow the server's base URL), and ``KERNEL_MAGICS_HOME`` points at the module's home.

What needs no inference process is here: refusals (token, name, body) and what the routes read
from the store. Deploy and rollback through these routes, on a running process, are driven by
tests/browser/test_lab_panel.py."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tornado.httpclient import HTTPResponse

from kernel_magics import api

Fetch = Callable[..., Awaitable[HTTPResponse]]
ROUTES = "kernel-magics"
MODEL = "digits"


async def call(jp_fetch: Fetch, method: str, *path: str, **kwargs: Any) -> tuple[int, Any]:
    """One request to a route: its status and its parsed JSON body (errors included)."""
    if method == "POST":
        kwargs.setdefault("body", "")
    answer = await jp_fetch(ROUTES, *path, method=method, raise_error=False, **kwargs)
    assert answer.headers["Content-Type"].startswith("application/json"), answer.body[:200]
    return answer.code, json.loads(answer.body)


@pytest.fixture(scope="module")
def trained(km_home: Path, digits: tuple[np.ndarray, np.ndarray]) -> str:
    """Two versions of a small classifier in the module's store (nothing deployed)."""
    X, y = digits
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
        api.train(net, X, y, name=MODEL, epochs=1, lr=0.01, progress="none")
    return MODEL


async def test_every_route_needs_the_token(jp_fetch: Fetch, km_home: Path) -> None:
    for method, path in [
        ("GET", ("models",)),
        ("GET", ("status",)),
        ("GET", ("history", MODEL)),
        ("POST", ("models", MODEL, "deploy")),
        ("POST", ("models", MODEL, "rollback")),
        ("POST", ("models", MODEL, "undeploy")),
    ]:
        status, body = await call(jp_fetch, method, *path, headers={"Authorization": "token no"})
        assert status == 403, (path, body)
        assert body["error"]
        assert "\n" not in body["error"]


async def test_status_is_null_while_no_inference_process_runs(
    jp_fetch: Fetch, km_home: Path
) -> None:
    assert await call(jp_fetch, "GET", "status") == (200, {"status": None})


async def test_status_carries_a_language_models_figures(
    jp_fetch: Fetch, km_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fields the panel's generation line reads (extension/src/api.ts), derived by the
    records from what a worker reports. The worker's side (its engine and histograms) is
    tests/generative/test_generative_notebook.py's; here its report is given as it arrives."""
    from kernel_magics.records import ModelState, ServerStatus

    served = ModelState.from_wire(
        {
            "name": "tiny",
            "version": 1,
            "format": "transformers",
            "stats": {
                "model": "tiny",
                "version": 1,
                "tokens": 480,
                "ttft_buckets": [[0.01, 2], [0.02, 10], [None, 10]],
                "inter_token_buckets": [[0.005, 300], [0.01, 470], [None, 470]],
            },
            "generation": {
                "running": 2,
                "queued": 1,
                "max_running": 16,
                "kv_cache_tokens": 32768,
                "kv_cache_reserved": 8192,
                "shared_prompts": 5,
                "prefix_hits": 3,
                "prefix_tokens_reused": 36,
                "prefix_cache_tokens": 120,
                "dtype": "bfloat16",
                "threads": 2,
            },
        }
    )
    status = ServerStatus(
        url="http://127.0.0.1:1", pid=1, status="ready", models={"tiny": served}, snapshot_at=5.0
    )
    monkeypatch.setattr(api, "server_status", lambda **_: status)
    code, body = await call(jp_fetch, "GET", "status")
    assert code == 200
    doc = body["status"]["models"]["tiny"]
    assert doc["generation"] == {
        "running": 2,
        "queued": 1,
        "max_running": 16,
        "kv_cache_tokens": 32768,
        "kv_cache_reserved": 8192,
        "generated_tokens": 0,
        "cancelled": 0,
        "shared_prompts": 5,
        "prefix_hits": 3,
        "prefix_tokens_reused": 36,
        "prefix_cache_tokens": 120,
        "dtype": "bfloat16",
        "threads": 2,
        "kv_cache_use": 0.25,
    }
    assert doc["stats"]["tokens"] == 480
    assert doc["stats"]["ttft_p50_ms"] == pytest.approx(10 + 10 * 3 / 8)  # inside (10, 20] ms
    assert doc["stats"]["ttft_p99_ms"] == pytest.approx(10 + 10 * 7.9 / 8)
    assert doc["stats"]["inter_token_p99_ms"] == pytest.approx(5 + 5 * (465.3 - 300) / 170)
    assert body["status"]["snapshot_at"] == 5.0


async def test_status_carries_the_drift_check_and_the_quality_line_of_each_version(
    jp_fetch: Fetch, km_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The panel shows ``status.quality`` as it comes: %monitor's line, written by the route from
    the snapshot's drift checks (the worker's side is tests/quality/test_drift_log.py's)."""
    from kernel_magics.records import DriftSummary, ModelState, ServerStatus

    check = DriftSummary("shop", 1, 5.0, 10_000, ("b", "d"), {"a": 0.02, "b": 0.42, "d": 0.3})
    status = ServerStatus(
        url="http://127.0.0.1:1",
        pid=1,
        status="ready",
        models={"shop": ModelState.from_wire({"name": "shop", "version": 1})},
        drift=(check,),
    )
    monkeypatch.setattr(api, "server_status", lambda **_: status)
    code, body = await call(jp_fetch, "GET", "status")
    assert code == 200
    assert body["status"]["quality"] == {
        "shop": ["v1 drift: b, d flagged (max PSI 0.42) over 10,000 rows"]
    }
    assert body["status"]["drift"] == [
        {
            "model": "shop",
            "version": 1,
            "time": 5.0,
            "rows": 10_000,
            "flagged": ["b", "d"],
            "psi": {"a": 0.02, "b": 0.42, "d": 0.3},
            "max_psi": 0.42,
        }
    ]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        (
            "POST",
            ("models", MODEL, "rollback"),
            {"to": "one"},
            400,
            "'to' must be a version number",
        ),
        ("POST", ("models", MODEL, "deploy"), {"version": True}, 400, "'version'"),
        ("POST", ("models", MODEL, "deploy"), "[1", 400, "JSON"),
        ("POST", ("models", MODEL, "deploy"), [1, 2], 400, "must be a JSON object"),
        ("POST", ("models", ".hidden", "undeploy"), None, 400, "invalid model name"),
        ("POST", ("models", ".hidden", "rollback"), None, 400, "invalid model name"),
        ("GET", ("history", ".hidden"), None, 400, "invalid model name"),
    ],
)
async def test_bad_requests_are_one_json_line_and_start_nothing(
    jp_fetch: Fetch, km_home: Path, method: str, path: tuple, body: Any, status: int, words: str
) -> None:
    sent = {} if body is None else {"body": body if isinstance(body, str) else json.dumps(body)}
    code, answer = await call(jp_fetch, method, *path, **sent)
    assert code == status, answer
    assert words in answer["error"]
    assert "\n" not in answer["error"]
    assert api.server_status() is None  # refused before anything started the process


async def test_models_lists_versions_with_the_metrics_the_table_shows(
    jp_fetch: Fetch, trained: str
) -> None:
    status, body = await call(jp_fetch, "GET", "models")
    assert status == 200
    (model,) = [m for m in body["models"] if m["name"] == trained]
    assert [v["version"] for v in model["versions"]] == [1, 2]
    assert model["live_version"] is None
    assert model["served_version"] is None
    for version in model["versions"]:
        assert set(version["key_metrics"]) == {"accuracy", "f1_macro"}
        assert version["key_metrics"]["accuracy"] == version["metrics"]["accuracy"]


async def test_history_answers_what_the_api_returns(jp_fetch: Fetch, trained: str) -> None:
    status, body = await call(jp_fetch, "GET", "history", trained)
    assert status == 200
    assert body == {"history": [e.to_wire() for e in api.history(trained)]}
    status, body = await call(jp_fetch, "GET", "history", "nope")
    assert status == 404
    assert "no registered model named 'nope'" in body["error"]
    assert MODEL in body["error"]  # the names that exist


async def test_models_carry_each_models_recent_history(jp_fetch: Fetch, trained: str) -> None:
    """One request per refresh: the panel draws the events from the models answer."""
    from kernel_magics.config import load_settings
    from kernel_magics.lab.handlers import RECENT_EVENTS
    from kernel_magics.serving.control.lifecycle import Lifecycle
    from kernel_magics.store import Store

    # the transitions as the inference process writes them, without starting one
    life = Lifecycle(load_settings(), Store(load_settings()))
    for version in (1, 2, 1, 2, 1, 2):
        life.commit(life.plan(trained, "deploy", str(version)))
    life.commit(life.plan(trained, "undeploy"))  # as the module's other tests expect it
    events = [e.to_wire() for e in api.history(trained)]
    assert len(events) == 7 > RECENT_EVENTS
    status, body = await call(jp_fetch, "GET", "models")
    assert status == 200
    (model,) = [m for m in body["models"] if m["name"] == trained]
    assert model["history"] == events[-RECENT_EVENTS:]
    assert model["history"][-1]["action"] == "undeploy"
