"""What a model takes (``request/inputs.py``): tensors of any rank, and the values that fit its
dtype, checked before a request is queued."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kernel_magics.errors import InvalidInput
from kernel_magics.formats.model_files import Signature
from kernel_magics.serving.request.codecs import PayloadTooLarge, json_rows
from kernel_magics.serving.request.inputs import check_rows

IMAGES = Signature(np.dtype("float32"), (-1, 1, 8, 8))
TOKENS = Signature(np.dtype("int64"), (-1, 12))
FLAGS = Signature(np.dtype("bool"), (-1, 6))
SEQUENCES = Signature(np.dtype("float32"), (-1, -1, 5))  # free sequence length
SMALL_INTS = Signature(np.dtype("int32"), (-1, 2))


def body(rows: object) -> np.ndarray:
    """What the JSON codec makes of ``{"inputs": rows}`` (stdlib json writes any integer)."""
    return json_rows(json.dumps({"inputs": rows}).encode())


def test_n_d_float_rows_are_cast_and_made_contiguous():
    x = np.random.default_rng(0).random((3, 1, 8, 8))  # float64
    out = check_rows(x, IMAGES, 100)
    assert out.dtype == np.float32
    assert out.shape == (3, 1, 8, 8)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, x.astype(np.float32))
    transposed = np.ascontiguousarray(np.swapaxes(x, 2, 3)).swapaxes(2, 3)  # not C order
    assert check_rows(transposed.astype(np.float32), IMAGES, 100).flags.c_contiguous
    assert check_rows(body(x[:2].tolist()), IMAGES, 100).shape == (2, 1, 8, 8)


def test_int64_models_take_whole_numbers():
    ids = [[i for i in range(12)], [11 - i for i in range(12)]]
    out = check_rows(body(ids), TOKENS, 100)
    assert out.dtype == np.int64
    assert out.tolist() == ids
    # 1.0 is a valid token id (a float array of whole numbers); int32 and uint8 are widened
    assert check_rows(body([[1.0] * 12]), TOKENS, 100).tolist() == [[1] * 12]
    assert check_rows(np.ones((1, 12), np.uint8), TOKENS, 100).dtype == np.int64
    extremes = np.array([[-(2**63)] * 6 + [2**63 - 1] * 6])
    np.testing.assert_array_equal(check_rows(extremes, TOKENS, 10), extremes)


def test_bool_models_take_booleans():
    out = check_rows(body([[True, False] * 3]), FLAGS, 10)
    assert out.dtype == np.bool_
    assert out.tolist() == [[True, False] * 3]


TOKENS_GOT = "expected int64 values shaped (N, 12); got "
IMAGES_GOT = "expected float32 values shaped (N, 1, 8, 8); got "
FRACTION = "numbers with a fraction or out of int64 range"


# a float64 → float32 overflow warns before the finiteness check refuses it (the worker
# filters that warning at start-up)
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize(
    ("array", "sig", "message"),
    [
        (body([[0.5] * 12]), TOKENS, TOKENS_GOT + FRACTION),
        (body([[2**63] * 12]), TOKENS, TOKENS_GOT + "integers out of int64 range"),  # uint64
        (body([[1] * 11 + [2**63]]), TOKENS, TOKENS_GOT + FRACTION),  # int64 + uint64: floats
        (body([[1] * 11 + [2**64]]), TOKENS, TOKENS_GOT + FRACTION),  # orjson: a float
        (body([[1] * 11 + [-(2**64)]]), TOKENS, TOKENS_GOT + FRACTION),
        (body([["a"] * 12]), TOKENS, TOKENS_GOT + "non-numeric values (strings, null or objects)"),
        (body([[None] * 12]), TOKENS, TOKENS_GOT + "non-numeric values"),
        (body([[True] * 12]), TOKENS, TOKENS_GOT + "booleans"),
        (body([[1, 2**31]]), SMALL_INTS, "expected int32 values shaped (N, 2); got integers out"),
        (body([[0.5] * 6]), FLAGS, "expected bool values shaped (N, 6); got numbers"),
        (body([[1, 0, 1, 0, 1, 0]]), FLAGS, "expected bool values shaped (N, 6); got numbers"),
        (body([[[[True] * 8] * 8]]), IMAGES, IMAGES_GOT + "booleans"),
        (body([["x"] * 8] * 2), IMAGES, "expected a 4-D array of rows shaped (N, 1, 8, 8), got"),
        (body([[[[0.0] * 9] * 8]]), IMAGES, IMAGES_GOT + "rows shaped (1, 8, 9)"),
        (np.full((1, 1, 8, 8), np.nan), IMAGES, "input contains NaN or infinity"),
        (np.full((1, 1, 8, 8), 1e39), IMAGES, "input contains NaN or infinity"),  # float32 inf
    ],
    ids=["fraction", "over-int64", "mixed-int64-uint64", "over-uint64", "under-int64",
         "strings", "nulls", "bools", "over-int32", "float-for-bool", "int-for-bool",
         "bool-for-float", "rank", "trailing", "nan", "overflow"],
)  # fmt: skip
def test_values_that_do_not_fit_are_refused_naming_dtype_and_shape(array, sig, message):
    with pytest.raises(InvalidInput) as info:
        check_rows(array, sig, 100)
    assert message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_free_trailing_dimensions_take_any_size():
    assert check_rows(np.zeros((2, 7, 5), np.float32), SEQUENCES, 10).shape == (2, 7, 5)
    assert check_rows(np.zeros((1, 3, 5), np.float32), SEQUENCES, 10).shape == (1, 3, 5)
    with pytest.raises(InvalidInput, match=r"shaped \(N, N, 5\); got rows shaped \(3, 4\)"):
        check_rows(np.zeros((1, 3, 4), np.float32), SEQUENCES, 10)


def test_limits_and_single_rows():
    with pytest.raises(PayloadTooLarge, match="3 rows is over the limit of 2"):
        check_rows(np.zeros((3, 12), np.int64), TOKENS, 2)
    with pytest.raises(InvalidInput, match="got a single row — wrap it in another list"):
        check_rows(np.zeros((1, 8, 8), np.float32), IMAGES, 10)
    with pytest.raises(InvalidInput, match="empty batch"):
        check_rows(np.zeros((0, 12), np.int64), TOKENS, 10)
