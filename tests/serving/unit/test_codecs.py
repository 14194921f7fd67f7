"""Request bodies in, response bodies out (``request/codecs.py``): JSON rows and .npy arrays."""

from __future__ import annotations

import io

import numpy as np
import orjson
import pytest

from kernel_magics.errors import InvalidInput
from kernel_magics.serving.request import codecs
from kernel_magics.serving.request.codecs import (
    json_rows,
    media_type,
    npy_decode,
    npy_encode,
    predictions_json,
    wants_npy,
)


def npy(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    if version is None:
        np.save(buf, array, allow_pickle=False)
    else:
        np.lib.format.write_array(buf, array, version=version, allow_pickle=False)
    return buf.getvalue()


def test_json_rows_takes_instances_or_inputs_of_any_rank():
    assert json_rows(b'{"instances": [[1, 2], [3, 4]]}').tolist() == [[1, 2], [3, 4]]
    assert json_rows(b'{"inputs": [[1.5, 2]]}').dtype == np.float64
    cube = json_rows(b'{"inputs": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]}')
    assert cube.shape == (2, 2, 2)
    assert cube.dtype == np.int64


def test_json_rows_leaves_what_fits_to_the_model_check():
    # booleans, strings and nulls decode; request/inputs.py refuses what the model cannot take
    assert json_rows(b'{"inputs": [[true, false]]}').dtype == np.bool_
    assert json_rows(b'{"inputs": [["a", "b"]]}').dtype.kind == "U"
    assert json_rows(b'{"inputs": [[null, 1]]}').dtype == object
    assert json_rows(b'{"inputs": [[9223372036854775808]]}').dtype == np.uint64


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{nope", "not valid JSON"),
        (b"[[1, 2]]", "JSON object"),
        (b'{"rows": [[1]]}', '"instances" or "inputs"'),
        (b'{"instances": [[1]], "inputs": [[1]]}', "exactly one"),
        (b'{"instances": [[1]], "x": 1}', "unknown key(s) 'x'"),
        (b'{"instances": 5}', "must be a list"),
        (b'{"instances": []}', "empty batch"),
        (b'{"instances": [[1, 2], [3]]}', "same length"),
        (b'{"instances": [[1e400]]}', "not valid JSON"),  # orjson refuses what overflows
    ],
)
def test_json_rows_refuses_bad_bodies_with_one_line(body, fragment):
    with pytest.raises(InvalidInput) as info:
        json_rows(body)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.arange(24, dtype=np.float64).reshape(2, 3, 4),
        np.arange(6, dtype=np.int64).reshape(6, 1),
        np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        np.arange(4, dtype=">f4").reshape(2, 2),  # big-endian
        np.array([[True, False], [False, True]]),
    ],
    ids=["f32", "f64-3d", "i64", "fortran", "big-endian", "bool"],
)
def test_npy_round_trip(array):
    decoded = npy_decode(npy(array))
    np.testing.assert_array_equal(decoded, array)
    assert decoded.dtype == array.dtype
    again = np.load(io.BytesIO(npy_encode(decoded)), allow_pickle=False)
    np.testing.assert_array_equal(again, array)


def test_npy_format_versions_2_and_3_are_read():
    array = np.ones((2, 3), dtype=np.float32)
    for version in ((2, 0), (3, 0)):
        np.testing.assert_array_equal(npy_decode(npy(array, version)), array)


def test_npy_encode_writes_what_numpy_reads_and_caches_headers():
    out = np.arange(6, dtype=np.float32).reshape(2, 3)
    first, second = npy_encode(out), npy_encode(out + 1)
    assert first[:64] == second[:64]  # same (dtype, shape): the same header
    assert (len(first) - len(out.tobytes())) % 64 == 0  # header padded to 64 bytes
    np.testing.assert_array_equal(np.load(io.BytesIO(second)), out + 1)
    transposed = np.arange(6, dtype=np.float32).reshape(3, 2).T  # not C-contiguous
    np.testing.assert_array_equal(np.load(io.BytesIO(npy_encode(transposed))), transposed)


def _with_header(header: str) -> bytes:
    text = header + " " * (64 - 10 - len(header) - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"hello", "missing the \\x93NUMPY magic"),
        (b"\x93NUMPY\x09\x00garbage", "unsupported .npy format version 9"),
        (npy(np.ones((2, 2), dtype=np.float32))[:-4], "needs 16"),
        (_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -1), }"),
         "dimension 1 of the shape must be a non-negative"),
        (_with_header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }"),
         "structured"),
        (_with_header("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"), "not numeric"),
        (_with_header("{'descr': '<U3', 'fortran_order': False, 'shape': (1,), }"), "not numeric"),
        (_with_header("__import__('os')"), "malformed .npy header"),
    ],
    ids=["no-magic", "version", "short", "shape", "structured", "object", "unicode", "code"],
)  # fmt: skip
def test_npy_decode_refuses_bad_bodies(body, fragment):
    with pytest.raises(InvalidInput) as info:
        npy_decode(body)
    assert fragment in str(info.value)


def test_npy_header_cache_keeps_only_decoded_headers_and_is_bounded():
    codecs._header_cache.clear()
    codecs._header_cache_bytes = 0
    for n in range(50):  # valid headers whose bodies do not match: refused, never cached
        with pytest.raises(InvalidInput, match="data bytes"):
            npy_decode(npy(np.ones((n + 1, 3), dtype=np.float32))[:-4])
    assert not codecs._header_cache
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }"
    oversized = _with_header(header + " " * 10_000)
    with pytest.raises(InvalidInput, match="over the limit of 10000"):
        npy_decode(oversized)
    for n in range(3000):  # distinct valid requests: the cache stops at its bound
        npy_decode(npy(np.ones((n + 1, 1), dtype=np.int8)))
    assert len(codecs._header_cache) <= codecs._HEADER_CACHE_ENTRIES
    assert sum(map(len, codecs._header_cache)) == codecs._header_cache_bytes
    assert codecs._header_cache_bytes <= codecs._HEADER_CACHE_BYTES


def test_pickled_npy_is_never_unpickled():
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InvalidInput, match="not numeric"):
        npy_decode(buf.getvalue())


def test_media_type_and_accept():
    assert media_type(b"Application/JSON; charset=utf-8") == b"application/json"
    assert media_type(b"") == b""
    assert wants_npy(b"application/json, application/x-npy;q=0.9")
    assert not wants_npy(b"")
    assert not wants_npy(b"*/*")


def test_predictions_json_is_exact_for_float32_and_keeps_any_rank():
    out = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    back = np.asarray(orjson.loads(predictions_json(out))["predictions"], dtype=np.float32)
    np.testing.assert_array_equal(back, out)
    ints = orjson.loads(predictions_json(np.array([[1, 2]], dtype=np.int64)))
    assert ints == {"predictions": [[1, 2]]}
    flags = orjson.loads(predictions_json(np.array([True, False])))
    assert flags == {"predictions": [True, False]}
    view = np.arange(6, dtype=np.float32).reshape(2, 3).T  # orjson wants C order: falls back
    assert orjson.loads(predictions_json(view))["predictions"] == view.tolist()
