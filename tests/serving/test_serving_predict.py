"""Predictions through the real supervisor and worker: exactness, batching, bad input, auth,
metrics, HTTP details (keep-alive, pipelining, chunked bodies)."""

from __future__ import annotations

import http.client
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from kit.prometheus import series
from kit.serving import MLP, Logged, assert_served, auth, log_model, raw_http, rows
from prometheus_client.parser import text_string_to_metric_families

from kernel_magics.config import Settings, load_settings
from kernel_magics.errors import InvalidInput, NotFound
from kernel_magics.targets.local import LocalTarget

MAX_ROWS = 1000
MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def settings(km_home: Path) -> Settings:
    # Small limits so the 413 cases need small bodies.
    return load_settings(max_rows=MAX_ROWS, max_body_bytes=MAX_BODY)


@pytest.fixture(scope="module")
def mlp(settings: Settings, client: LocalTarget) -> Logged:
    logged = log_model(settings, "mlp", MLP(seed=1), rows(4))
    client.deploy("mlp")
    return logged


@pytest.fixture(scope="module")
def http_(client: LocalTarget) -> requests.Session:
    s = requests.Session()
    s.headers.update(auth(client))
    return s


def predict_url(client: LocalTarget, name: str = "mlp") -> str:
    return f"{client.url}/v1/models/{name}:predict"


def test_predict_json_equals_in_process(client, mlp, http_):
    X = rows(5, seed=11)
    for key in ("instances", "inputs"):
        r = http_.post(predict_url(client), json={key: X.tolist()})
        assert r.status_code == 200, r.text
        assert r.headers["X-Model-Version"] == str(mlp.version)
        assert r.headers["X-Model-Name"] == "mlp"
        got = np.asarray(r.json()["predictions"], dtype=np.float32)
        assert_served(got, mlp.expected(X))
        with torch.no_grad():
            eager = mlp.model(torch.from_numpy(X)).numpy()
        np.testing.assert_allclose(got, eager, rtol=1e-5, atol=1e-6)


def test_predict_npy_is_exact(client, mlp, http_):
    X = rows(300, seed=12)
    out, version = client.predict("mlp", X)
    assert version == mlp.version
    assert_served(out, mlp.expected(X))
    # JSON in, .npy out on request
    r = http_.post(
        predict_url(client),
        json={"instances": X[:3].tolist()},
        headers={"Accept": "application/x-npy"},
    )
    assert r.headers["Content-Type"] == "application/x-npy"
    np.testing.assert_array_equal(
        np.load(io.BytesIO(r.content), allow_pickle=False), mlp.expected(X[:3])
    )
    # float64 and Fortran-ordered arrays are cast, not refused
    out64, _ = client.predict("mlp", np.asfortranarray(X[:7].astype(np.float64)))
    assert_served(out64, mlp.expected(X[:7]))


def test_concurrent_requests_are_batched_and_each_gets_its_rows(settings, client, mlp):
    batched = log_model(settings, "batched", MLP(seed=2), rows(4))
    # A long wait makes batches fill deterministically, whatever the machine's speed.
    client.deploy("batched", max_wait_ms=20, max_batch_size=64)
    assert client.model("batched").max_wait_ms == 20
    X = rows(160, seed=13)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    host, port = client.url.split("//")[1].split(":")
    headers = {"Content-Type": "application/json", **auth(client)}

    def hammer(start: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            for i in range(start, len(X), 16):
                body = json.dumps({"instances": X[i : i + 1].tolist()})
                conn.request("POST", "/v1/models/batched:predict", body, headers)
                resp = conn.getresponse()
                data = resp.read()
                assert resp.status == 200, data
                results[i] = np.asarray(json.loads(data)["predictions"][0], dtype=np.float32)
        except BaseException as err:  # surfaced below
            errors.append(err)
        finally:
            conn.close()

    threads = [threading.Thread(target=hammer, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert len(results) == len(X)
    # Each request got exactly its own row back: equal to that row forwarded alone.
    for i, got in results.items():
        np.testing.assert_allclose(got, batched.expected(X[i : i + 1])[0], rtol=1e-5, atol=1e-6)
    text = requests.get(f"{client.url}/metrics", headers=auth(client)).text
    forwarded = series(text, "km_batch_size_sum", model="batched")
    assert forwarded == len(X)
    assert series(text, "km_batch_size_count", model="batched") < forwarded, "no batch of 2 rows"


BAD_INPUTS = [
    ("not json", b"{not json", "application/json", 400, "not valid JSON"),
    ("no key", b'{"foo": [[1]]}', "application/json", 400, '"instances" or "inputs"'),
    ("list body", b"[[1, 2]]", "application/json", 400, "JSON object"),
    ("extra key", b'{"inputs": [[1]], "x": 1}', "application/json", 400, "unknown key"),
    ("both keys", b'{"inputs": [[1]], "instances": [[1]]}', "application/json", 400, "exactly one"),
    ("ragged", b'{"instances": [[1, 2], [1]]}', "application/json", 400, "same length"),
    (
        "features",
        b'{"instances": [[%s]]}' % b",".join([b"1.0"] * 10),
        "application/json",
        400,
        "expected rows of 32 features, got 10",
    ),
    (
        "strings",
        b'{"instances": [[%s]]}' % b",".join([b'"a"'] * 32),
        "application/json",
        400,
        "non-numeric",
    ),
    (
        "nulls",
        b'{"instances": [[%s]]}' % b",".join([b"null"] * 32),
        "application/json",
        400,
        "non-numeric",
    ),
    (
        "overflow",
        b'{"instances": [[%s]]}' % b",".join([b"1e39"] * 32),
        "application/json",
        400,
        "NaN or infinity",
    ),
    ("empty", b'{"instances": []}', "application/json", 400, "empty batch"),
    (
        "one row flat",
        b'{"instances": [%s]}' % b",".join([b"1"] * 32),
        "application/json",
        400,
        "single row",
    ),
    ("content type", b'{"instances": [[1]]}', "text/plain", 415, "Content-Type"),
    ("bad npy", b"\x93NUMPY\x01\x00garbage", "application/x-npy", 400, ".npy"),
    ("not npy", b"hello", "application/x-npy", 400, ".npy"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_4xx_and_the_process_keeps_serving(client, mlp, http_, case):
    _, body, ctype, status, fragment = case
    r = http_.post(predict_url(client), data=body, headers={"Content-Type": ctype})
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]
    ok = http_.post(predict_url(client), json={"instances": rows(1).tolist()})
    assert ok.status_code == 200


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def test_too_many_rows_is_413_on_every_route(client, mlp, http_):
    """One row limit, one status: :predict, /invocations and v2 refuse with 413 alike."""
    X = rows(MAX_ROWS + 1)
    v2_body = {
        "inputs": [
            {
                "name": "input-0",
                "shape": list(X.shape),
                "datatype": "FP32",
                "data": X.ravel().tolist(),
            }
        ]
    }
    routes = [
        (predict_url(client), {"instances": X.tolist()}),
        (f"{client.url}/v1/models/mlp/invocations", {"inputs": X.tolist()}),
        (f"{client.url}/v2/models/mlp/infer", v2_body),
    ]
    for url, body in routes:
        r = http_.post(url, json=body)
        assert r.status_code == 413, (url, r.text)
        assert (
            r.json()["error"]
            == f"{MAX_ROWS + 1} rows is over the limit of {MAX_ROWS} rows per request"
        )
    assert http_.post(predict_url(client), json={"instances": rows(2).tolist()}).status_code == 200


def test_npy_limits_and_nan(client, mlp, http_):
    h = {"Content-Type": "application/x-npy"}
    nan = rows(2)
    nan[1, 3] = np.nan
    r = http_.post(predict_url(client), data=npy_bytes(nan), headers=h)
    assert (r.status_code, r.json()["error"]) == (400, "input contains NaN or infinity")
    r = http_.post(predict_url(client), data=npy_bytes(rows(MAX_ROWS + 1)), headers=h)
    assert r.status_code == 413
    assert "rows" in r.json()["error"]
    r = http_.post(predict_url(client), data=b"x" * (MAX_BODY + 1), headers=h)
    assert r.status_code == 413
    assert "limit" in r.json()["error"]
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    r = http_.post(predict_url(client), data=obj.getvalue(), headers=h)
    assert r.status_code == 400
    assert "not numeric" in r.json()["error"]
    with pytest.raises(InvalidInput, match="expected rows of 32 features, got 3"):
        client.predict("mlp", rows(2, features=3))
    with pytest.raises(NotFound, match=r"no deployed model named 'nope' \(deployed: .*mlp"):
        client.predict("nope", rows(2))


def test_routes_methods_and_tokens(client, mlp):
    url = client.url
    assert requests.get(f"{url}/v1/models/nope:predict").status_code == 405
    # an unknown verb is no route (404), not a method to change (405)
    r = requests.post(f"{url}/v1/models/mlp:generate", json={"instances": [[1.0]]})
    assert r.status_code == 404
    assert r.json()["error"].startswith("unknown verb 'generate'")
    assert ":predict" in r.json()["error"]
    assert requests.get(f"{url}/nothing/here").status_code == 404
    assert requests.post(f"{url}/health").status_code == 405
    r = requests.post(f"{url}/v1/models/mlp:predict", json={"instances": rows(1).tolist()})
    assert r.status_code == 401
    assert "token" in r.json()["error"]
    r = requests.post(
        f"{url}/v1/models/mlp:predict",
        json={"instances": rows(1).tolist()},
        headers={"Authorization": "Bearer wrong"},
    )
    assert r.status_code == 401
    assert requests.post(f"{url}/v1/models/mlp/deploy", json={}).status_code == 401
    assert requests.post(f"{url}/v1/models/mlp/undeploy").status_code == 401
    assert requests.get(f"{url}/ping").status_code == 200
    health = requests.get(f"{url}/health").json()
    assert health["status"] == "ok"
    assert health["models"]["mlp"] == mlp.version
    doc = requests.get(f"{url}/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert "/v1/models/{name}:predict" in doc["paths"]
    # Each live model gets concrete paths with its exact row shape.
    body = doc["paths"]["/v1/models/mlp:predict"]["post"]["requestBody"]
    row = body["content"]["application/json"]["schema"]["oneOf"][0]["properties"]["instances"]
    assert row["items"]["minItems"] == row["items"]["maxItems"] == 32
    r = requests.post(
        f"{url}/v1/models/nope:predict", json={"instances": [[1]]}, headers=auth(client)
    )
    error = r.json()["error"]
    assert r.status_code == 404
    assert error.startswith("no deployed model named 'nope' (deployed:")


def test_model_listing(client, mlp):
    info = client.model("mlp")
    assert info.version == mlp.version
    assert info.state == "live"
    assert info.input == {"dtype": "float32", "shape": [-1, 32]}
    assert info.format == "pt2"
    assert info.fast_path is True
    assert info.history[-1].to_version == mlp.version
    names = [m.name for m in client.models()]
    assert "mlp" in names
    status = client.status()
    assert status.status == "ready"
    assert status.models["mlp"].version == mlp.version


def test_metrics_parse(client, mlp, http_):
    http_.post(predict_url(client), json={"instances": rows(3).tolist()})
    text = requests.get(f"{client.url}/metrics", headers=auth(client)).text
    names = {fam.name for fam in text_string_to_metric_families(text)}
    assert {
        "km_requests",
        "km_request_errors",
        "km_request_latency_seconds",
        "km_batch_size",
        "km_queue_depth",
    } <= names


def test_keepalive_pipelining_and_chunked(client, mlp):
    port = int(client.url.rsplit(":", 1)[1])
    token = client.token().encode()
    body = b'{"instances": [[%s]]}' % b",".join([b"0.5"] * 32)
    one = (
        b"POST /v1/models/mlp:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (token, len(body), body)
    )
    last = one.replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n")
    answer = raw_http(port, one + b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n" + one + last)
    assert answer.count(b"HTTP/1.1 200 OK") == 4
    assert answer.index(b"pong") < answer.rindex(b"predictions")
    chunked = (
        b"POST /v1/models/mlp:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b"\r\nAuthorization: Bearer %s\r\nTransfer-Encoding: chunked\r\nConnection: close"
        b"\r\n\r\n" % token
    )
    half = len(body) // 2
    for part in (body[:half], body[half:]):
        chunked += b"%x\r\n%s\r\n" % (len(part), part)
    answer = raw_http(port, chunked + b"0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"predictions" in answer
    assert raw_http(port, b"GARBAGE\r\n\r\n").startswith(b"HTTP/1.1 400")
    # The process still serves after all that.
    assert requests.get(f"{client.url}/ping").status_code == 200


def test_client_reattaches_from_another_instance(settings, client, mlp):
    other = LocalTarget(load_settings())
    assert other.url == client.url
    assert other.ensure_running() == client.url
    out, version = other.predict("mlp", rows(2))
    assert version == mlp.version
    assert out.shape == (2, 10)
