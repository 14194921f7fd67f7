"""In-process units of the canary split (``request/canary.py``) and the Open Inference
Protocol decoding (``request/v2.py``): the exact share the docstring promises, and each
malformed tensor refused with one line."""

from __future__ import annotations

import zlib

import numpy as np
import orjson
import pytest

from kernel_magics.errors import InvalidInput
from kernel_magics.serving.request import v2
from kernel_magics.serving.request.canary import Split
from kernel_magics.serving.request.model import LoadedModel
from kernel_magics.serving.request.protocol import Request


def _model(version: int) -> LoadedModel:
    return LoadedModel("m", version, "/nowhere", "", None, 8, 0.0)


def _request(rid: bytes | None = None) -> Request:
    req = Request()
    if rid is not None:
        req.headers[b"x-request-id"] = rid
    return req


@pytest.mark.parametrize("percent", [1, 10, 25, 33, 50, 99])
def test_the_counter_split_is_exact_after_every_request(percent: int) -> None:
    live, canary = _model(1), _model(2)
    split = Split(canary, percent)
    sent = 0
    for n in range(1, 1001):
        sent += split.pick(live, _request()) is canary
        assert sent == n * percent // 100


def test_a_request_id_picks_by_its_hash() -> None:
    live, canary = _model(1), _model(2)
    split = Split(canary, 10)
    for i in range(200):
        rid = f"id-{i}".encode()
        want = canary if zlib.crc32(rid) % 100 < 10 else live
        assert split.pick(live, _request(rid)) is want
    assert split.count == 0  # requests with an id do not move the counter


def test_v2_flat_and_nested_data_decode_to_the_same_array() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    flat = b'{"id": "a", "inputs": [{"name": "i", "shape": [2, 3], "datatype": "FP32", "data": '
    parsed = v2.parse(flat + b"[0, 1, 2, 3, 4, 5]}]}")
    nested = v2.parse(flat + b"[[0, 1, 2], [3, 4, 5]]}]}")
    assert parsed.id == "a"
    for got in (parsed.array, nested.array):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[]", "JSON object"),
        (b'{"inputs": {}}', "non-empty list"),
        (b'{"id": 3, "inputs": []}', '"id" must be a string'),
        (b'{"inputs": [1]}', "must be an object"),
        (b'{"inputs": [{"name": "i", "shape": [2], "datatype": "FP32", "data": [1]}]}',
         "needs 2 values"),
        (b'{"inputs": [{"name": "i", "shape": [-1], "datatype": "FP32", "data": [1]}]}',
         "non-negative"),
        (b'{"inputs": [{"name": "i", "shape": [1], "datatype": "STR", "data": [1]}]}',
         "unsupported datatype"),
        (b'{"inputs": [{"name": "i", "shape": [1], "datatype": "BOOL", "data": [1]}]}',
         "BOOL does not match"),
        (b'{"inputs": [{"name": "i", "shape": [1], "datatype": "INT8", "data": [300]}]}',
         "out of range"),
        (b'{"inputs": [{"name": "i", "shape": [2], "datatype": "FP32", "data": [[1], [1, 2]]}]}',
         "ragged"),
        (b'{"inputs": [{"name": "i", "shape": [1], "datatype": "FP32", "data": ["x"]}]}',
         "does not match"),
    ],
)  # fmt: skip
def test_v2_malformed_tensors_are_refused(body: bytes, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        v2.parse(body)


def test_v2_response_is_flat_with_shape_and_datatype() -> None:
    out = np.array([[1.5, 2.0], [3.0, 4.25]], dtype=np.float32)
    doc = orjson.loads(v2.response(out, _model(3), "x"))
    assert doc == {
        "model_name": "m",
        "model_version": "3",
        "id": "x",
        "outputs": [{"name": "output-0", "shape": [2, 2], "datatype": "FP32",
                     "data": [1.5, 2.0, 3.0, 4.25]}],
    }  # fmt: skip
