"""The inference process's Open Inference Protocol (KServe v2) answers beside MLServer's for the
same MLflow model folder: ``make test-mlserver``, not part of ``make test``.

MLServer 1.7.1 and mlserver-mlflow 1.7.1 run from a virtual env of their own
(``.venv-mlserver``, or ``$MLSERVER_VENV``): they pin fastapi < 0.116, starlette and
protobuf < 7, below what this project's env holds. Without that env the tests fail saying how
to get it.
A digits-shaped MLP (64 → 32 → 10, trained a few epochs on scikit-learn's digits) is registered
with ``api.register`` in a throwaway home and served twice: by the inference process
(``api.deploy``) and by ``mlserver start`` with ``mlserver_mlflow.MLflowRuntime`` on the
version's MLflow model folder. Both listen on 127.0.0.1 only (MLServer's gRPC port, which 1.7.1
cannot turn off, on a free loopback port; its metrics server off; inference in its main process).
MLServer is stopped by its process group at the end.

The same v2 requests go to both. They must agree on: the outputs of ``infer`` (data within
1e-5, shape, datatype) for one row and several rows, flat or nested data, through
``/v2/models/NAME`` and ``/v2/models/NAME/versions/1``; ``model_name``, ``model_version`` and a
request's ``id``; the model metadata's ``name`` and its input and output tensors (datatype,
shape) and input name; readiness (200 on ``/v2/health/live|ready``, ``/v2/models/NAME/ready``);
a 404 for an unknown model or version; a 4xx for a body that is not JSON or a tensor without
``datatype``/``data``.

Where they differ (measured with MLServer 1.7.1, mlserver-mlflow 1.7.1, MLflow 3.17):

- output name: kernel-magics says ``output-0`` in metadata and in ``infer``; MLServer's
  metadata says ``output-0`` but its ``infer`` answers ``output-1``.
- MLServer adds ``"parameters": {"content_type": "np"}`` to the response, to each output and to
  the metadata's tensors, and makes up an ``id`` (a UUID) for a request without one;
  kernel-magics answers an ``id`` only when the request gave one.
- model metadata: MLServer's ``versions`` is ``[]`` and ``platform`` ``""``; kernel-magics
  gives the served version (``["1"]``) and ``"pytorch"``.
- ``/v2/health/ready`` and ``/v2/models/NAME/ready``: MLServer answers 200 with an empty body,
  kernel-magics ``{"ready": true}``. ``GET /v2`` names each server.
- request errors: a body that is not JSON, or a tensor without ``datatype``/``data``:
  kernel-magics 400 ``{"error": ...}``, MLServer 422 (FastAPI's ``{"detail": [...]}``). A
  tensor whose data do not fill its shape, one with 5 features instead of 64, or a BYTES
  tensor: kernel-magics 400 saying why, MLServer 500 ``Internal Server Error`` (numpy's
  reshape error or MLflow's schema check, raised through). An FP64 tensor for this FP32 model:
  kernel-magics converts it (the same outputs as FP32), MLServer 500 (MLflow's schema check:
  ``dtype of input float64 does not match expected dtype float32``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch

from kernel_magics import api
from kernel_magics.config import Settings, load_settings
from kernel_magics.store import Store

NAME = "digits"
ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("MLSERVER_VENV", ROOT / ".venv-mlserver"))
MLSERVER = VENV / "bin" / "mlserver"
ATOL = 1e-5


@dataclass
class Server:
    name: str
    base: str
    http: requests.Session

    def get(self, path: str) -> requests.Response:
        return self.http.get(self.base + path, timeout=30)

    def post(self, path: str, body: Any) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        return self.http.post(self.base + path, data=data, headers=headers, timeout=30)


def session(**headers: str) -> requests.Session:
    """A connection per request: uvicorn (MLServer) closes an idle one after 5 s, and a request
    sent on it as it closes is reset."""
    http = requests.Session()
    http.headers.update({"Connection": "close", **headers})
    return http


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tensor(x: np.ndarray, datatype: str = "FP32", nested: bool = False) -> dict:
    data = x.tolist() if nested else x.ravel().tolist()
    return {"name": "input-0", "shape": list(x.shape), "datatype": datatype, "data": data}


@pytest.fixture(scope="module")
def settings(km_home: Path) -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def model_dir(settings: Settings, digits: tuple[np.ndarray, np.ndarray]) -> Path:
    """A digits MLP registered through the public API; the folder of its MLflow model."""
    X, y = digits
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(Xt), yt).backward()
        opt.step()
    r = api.register(net.eval(), X[:4], name=NAME, task="classification", settings=settings)
    assert r.version == 1
    assert r.format == "pt2"
    store = Store(settings)
    return Path(store.local_path(store.resolve(NAME, r.version)))


@pytest.fixture(scope="module")
def ours(settings: Settings, model_dir: Path) -> Server:
    """The inference process (stopped by km_home's clean-up, by PID)."""
    api.deploy(NAME, settings=settings)
    status = api.server_status(settings=settings)
    assert status is not None
    assert status.url
    assert "127.0.0.1" in status.url
    http = session(Authorization=f"Bearer {api.server_token(settings=settings)}")
    return Server("kernel-magics", status.url.rstrip("/"), http)


@pytest.fixture(scope="module")
def theirs(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``mlserver start`` on the same model folder, in its own process group."""
    if not MLSERVER.is_file():
        raise RuntimeError(
            f"no {MLSERVER}: run `make test-mlserver`, which installs MLServer 1.7.1 in its own env"
        )
    repo = tmp_path_factory.mktemp("mlserver")
    port = free_port()
    server = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_endpoint": None,
        "parallel_workers": 0,
        "debug": False,
    }
    model = {
        "name": NAME,
        "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": str(model_dir), "version": "1"},
    }
    (repo / "settings.json").write_text(json.dumps(server))
    (repo / NAME).mkdir()
    (repo / NAME / "model-settings.json").write_text(json.dumps(model))
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLSERVER_", "MLFLOW_", "PYTHON", "VIRTUAL_ENV"))
    }
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    log = repo / "mlserver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(MLSERVER), "start", str(repo)],
            cwd=repo,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlserver exited ({proc.returncode}):\n{log.read_text()[-4000:]}")
            try:
                if requests.get(f"{base}/v2/models/{NAME}/ready", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlserver not ready in 180 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield Server("mlserver", base, session())
    finally:
        _stop_group(proc)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)  # its own session: the group is MLServer and its children
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.poll()


def outputs(r: requests.Response) -> tuple[dict, np.ndarray]:
    assert r.status_code == 200, r.text
    doc = r.json()
    assert len(doc["outputs"]) == 1, doc
    out = doc["outputs"][0]
    return doc, np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


# -- what must match ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/models/digits/ready",
                                  "/models/digits/versions/1/ready"])  # fmt: skip
def test_live_and_ready(ours: Server, theirs: Server, path: str) -> None:
    assert ours.get("/v2" + path).status_code == 200
    assert theirs.get("/v2" + path).status_code == 200


@pytest.mark.parametrize(
    ("rows", "nested", "path"),
    [
        (1, False, "/v2/models/digits/infer"),
        (7, False, "/v2/models/digits/infer"),
        (64, False, "/v2/models/digits/versions/1/infer"),
        (3, True, "/v2/models/digits/infer"),
    ],
)
def test_infer_outputs_match(
    ours: Server,
    theirs: Server,
    digits: tuple[np.ndarray, np.ndarray],
    rows: int,
    nested: bool,
    path: str,
) -> None:
    X = digits[0][100 : 100 + rows]
    body = {"id": f"rows-{rows}", "inputs": [tensor(X, nested=nested)]}
    mine, got = outputs(ours.post(path, body))
    other, want = outputs(theirs.post(path, body))
    for key in ("model_name", "model_version", "id"):
        assert mine[key] == other[key], key
    assert mine["model_name"] == NAME
    assert mine["model_version"] == "1"
    a, b = mine["outputs"][0], other["outputs"][0]
    assert a["shape"] == b["shape"] == [rows, 10]
    assert a["datatype"] == b["datatype"] == "FP32"
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL)
    assert (got.argmax(1) == want.argmax(1)).all()
    # by design: the output's name and MLServer's content-type parameters
    assert a["name"] == "output-0"
    assert b["name"] == "output-1"
    assert "parameters" not in a
    assert b["parameters"] == {"content_type": "np"}


def test_model_metadata(ours: Server, theirs: Server) -> None:
    a, b = ours.get("/v2/models/digits"), theirs.get("/v2/models/digits")
    assert a.status_code == b.status_code == 200
    mine, other = a.json(), b.json()
    assert mine["name"] == other["name"] == NAME
    for key in ("inputs", "outputs"):
        assert len(mine[key]) == len(other[key]) == 1
        x, y = mine[key][0], other[key][0]
        assert (x["datatype"], x["shape"]) == (y["datatype"], y["shape"]), key
    assert mine["inputs"][0]["name"] == other["inputs"][0]["name"] == "input-0"
    assert mine["outputs"][0]["shape"] == [-1, 10]
    assert mine["inputs"][0]["shape"] == [-1, 64]
    # by design: versions and platform
    assert (mine["versions"], mine["platform"]) == (["1"], "pytorch")
    assert (other["versions"], other["platform"]) == ([], "")
    assert theirs.get("/v2/models/digits/versions/1").json()["inputs"] == other["inputs"]
    assert ours.get("/v2/models/digits/versions/1").json()["inputs"] == mine["inputs"]


def test_server_metadata(ours: Server, theirs: Server) -> None:
    mine, other = ours.get("/v2").json(), theirs.get("/v2").json()
    assert {"name", "version", "extensions"} <= mine.keys() & other.keys()
    assert (mine["name"], other["name"]) == ("kernel-magics", "mlserver")


X1 = [0.5] * 64
BAD = {
    "unknown model": ("/v2/models/nope/infer", {"inputs": [{"name": "input-0", "shape": [1, 64],
                      "datatype": "FP32", "data": X1}]}, 404, 404),
    "unknown version": ("/v2/models/digits/versions/9/infer", {"inputs": [{"name": "input-0",
                        "shape": [1, 64], "datatype": "FP32", "data": X1}]}, 404, 404),
    "not JSON": ("/v2/models/digits/infer", b"{", 400, 422),
    "no datatype, data": ("/v2/models/digits/infer",
                          {"inputs": [{"name": "input-0", "shape": [1, 64]}]}, 400, 422),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_are_4xx_on_both(ours: Server, theirs: Server, case: str) -> None:
    path, body, mine, other = BAD[case]
    a, b = ours.post(path, body), theirs.post(path, body)
    assert (a.status_code, b.status_code) == (mine, other), (a.text, b.text)
    assert "error" in a.json()


# -- where MLServer answers 500 -----------------------------------------------------------------
MLSERVER_500 = {
    "data do not fill the shape": ({"name": "input-0", "shape": [2, 64], "datatype": "FP32",
                                    "data": X1}, "needs 128 values"),
    "5 features": ({"name": "input-0", "shape": [1, 5], "datatype": "FP32",
                    "data": [0.5] * 5}, "64 features"),
    "BYTES": ({"name": "input-0", "shape": [1, 1], "datatype": "BYTES", "data": ["a"]},
              "unsupported datatype"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MLSERVER_500))
def test_invalid_tensors_400_here_500_on_mlserver(ours: Server, theirs: Server, case: str) -> None:
    t, words = MLSERVER_500[case]
    a = ours.post("/v2/models/digits/infer", {"inputs": [t]})
    b = theirs.post("/v2/models/digits/infer", {"inputs": [t]})
    assert a.status_code == 400, a.text
    assert words in a.json()["error"], a.text
    assert b.status_code == 500, b.text


def test_fp64_converted_here_refused_by_mlserver(
    ours: Server, theirs: Server, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    X = digits[0][:2]
    _, as64 = outputs(ours.post("/v2/models/digits/infer", {"inputs": [tensor(X, "FP64")]}))
    _, want = outputs(theirs.post("/v2/models/digits/infer", {"inputs": [tensor(X)]}))
    np.testing.assert_allclose(as64, want, rtol=0, atol=ATOL)
    b = theirs.post("/v2/models/digits/infer", {"inputs": [tensor(X, "FP64")]})
    assert b.status_code == 500, b.text
