"""Any model on the real inference process: tensors of any rank and float32 / int64 / bool
inputs, over JSON and .npy, compared with the eval-mode model in this process; inputs that do
not fit are 400s naming the expected dtype and shape, and never disturb their neighbours."""

from __future__ import annotations

import concurrent.futures
import io
import json
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from kit.prometheus import series
from kit.serving import Logged, auth, log_model
from kit.tensors import MODELS, TOKENS, TinyEncoder, TinyGRU, inputs, token_rows

from kernel_magics.config import Settings, load_settings
from kernel_magics.registration import register_version
from kernel_magics.serving.process.cleanup import state_pids
from kernel_magics.store import Store
from kernel_magics.targets.local import LocalTarget

MAX_ROWS = 64
NPY = "application/x-npy"


@pytest.fixture(scope="module")
def settings(km_home: Path) -> Settings:
    return load_settings(max_rows=MAX_ROWS)


@pytest.fixture(scope="module")
def deployed(settings: Settings, client: LocalTarget) -> dict[str, Logged]:
    """Every model registered (example of 3 rows) and deployed; conv batches requests that
    arrive within 50 ms of each other."""
    logged = {}
    for name, (cls, task) in MODELS.items():
        logged[name] = log_model(settings, name, cls().eval(), inputs(name, 3, seed=0), task)
    for name in MODELS:
        options = {"max_wait_ms": 50, "max_batch_size": 64} if name == "conv" else {}
        client.deploy(name, **options)
    return logged


@pytest.fixture(scope="module")
def http_(client: LocalTarget) -> requests.Session:
    s = requests.Session()
    s.headers.update(auth(client))
    return s


def eager(logged: Logged, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return logged.model.eval()(torch.from_numpy(x)).numpy()


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def url(client: LocalTarget, name: str, route: str = ":predict") -> str:
    return f"{client.url}/v1/models/{name}{route}"


@pytest.mark.parametrize("name", list(MODELS))
def test_json_and_npy_answers_equal_the_eval_mode_model(client, deployed, http_, name):
    logged = deployed[name]
    x = inputs(name, 5, seed=1)
    want = eager(logged, x)
    for key in ("instances", "inputs"):
        r = http_.post(url(client, name), json={key: x.tolist()})
        assert r.status_code == 200, r.text
        assert r.headers["X-Model-Version"] == str(logged.version)
        got = np.asarray(r.json()["predictions"], dtype=np.float32)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    r = http_.post(url(client, name), data=npy_bytes(x), headers={"Content-Type": NPY})
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"] == NPY, r.text
    got = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert got.shape == want.shape
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    out, version = client.predict(name, x)  # the kernel side's client (npy both ways)
    assert version == logged.version
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_models_describe_their_tensor_spec_and_keep_the_fast_path(client, deployed, http_):
    specs = {name: http_.get(url(client, name, "")).json() for name in MODELS}
    assert specs["conv"]["input"] == {"dtype": "float32", "shape": [-1, 1, 8, 8]}
    assert specs["lstm"]["input"] == {"dtype": "float32", "shape": [-1, 7, 5]}
    assert specs["gru"]["output"] == {"dtype": "float32", "shape": [-1, 7, 4]}
    assert specs["tokens"]["input"] == {"dtype": "int64", "shape": [-1, TOKENS]}
    assert specs["mask"]["input"] == {"dtype": "bool", "shape": [-1, 6]}
    for spec in specs.values():
        # the 3-row example exported a free batch: no model is frozen at one batch size
        assert (spec["format"], spec["fast_path"], spec["fixed_batch"]) == ("pt2", True, None)


def test_token_ids_as_whole_floats_and_float64_images_are_cast(client, deployed, http_):
    ids = inputs("tokens", 2, seed=2)
    r = http_.post(url(client, "tokens"), json={"inputs": ids.astype(float).tolist()})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], eager(deployed["tokens"], ids), atol=1e-5)
    images = inputs("conv", 2, seed=2)
    r = http_.post(
        url(client, "conv"),
        data=npy_bytes(images.astype(np.float64)),
        headers={"Content-Type": NPY},
    )
    assert r.status_code == 200, r.text
    got = np.load(io.BytesIO(r.content))
    np.testing.assert_allclose(got, eager(deployed["conv"], images), rtol=1e-5, atol=1e-5)


TOKENS_EXPECTED = f"expected int64 values shaped (N, {TOKENS})"
BAD = [
    ("tokens", {"inputs": [[0.5] * TOKENS]}, TOKENS_EXPECTED),
    ("tokens", {"inputs": [["a"] * TOKENS]}, TOKENS_EXPECTED),
    ("tokens", {"inputs": [[2**63] * TOKENS]}, TOKENS_EXPECTED + "; got integers out of int64"),
    ("tokens", {"inputs": [[1] * (TOKENS + 1)]}, f"expected rows of {TOKENS} features, got 13"),
    ("mask", {"inputs": [[0.5] * 6]}, "expected bool values shaped (N, 6); got numbers"),
    ("mask", {"inputs": [[1, 0, 1, 0, 1, 0]]}, "expected bool values shaped (N, 6)"),
    ("conv", {"inputs": [[[[True] * 8] * 8]]}, "expected float32 values shaped (N, 1, 8, 8)"),
    ("conv", {"inputs": [[[[0.0] * 9] * 8]]}, "got rows shaped (1, 8, 9)"),
    ("conv", {"inputs": [[0.0] * 64]}, "expected a 4-D array of rows shaped (N, 1, 8, 8)"),
    ("lstm", {"inputs": [[[0.0] * 5] * 6]}, "expected float32 values shaped (N, 7, 5)"),
]


@pytest.mark.parametrize(("name", "body", "message"), BAD, ids=[f"{b[0]}-{i}" for i, b in
                                                              enumerate(BAD)])  # fmt: skip
def test_what_does_not_fit_is_a_400_naming_dtype_and_shape(settings, client, deployed, http_,
                                                           name, body, message):  # fmt: skip
    before = state_pids(settings.state_file)
    r = http_.post(
        url(client, name), data=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert message in r.json()["error"], r.json()
    x = inputs(name, 2, seed=3)
    ok = http_.post(url(client, name), json={"inputs": x.tolist()})
    assert ok.status_code == 200
    np.testing.assert_allclose(ok.json()["predictions"], eager(deployed[name], x), atol=1e-5)
    assert state_pids(settings.state_file) == before  # the same worker, still serving


def test_npy_of_the_wrong_dtype_or_shape_is_refused(client, deployed, http_):
    h = {"Content-Type": NPY}
    r = http_.post(url(client, "tokens"), data=npy_bytes(np.full((2, TOKENS), 0.5)), headers=h)
    assert r.status_code == 400
    assert TOKENS_EXPECTED in r.json()["error"]
    r = http_.post(url(client, "mask"), data=npy_bytes(np.ones((2, 6), np.int64)), headers=h)
    assert r.status_code == 400
    assert "expected bool values" in r.json()["error"]
    r = http_.post(
        url(client, "conv"), data=npy_bytes(np.ones((2, 1, 8, 7), np.float32)), headers=h
    )
    assert r.status_code == 400
    assert "got rows shaped (1, 8, 7)" in r.json()["error"]


def _batch_sizes(client: LocalTarget, model: str) -> tuple[float, float]:
    """(forwards, rows) the batcher ran for ``model`` so far."""
    text = requests.get(f"{client.url}/metrics", headers=auth(client)).text
    return (
        series(text, "km_batch_size_count", model=model),
        series(text, "km_batch_size_sum", model=model),
    )


def test_bad_requests_in_a_batch_window_leave_their_neighbours_alone(client, deployed):
    """conv waits 50 ms to fill a batch: good and bad requests sent together; the bad ones are
    refused at the check (before queueing), the good ones are batched and answered exactly."""
    headers = {"Content-Type": "application/json", **auth(client)}
    good = {i: inputs("conv", 1 + i % 3, seed=100 + i) for i in range(12)}
    bad = [
        {"inputs": [[[[0.0] * 7] * 8]]},  # trailing shape
        {"inputs": [[[["x"] * 8] * 8]]},  # strings
        {"inputs": [[[[True] * 8] * 8]]},  # booleans
        {"inputs": [[0.0] * 64]},  # rank
    ]
    forwards_before, rows_before = _batch_sizes(client, "conv")

    def send(body: dict) -> requests.Response:
        return requests.post(
            url(client, "conv"), data=json.dumps(body), headers=headers, timeout=30
        )

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        futures = {("good", i): pool.submit(send, {"inputs": x.tolist()}) for i, x in good.items()}
        futures.update({("bad", i): pool.submit(send, body) for i, body in enumerate(bad)})
        answers = {key: f.result() for key, f in futures.items()}
    for (kind, i), r in answers.items():
        if kind == "bad":
            assert r.status_code == 400, r.text
            assert r.json()["error"], r.text
            continue
        assert r.status_code == 200, r.text
        want = eager(deployed["conv"], good[i])
        np.testing.assert_allclose(r.json()["predictions"], want, rtol=1e-5, atol=1e-5)
    forwards, rows = _batch_sizes(client, "conv")
    assert rows - rows_before == sum(len(x) for x in good.values())  # no bad row reached it
    assert forwards - forwards_before < len(good), "no forward held more than one request"


def test_the_openapi_document_gives_each_model_its_exact_shape_and_dtype(client, deployed):
    paths = requests.get(f"{client.url}/openapi.json").json()["paths"]

    def row_schema(name: str) -> dict:
        body = paths[f"/v1/models/{name}:predict"]["post"]["requestBody"]
        alternatives = body["content"]["application/json"]["schema"]["oneOf"]
        (rows,) = [
            alt["properties"]["inputs"] for alt in alternatives if "inputs" in alt["required"]
        ]
        assert rows["maxItems"] == MAX_ROWS
        return rows["items"]

    conv = row_schema("conv")
    sizes = []
    while conv.get("type") == "array":
        sizes.append((conv["minItems"], conv["maxItems"]))
        conv = conv["items"]
    assert sizes == [(1, 1), (8, 8), (8, 8)]
    assert conv["type"] == "number"
    tokens = row_schema("tokens")
    assert tokens["items"] == {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
    assert row_schema("mask")["items"] == {"type": "boolean"}
    assert row_schema("gru")["items"]["items"]["type"] == "number"  # 7 × 5, two levels


def test_fuzzing_the_n_d_routes_finds_no_5xx(settings, client, deployed):
    """schemathesis builds requests from each model's concrete paths (its exact shape and
    dtype): valid bodies and edge values; never a 5xx, every 4xx a JSON error."""
    import schemathesis
    from test_serving_fuzz import _fuzz_operation

    before = state_pids(settings.state_file)
    schema = schemathesis.openapi.from_url(f"{client.url}/openapi.json")
    # one model per input kind (4-D float, int64 ids, booleans): lstm / gru are like conv
    wanted = {
        f"{op}_{name}" for op in ("predict", "invocations") for name in ("conv", "tokens", "mask")
    }
    operations = [
        op
        for op in (result.ok() for result in schema.get_all_operations())
        if op.definition.raw.get("operationId") in wanted
    ]
    assert len(operations) == len(wanted)
    session = requests.Session()
    session.trust_env = False  # no proxies: 127.0.0.1 only
    stats: dict = {"tried": 0, "5xx": [], "bad_4xx": []}
    for op in operations:
        _fuzz_operation(op, client.url, session, auth(client), stats)
    assert stats["tried"] >= 10 * len(operations), stats["tried"]
    assert not stats["5xx"], "\n".join(stats["5xx"][:5])
    assert not stats["bad_4xx"], "\n".join(stats["bad_4xx"][:5])
    assert state_pids(settings.state_file) == before


def test_a_sequence_model_takes_rows_of_any_length(settings, client, http_):
    """Registered with 32-token rows, a transformer answers 4- and 50-token ones as in this
    process; a GRU (unrolled by torch.export) keeps 32, and registration says which."""
    store = Store(settings)
    encoder, gru = TinyEncoder().eval(), TinyGRU().eval()
    registered = register_version(store, encoder, token_rows(3, 32), name="encoder")
    assert "sequence length dynamic, 2 tokens or more (the example had 32)" in registered.notes
    fixed = register_version(store, gru, token_rows(3, 32), name="gru")
    assert any(n.startswith("sequence length fixed at 32: ") for n in fixed.notes), fixed.notes
    client.deploy("encoder")
    client.deploy("gru")
    for length in (4, 50):
        ids = token_rows(2, length, seed=length)
        r = http_.post(url(client, "encoder"), json={"inputs": ids.tolist()})
        assert r.status_code == 200, r.text
        with torch.no_grad():
            want = encoder(torch.from_numpy(ids)).numpy()
        np.testing.assert_allclose(r.json()["predictions"], want, rtol=1e-4, atol=1e-5)
    r = http_.post(url(client, "gru"), json={"inputs": token_rows(1, 50).tolist()})
    assert r.status_code == 400
    assert r.json()["error"] == "expected rows of 32 features, got 50"
    ids = token_rows(2, 32, seed=3)
    r = http_.post(url(client, "gru"), json={"inputs": ids.tolist()})
    assert r.status_code == 200, r.text
    with torch.no_grad():
        want = gru(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(r.json()["predictions"], want, rtol=1e-4, atol=1e-5)
