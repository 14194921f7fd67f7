"""``/invocations`` on tensor-signature models of rank 4 and int64 / bool inputs answers what the
real ``mlflow models serve`` answers (``{"inputs"}`` / ``{"instances"}`` → ``{"predictions"}``,
MLflow's casts included). One ``mlflow models serve`` per model, started together."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from kit.mlflow_serve import MlflowServe
from kit.serving import Logged, auth, log_model
from kit.tensors import MODELS, TOKENS, inputs

from kernel_magics.config import Settings, load_settings

PARITY = ("conv", "tokens", "mask")


@pytest.fixture(scope="module")
def settings(km_home: Path) -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def logged(settings: Settings) -> dict[str, Logged]:
    return {
        name: log_model(
            settings, name, MODELS[name][0]().eval(), inputs(name, 3, 0), MODELS[name][1]
        )
        for name in PARITY
    }


@pytest.fixture(scope="module")
def theirs(
    logged: dict[str, Logged],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[dict[str, str]]:
    """name → the /invocations URL of ``mlflow models serve`` on that version's folder."""
    logs = tmp_path_factory.mktemp("mlflow-serve")
    servers = {name: MlflowServe(logged[name].path, logs / f"{name}.log") for name in PARITY}
    try:
        client = request.getfixturevalue("client")  # start ours while mlflow's start
        for name in PARITY:
            client.deploy(name)
        yield {name: f"{server.wait_ready()}/invocations" for name, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()


def _body(value: object) -> bytes:
    return json.dumps(value).encode()


def _cases() -> list[tuple[str, str, bytes]]:
    image, ids, mask = inputs("conv", 3, 5), inputs("tokens", 3, 5), inputs("mask", 3, 5)
    return [
        ("conv", "inputs", _body({"inputs": image.tolist()})),
        ("conv", "instances", _body({"instances": image.tolist()})),
        ("conv", "one row", _body({"inputs": image[:1].tolist()})),
        ("conv", "float64 digits", _body({"inputs": image.astype(np.float64).tolist()})),
        ("conv", "ints", _body({"inputs": np.ones((1, 1, 8, 8), int).tolist()})),
        ("conv", "trailing shape", _body({"inputs": np.zeros((1, 1, 8, 7)).tolist()})),
        ("conv", "rank", _body({"inputs": np.zeros((2, 64)).tolist()})),
        ("conv", "strings", _body({"inputs": [[[["a"] * 8] * 8]]})),
        ("conv", "split nested lists", _body({"dataframe_split": {"data": [[r] for r in
                                                                           image.tolist()]}})),
        ("conv", "split flat lists", _body({"dataframe_split": {"data": [[r.ravel().tolist()]
                                                                         for r in image]}})),
        ("tokens", "inputs", _body({"inputs": ids.tolist()})),
        ("tokens", "instances", _body({"instances": ids.tolist()})),
        ("tokens", "fractions", _body({"inputs": (ids + 0.4).tolist()})),  # MLflow truncates
        ("tokens", "strings", _body({"inputs": [["x"] * TOKENS]})),
        ("tokens", "numeric strings", _body({"inputs": [["3"] * TOKENS]})),
        ("tokens", "wrong length", _body({"inputs": [[1] * (TOKENS - 1)]})),
        ("tokens", "split", _body({"dataframe_split": {"data": ids.tolist()}})),
        ("mask", "inputs", _body({"inputs": mask.tolist()})),
        ("mask", "ints", _body({"inputs": mask.astype(int).tolist()})),  # cast to bool
        ("mask", "wrong length", _body({"inputs": [[True] * 5]})),
    ]  # fmt: skip


def _same(a: object, b: object) -> bool:
    """JSON equality where NaN equals NaN and floats agree to float32 precision."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b, rtol=1e-6, atol=1e-6, equal_nan=True))
    return a == b and type(a) is type(b)


@pytest.mark.parametrize(
    ("name", "case", "body"), _cases(), ids=[f"{c[0]}-{c[1]}" for c in _cases()]
)
def test_tensor_invocations_parity(client, theirs, name, case, body):
    headers = {"Content-Type": "application/json"}
    their = requests.post(theirs[name], data=body, headers=headers, timeout=30)
    mine = requests.post(
        f"{client.url}/v1/models/{name}/invocations",
        data=body,
        headers={**headers, **auth(client)},
        timeout=30,
    )
    assert mine.status_code // 100 == their.status_code // 100, (
        f"mlflow {their.status_code} {their.text[:300]} / ours {mine.status_code} {mine.text}"
    )
    if their.status_code == 200:
        assert _same(mine.json(), their.json()), (mine.text[:500], their.text[:500])
    else:
        assert mine.status_code < 500
        assert mine.json()["error"]
