"""Request bodies in, response bodies out: JSON rows and .npy arrays, straight to/from numpy.

Nothing from a request is ever unpickled: .npy headers are parsed with ``ast.literal_eval`` (as
numpy itself does) and object dtypes are refused before any data is touched.
"""

from __future__ import annotations

import ast
import math

import numpy as np
import orjson

from kernel_magics.errors import InvalidInput, clip, first_line

NPY = b"application/x-npy"
_MAGIC = b"\x93NUMPY"
_NPY_KINDS = frozenset("fiub")  # numbers and booleans; never objects (pickles) or strings
# numpy itself refuses to read .npy headers over 10,000 bytes (numpy.lib.format); ours are ~100.
NPY_MAX_HEADER = 10_000
# The rank and size rule every decoded tensor meets (.npy and the v2 protocol), before numpy sees
# the shape: numpy refuses more than 64 dimensions or more bytes than an address holds (a 500
# otherwise); no model served here takes more than a handful of dimensions.
MAX_RANK = 32
_MAX_NBYTES = 2**63 - 1
# Headers of requests that decoded, so a client sending the same shape parses it once; bounded
# in entries and bytes, whatever clients send.
_HEADER_CACHE_ENTRIES = 1024
_HEADER_CACHE_BYTES = 1 << 20
_header_cache: dict[bytes, tuple[np.dtype, tuple[int, ...], bool]] = {}
_header_cache_bytes = 0
_encode_cache: dict[tuple[str, tuple[int, ...]], bytes] = {}


class PayloadTooLarge(InvalidInput):
    http_status = 413


class UnsupportedMediaType(InvalidInput):
    http_status = 415


def media_type(value: bytes) -> bytes:
    """``application/json; charset=utf-8`` → ``application/json``."""
    return value.split(b";", 1)[0].strip().lower()


def wants_labels(query: bytes) -> bool:
    """``?labels=true`` (or 1, yes): a classifier adds its label per row to the scores."""
    if not query:
        return False
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key == b"labels":
            return value.lower() in (b"true", b"1", b"yes", b"")
    return False


def wants_npy(accept: bytes) -> bool:
    return NPY in accept.lower() if accept else False


# -- JSON ---------------------------------------------------------------------------------------
def json_rows(body: bytes) -> np.ndarray:
    """``{"instances": [[...], ...]}`` or ``{"inputs": ...}`` (nested lists of any rank) → an
    array, not yet checked against the model."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise InvalidInput(f"body is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise InvalidInput('body must be a JSON object like {"instances": [[...], ...]}')
    rows = doc.get("instances")
    if rows is None:
        rows = doc.get("inputs")
        if rows is None:
            raise InvalidInput('body needs an "instances" or "inputs" key holding a list of rows')
    if len(doc) != 1:
        extra = clip(", ".join(repr(k) for k in doc if k not in ("instances", "inputs")))
        raise InvalidInput(
            'give exactly one of "instances" or "inputs"'
            + (f"; unknown key(s) {extra}" if extra else "")
        )
    if not isinstance(rows, list):
        raise InvalidInput('"instances" must be a list of rows')
    if not rows:
        raise InvalidInput("empty batch: send at least one row")
    try:
        # numbers, booleans, or a string / object array: what fits the model is checked by
        # request/inputs.py, which knows the model's dtype
        return np.array(rows)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(
            "rows must all have the same length and hold only numbers (ragged or nested input)"
        ) from None


# -- shapes -------------------------------------------------------------------------------------
def check_shape(shape: object, itemsize: int) -> tuple[int, ...]:
    """A tensor shape a request declares (a .npy header's tuple, a v2 ``shape`` list) as a tuple;
    InvalidInput naming the problem: not a list of whole numbers ≥ 0, more than ``MAX_RANK``
    dimensions, or more bytes than an array can hold (its non-zero dimensions times
    ``itemsize``: numpy's own rule, so an empty ``(0, 10**30)`` is refused too). Dimensions are
    never printed: a 10,000-digit one would not even convert to text."""
    if not isinstance(shape, tuple | list):
        raise InvalidInput("a shape must be a list of whole numbers")
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"the shape has {len(shape)} dimensions; at most {MAX_RANK} are served")
    nbytes = itemsize
    for axis, dim in enumerate(shape):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise InvalidInput(f"dimension {axis} of the shape must be a non-negative whole number")
        if dim:
            nbytes *= dim
            if nbytes > _MAX_NBYTES:
                raise InvalidInput(
                    f"the shape's dimensions multiply to more than an array can hold "
                    f"(dimension {axis} is out of range)"
                )
    return tuple(shape)


# -- .npy ---------------------------------------------------------------------------------------
def _parse_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    cached = _header_cache.get(header)
    if cached is not None:
        return cached
    try:
        meta = ast.literal_eval(header.decode("latin-1"))
        descr, fortran, shape = meta["descr"], meta["fortran_order"], meta["shape"]
        if not isinstance(descr, str):
            raise ValueError("structured dtypes are not supported")
        dtype = np.dtype(descr)
    except Exception as err:
        raise InvalidInput(f"malformed .npy header: {first_line(err, 200)}") from None
    if dtype.hasobject or dtype.kind not in _NPY_KINDS:
        raise InvalidInput(f".npy dtype {dtype} is not numeric")
    return dtype, check_shape(shape, dtype.itemsize), bool(fortran)


def _remember_header(header: bytes, parsed: tuple[np.dtype, tuple[int, ...], bool]) -> None:
    global _header_cache_bytes
    if header in _header_cache or len(_header_cache) >= _HEADER_CACHE_ENTRIES:
        return
    if _header_cache_bytes + len(header) <= _HEADER_CACHE_BYTES:
        _header_cache[header] = parsed
        _header_cache_bytes += len(header)


def npy_decode(body: bytes) -> np.ndarray:
    if body[:6] != _MAGIC or len(body) < 10:
        raise InvalidInput("body is not an .npy array (missing the \\x93NUMPY magic)")
    major = body[6]
    if major == 1:
        hlen, start = int.from_bytes(body[8:10], "little"), 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(body[8:12], "little"), 12
    else:
        raise InvalidInput(f"unsupported .npy format version {major}")
    if hlen > NPY_MAX_HEADER:
        raise InvalidInput(
            f".npy header of {hlen} bytes is over the limit of {NPY_MAX_HEADER} (numpy's own)"
        )
    header = bytes(body[start : start + hlen])
    parsed = _parse_header(header)
    dtype, shape, fortran = parsed
    offset = start + hlen
    count = math.prod(shape)
    if len(body) - offset != count * dtype.itemsize:
        raise InvalidInput(
            f".npy body holds {len(body) - offset} data bytes; shape {shape} of {dtype} "
            f"needs {count * dtype.itemsize}"
        )
    _remember_header(header, parsed)  # only a header whose request decoded
    array = np.frombuffer(body, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran else "C")


def npy_encode(array: np.ndarray) -> bytes:
    """Version 1.0 .npy bytes; the header for a (dtype, shape) pair is built once."""
    array = np.ascontiguousarray(array)
    key = (array.dtype.str, array.shape)
    header = _encode_cache.get(key)
    if header is None:
        text = f"{{'descr': '{array.dtype.str}', 'fortran_order': False, 'shape': {array.shape}, }}"
        pad = 64 - (10 + len(text) + 1) % 64
        text = text + " " * (pad % 64) + "\n"
        header = _MAGIC + b"\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin-1")
        if len(_encode_cache) < 1024:
            _encode_cache[key] = header
    return header + array.tobytes()


# -- responses ----------------------------------------------------------------------------------
_OPTS = orjson.OPT_SERIALIZE_NUMPY


def labelled_json(outputs: np.ndarray, classes: tuple) -> bytes:
    """``{"predictions": scores, "labels": [label of the best score per row]}``."""
    labels = np.asarray(classes, dtype=object)[outputs.argmax(axis=1)].tolist()
    body = predictions_json(outputs)
    return body[:-1] + b',"labels":' + orjson.dumps(labels) + b"}"


def predictions_json(outputs: np.ndarray) -> bytes:
    """``{"predictions": outputs.tolist()}``: float32 goes out as the float64 ``tolist`` gives,
    so a client that parses it and casts back gets the exact float32 values."""
    if outputs.dtype == np.float32 or outputs.dtype == np.float16:
        outputs = outputs.astype(np.float64)
    try:
        return orjson.dumps({"predictions": outputs}, option=_OPTS)
    except TypeError:  # a dtype orjson does not serialize natively
        return orjson.dumps({"predictions": outputs.tolist()})
