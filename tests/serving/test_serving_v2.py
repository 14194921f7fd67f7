"""The Open Inference Protocol (KServe v2) on the real inference process: the request and
response shapes MLServer 1.7.1 documents (FACTS.md), health / ready / metadata, version paths,
malformed requests as 4xx JSON, and a KServe-style client built on ``requests`` alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from kit.serving import MLP, Logged, auth, log_model, rows
from kit.tensors import TOKENS, BagOfEmbeddings, inputs

from kernel_magics.config import Settings, load_settings
from kernel_magics.targets.local import LocalTarget


@pytest.fixture(scope="module")
def settings(km_home: Path) -> Settings:
    return load_settings(max_rows=64)


@pytest.fixture(scope="module")
def models(settings: Settings, client: LocalTarget) -> dict[str, Logged]:
    """A 2-D float model (two versions, v2 live) and an int64 token model."""
    mlp1 = log_model(settings, "mlp", MLP(seed=1).eval(), rows(4, seed=1))
    mlp2 = log_model(settings, "mlp", MLP(seed=2).eval(), rows(4, seed=2))
    tokens = log_model(settings, "tokens", BagOfEmbeddings().eval(), inputs("tokens", 3, seed=0))
    client.deploy("mlp", "1")
    client.deploy("mlp", "2")
    client.deploy("tokens")
    return {"mlp1": mlp1, "mlp": mlp2, "tokens": tokens}


@pytest.fixture(scope="module")
def http_(client: LocalTarget) -> requests.Session:
    s = requests.Session()
    s.headers.update(auth(client))
    return s


def tensor(x: np.ndarray, datatype: str, name: str = "input-0") -> dict:
    return {"name": name, "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}


def test_infer_float_model_matches_the_documented_exchange(
    client: LocalTarget, models: dict[str, Logged], http_: requests.Session
) -> None:
    X = rows(3, seed=7)
    r = http_.post(f"{client.url}/v2/models/mlp/infer", json={"inputs": [tensor(X, "FP32")]})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_name"] == "mlp"
    assert doc["model_version"] == "2"
    assert "id" not in doc
    (out,) = doc["outputs"]
    assert out["name"] == "output-0"
    assert out["datatype"] == "FP32"
    assert out["shape"] == [3, 10]
    assert len(out["data"]) == 30  # flat, row-major
    got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    np.testing.assert_allclose(got, models["mlp"].expected(X), atol=1e-6)
    assert r.headers["X-Model-Version"] == "2"


def test_nested_data_id_parameters_and_outputs_are_accepted(
    client: LocalTarget, models: dict[str, Logged], http_: requests.Session
) -> None:
    X = rows(2, seed=8)
    body = {
        "id": "req-42",
        "parameters": {"content_type": "np"},
        "inputs": [{**tensor(X, "FP64"), "data": X.astype(np.float64).tolist()}],
        "outputs": [{"name": "output-0"}],
    }
    r = http_.post(f"{client.url}/v2/models/mlp/versions/2/infer", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["id"] == "req-42"
    got = np.asarray(doc["outputs"][0]["data"], dtype=np.float32).reshape(2, 10)
    np.testing.assert_allclose(got, models["mlp"].expected(X), atol=1e-6)


def test_int64_token_model(
    client: LocalTarget, models: dict[str, Logged], http_: requests.Session
) -> None:
    X = inputs("tokens", 4, seed=3)
    r = http_.post(f"{client.url}/v2/models/tokens/infer", json={"inputs": [tensor(X, "INT64")]})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [4, 2]
    assert out["datatype"] == "FP32"
    with torch.no_grad():
        want = models["tokens"].model(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(np.asarray(out["data"]).reshape(4, 2), want, rtol=1e-5, atol=1e-6)


def test_health_server_and_model_metadata(
    client: LocalTarget, models: dict[str, Logged], http_: requests.Session
) -> None:
    base = client.url
    assert http_.get(f"{base}/v2/health/live").status_code == 200
    assert http_.get(f"{base}/v2/health/ready").json() == {"ready": True}
    server = http_.get(f"{base}/v2").json()
    assert server["name"] == "kernel-magics"
    assert "version" in server
    meta = http_.get(f"{base}/v2/models/tokens").json()
    assert meta["name"] == "tokens"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "pytorch"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "INT64", "shape": [-1, TOKENS]}]
    assert meta["outputs"][0]["name"] == "output-0"
    assert http_.get(f"{base}/v2/models/mlp/versions/2").json()["versions"] == ["2"]
    ready = http_.get(f"{base}/v2/models/mlp/ready")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert http_.get(f"{base}/v2/models/mlp/versions/2/ready").status_code == 200


def test_version_paths_other_than_the_served_one_are_404(
    client: LocalTarget, models: dict[str, Logged], http_: requests.Session
) -> None:
    base, X = client.url, rows(1)
    for url in (
        f"{base}/v2/models/mlp/versions/1/infer",
        f"{base}/v2/models/mlp/versions/1/ready",
        f"{base}/v2/models/mlp/versions/1",
    ):
        r = (
            http_.post(url, json={"inputs": [tensor(X, "FP32")]})
            if url.endswith("infer")
            else (http_.get(url))
        )
        assert r.status_code == 404, url
        assert "mlp v1 is not served" in r.json()["error"]
        assert "v2" in r.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("mlp", {"inputs": [{"name": "x", "shape": [1, 32], "datatype": "BYTES", "data": ["a"]}]},
         400, "unsupported datatype"),
        ("mlp", {"inputs": [{"name": "x", "shape": [2, 32], "datatype": "FP32",
                             "data": [0.0] * 32}]}, 400, "needs 64 values"),
        ("mlp", {"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32",
                             "data": [0.0] * 5}]}, 400, "32 features"),
        ("mlp", {"inputs": [{"name": "x", "shape": [1, 32], "datatype": "BOOL",
                             "data": [True] * 32}]}, 400, "float32"),
        ("tokens", {"inputs": [{"name": "x", "shape": [1, TOKENS], "datatype": "INT64",
                                "data": [0.5] * TOKENS}]}, 400, "INT64"),
        ("tokens", {"inputs": [{"name": "x", "shape": [1, TOKENS], "datatype": "FP32",
                                "data": [0.5] * TOKENS}]}, 400, "int64"),
        ("mlp", {"inputs": []}, 400, "non-empty"),
        ("mlp", {"inputs": [{"name": "x", "shape": [1, 32]}]}, 400, "missing datatype, data"),
        ("mlp", {"inputs": [{"name": "x", "shape": [1, 32], "datatype": "FP32",
                             "data": [0.0] * 32}], "outputs": [{"name": "probs"}]},
         400, "unknown output"),
        ("nope", {"inputs": []}, 404, "nope"),
    ],
)  # fmt: skip
def test_malformed_requests_are_4xx_json(
    client: LocalTarget,
    models: dict[str, Logged],
    http_: requests.Session,
    path: str,
    body: dict,
    status: int,
    words: str,
) -> None:
    r = http_.post(f"{client.url}/v2/models/{path}/infer", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_not_json_and_no_token(client: LocalTarget, models: dict[str, Logged]) -> None:
    url = f"{client.url}/v2/models/mlp/infer"
    r = requests.post(url, data=b"{", headers={**auth(client), "Content-Type": "application/json"})
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["error"]
    r = requests.post(url, data=b"x", headers={**auth(client), "Content-Type": "text/plain"})
    assert r.status_code == 415
    assert requests.post(url, json={"inputs": []}).status_code == 401  # same token rule


class KServeClient:
    """What a KServe v2 REST client does, with ``requests`` only (no kernel-magics code)."""

    def __init__(self, base: str, token: str):
        self.base, self.headers = base, {"Authorization": f"Bearer {token}"}

    def ready(self, model: str) -> bool:
        live = requests.get(f"{self.base}/v2/health/live", headers=self.headers, timeout=5)
        r = requests.get(f"{self.base}/v2/models/{model}/ready", headers=self.headers, timeout=5)
        return live.ok and r.ok

    def infer(self, model: str, x: np.ndarray) -> np.ndarray:
        meta = requests.get(f"{self.base}/v2/models/{model}", headers=self.headers, timeout=5)
        spec = meta.json()["inputs"][0]
        body = {"inputs": [tensor(x, spec["datatype"], spec["name"])]}
        r = requests.post(
            f"{self.base}/v2/models/{model}/infer", json=body, headers=self.headers, timeout=5
        )
        r.raise_for_status()
        out = r.json()["outputs"][0]
        return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def test_a_kserve_style_client_works_unchanged(
    client: LocalTarget, models: dict[str, Logged]
) -> None:
    kc = KServeClient(client.url or "", client.token())
    assert kc.ready("mlp")
    X = rows(5, seed=9)
    # float32 sums may differ in the last bit between batch layouts: compare to 1e-6
    np.testing.assert_allclose(kc.infer("mlp", X), models["mlp"].expected(X), atol=1e-6)


def test_v2_requests_are_metered_like_predict(
    client: LocalTarget, models: dict[str, Logged], http_: requests.Session
) -> None:
    def count() -> float:
        text = http_.get(f"{client.url}/metrics").text
        for line in text.splitlines():
            if line.startswith("km_requests_total{") and 'model="tokens"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = count()
    X = inputs("tokens", 2, seed=4)
    for _ in range(3):
        r = http_.post(
            f"{client.url}/v2/models/tokens/infer", json={"inputs": [tensor(X, "INT64")]}
        )
        assert r.status_code == 200
    assert count() == before + 3


def test_openapi_documents_each_models_v2_routes(
    client: LocalTarget, models: dict[str, Logged], http_: requests.Session
) -> None:
    paths = http_.get(f"{client.url}/openapi.json").json()["paths"]
    infer = paths["/v2/models/tokens/infer"]["post"]
    tensor = infer["requestBody"]["content"]["application/json"]["schema"]["properties"]["inputs"]
    assert tensor["items"]["properties"]["datatype"]["enum"] == ["INT64"]
    assert tensor["items"]["properties"]["shape"]["minItems"] == 2
    assert {"/v2/models/mlp/infer", "/v2/models/mlp", "/v2/models/mlp/ready"} <= set(paths)
