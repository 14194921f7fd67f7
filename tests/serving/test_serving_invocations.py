"""``/v1/models/{name}/invocations`` answers what the real ``mlflow models serve`` answers.

One ``mlflow models serve`` (≈7 s to start) runs for the whole module on the same model folder;
every request goes to both and the parsed JSON (or the status class, for errors) must agree.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import requests
from kit.mlflow_serve import MlflowServe
from kit.serving import MLP, Logged, auth, log_model, rows

from kernel_magics.config import Settings
from kernel_magics.targets.local import LocalTarget

X = rows(3, seed=21)
COLS = [str(i) for i in range(32)]


@pytest.fixture(scope="module")
def logged(settings: Settings) -> Logged:
    return log_model(settings, "parity", MLP(seed=3), rows(4, seed=20))


@pytest.fixture(scope="module")
def mlflow_url(
    logged: Logged, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[str]:
    server = MlflowServe(logged.path, tmp_path_factory.mktemp("mlflow-serve") / "serve.log")
    try:
        request.getfixturevalue("client")  # start ours while mlflow's starts
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ours(client: LocalTarget, logged: Logged) -> str:
    client.deploy("parity")
    return f"{client.url}/v1/models/parity/invocations"


def _json(body: object) -> bytes:
    return json.dumps(body).encode()


CASES: list[tuple[str, bytes, str]] = [
    ("split", _json({"dataframe_split": {"columns": COLS, "data": X.tolist()}}),
     "application/json"),
    ("split no columns", _json({"dataframe_split": {"data": X.tolist()}}), "application/json"),
    ("split index", _json({"dataframe_split": {"index": [5, 6, 7], "data": X.tolist()}}),
     "application/json"),
    ("split list column", _json({"dataframe_split": {"columns": ["x"], "data": [[r] for r in
                                 X.tolist()]}}), "application/json"),
    ("records", _json({"dataframe_records": [dict(zip(COLS, r, strict=True)) for r in
                                             X.tolist()]}), "application/json"),
    ("records missing value", _json({"dataframe_records": [dict(zip(COLS, r, strict=True)) for r
                                     in X.tolist()] + [{"0": 1.0}]}), "application/json"),
    ("instances", _json({"instances": X.tolist()}), "application/json"),
    ("inputs", _json({"inputs": X.tolist()}), "application/json"),
    ("inputs one row", _json({"inputs": X[:1].tolist()}), "application/json"),
    ("inputs ints", _json({"inputs": [[1] * 32, [2] * 32]}), "application/json"),
    ("inputs numeric strings", _json({"inputs": [["1.5"] * 32]}), "application/json"),
    ("inputs with params", _json({"inputs": X.tolist(), "params": {"a": 1}}), "application/json"),
    ("charset", _json({"inputs": X.tolist()}), "application/json; charset=utf-8"),
    ("NaN token", b'{"inputs": [[NaN' + b", 1" * 31 + b"]]}", "application/json"),
    ("csv", ("\n".join([",".join(COLS)] + [",".join(map(str, r)) for r in X.tolist()])).encode(),
     "text/csv"),
    ("wrong features", _json({"inputs": [[1.0] * 10]}), "application/json"),
    ("ragged", _json({"inputs": [[1.0] * 32, [1.0] * 31]}), "application/json"),
    ("strings", _json({"inputs": [["a"] * 32]}), "application/json"),
    ("empty", _json({"inputs": []}), "application/json"),
    ("empty split", _json({"dataframe_split": {"data": []}}), "application/json"),
    ("1-D", _json({"inputs": X[0].tolist()}), "application/json"),
    ("dict inputs", _json({"inputs": {"a": X.tolist()}}), "application/json"),
    ("two keys", _json({"inputs": X.tolist(), "instances": X.tolist()}), "application/json"),
    ("no key", _json({"foo": 1}), "application/json"),
    ("list body", b"[1, 2]", "application/json"),
    ("not json", b"{oops", "application/json"),
    ("records not list", _json({"dataframe_records": {"a": 1}}), "application/json"),
    ("split bad key", _json({"dataframe_split": {"data": [[1]], "x": 1}}), "application/json"),
    ("text/plain", _json({"inputs": X.tolist()}), "text/plain"),
    ("latin-1", _json({"inputs": X.tolist()}), "application/json; charset=latin-1"),
    ("odd parameter", _json({"inputs": X.tolist()}), "application/json; foo=bar"),
]  # fmt: skip


def _same(a: object, b: object) -> bool:
    """JSON equality where NaN equals NaN (MLflow emits NaN tokens)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and np.isnan(a) and np.isnan(b):
        return True
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_invocations_parity(case, mlflow_url, ours, client):
    _, body, ctype = case
    theirs = requests.post(f"{mlflow_url}/invocations", data=body,
                           headers={"Content-Type": ctype}, timeout=30)  # fmt: skip
    mine = requests.post(ours, data=body, headers={"Content-Type": ctype, **auth(client)},
                         timeout=30)  # fmt: skip
    assert mine.status_code // 100 == theirs.status_code // 100, (
        f"mlflow {theirs.status_code} {theirs.text[:300]} / ours {mine.status_code} {mine.text}"
    )
    assert mine.status_code < 500
    if theirs.status_code == 200:
        assert _same(json.loads(mine.text), json.loads(theirs.text)), (mine.text, theirs.text)
    else:
        assert mine.json()["error"]


def test_invocations_through_the_client(client, ours, logged):
    out = client.invocations("parity", {"inputs": X.tolist()})
    np.testing.assert_array_equal(np.asarray(out["predictions"], dtype=np.float32),
                                  logged.expected(X))  # fmt: skip
