"""The Open Inference Protocol (KServe v2, REST) on the built-in process.

Routes (``app.py`` hands every path under ``/v2`` here):

- ``GET /v2`` server metadata; ``GET /v2/health/live``, ``GET /v2/health/ready``;
- ``GET /v2/models/{name}[/versions/{v}]`` model metadata (versions, platform, tensors);
- ``GET /v2/models/{name}[/versions/{v}]/ready``;
- ``POST /v2/models/{name}[/versions/{v}]/infer``.

Only the protocol's encoding lives here: a decoded request goes through the same checks
(``inputs.py`` via ``LoadedModel.check``), the same token rule, the same batcher, metrics and
canary split as ``:predict`` (``WorkerApp._caller``, ``_model`` and ``_submit``). A
``/versions/{v}`` names the live or the canary version; any other is a 404 naming what is
served. Models here take one input tensor and give one output (``output-0``), as the
signatures ``%train`` and ``%register`` write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from kernel_magics import __version__
from kernel_magics.errors import InvalidInput, clip
from kernel_magics.naming import parse_version
from kernel_magics.serving.request.bodies import JSON, dumps, error_body
from kernel_magics.serving.request.codecs import UnsupportedMediaType, check_shape, media_type
from kernel_magics.serving.request.protocol import Connection, Request

if TYPE_CHECKING:
    from kernel_magics.serving.request.app import WorkerApp
    from kernel_magics.serving.request.model import LoadedModel

OUTPUT = "output-0"
INPUT = "input-0"
_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(dt)
    for name, dt in (
        ("BOOL", "bool"),
        ("UINT8", "uint8"),
        ("UINT16", "uint16"),
        ("UINT32", "uint32"),
        ("UINT64", "uint64"),
        ("INT8", "int8"),
        ("INT16", "int16"),
        ("INT32", "int32"),
        ("INT64", "int64"),
        ("FP16", "float16"),
        ("FP32", "float32"),
        ("FP64", "float64"),
    )
}
_NAMES = {dt: name for name, dt in _DTYPES.items()}
_SERVER = dumps({"name": "kernel-magics", "version": __version__, "extensions": []})
_MODELS = b"/v2/models/"


def datatype(dtype: np.dtype | str | None) -> str:
    """The protocol's name for a numpy dtype (``FP32`` for float32)."""
    return _NAMES.get(np.dtype(dtype), "FP32") if dtype is not None else "FP32"


@dataclass(frozen=True)
class InferRequest:
    array: np.ndarray
    id: str | None


# -- decoding -----------------------------------------------------------------------------------
def parse(body: bytes) -> InferRequest:
    """A v2 inference request → one array (not yet checked against the model) and its id."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise InvalidInput(f"body is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise InvalidInput('body must be a JSON object like {"inputs": [{"name": ...}]}')
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InvalidInput('"id" must be a string')
    if not isinstance(doc.get("parameters", {}), dict):
        raise InvalidInput('"parameters" must be an object')
    _check_outputs(doc.get("outputs"))
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput('"inputs" must be a non-empty list of tensors')
    if len(inputs) != 1:
        raise InvalidInput(f"this model takes one input tensor; got {len(inputs)}")
    return InferRequest(_tensor(inputs[0]), rid)


def _check_outputs(outputs: Any) -> None:
    if outputs is None:
        return
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InvalidInput('"outputs" must be a list of {"name": ...} objects')
    unknown = [str(o.get("name")) for o in outputs if o.get("name") != OUTPUT]
    if unknown:
        shown = clip(", ".join(unknown))
        raise InvalidInput(f"unknown output(s) {shown}: this model has {OUTPUT!r}")


def _tensor(t: Any) -> np.ndarray:
    """One request tensor: ``shape`` and ``datatype`` must describe ``data`` (flat in row-major
    order, or nested)."""
    if not isinstance(t, dict):
        raise InvalidInput("each input must be an object with name, shape, datatype and data")
    missing = [k for k in ("name", "shape", "datatype", "data") if k not in t]
    if missing:
        raise InvalidInput(f"input tensor is missing {', '.join(missing)}")
    shape, dt, data = t["shape"], t["datatype"], t["data"]
    if not isinstance(t["name"], str):
        raise InvalidInput('input "name" must be a string')
    if not isinstance(shape, list):
        raise InvalidInput('"shape" must be a list of non-negative integers')
    want = _DTYPES.get(dt) if isinstance(dt, str) else None
    if want is None:
        known = ", ".join(_DTYPES)
        raise InvalidInput(f"unsupported datatype {clip(dt, 40)!r}; one of {known}")
    shape = list(check_shape(shape, want.itemsize))
    if not isinstance(data, list):
        raise InvalidInput('"data" must be a list (flat in row-major order, or nested)')
    try:
        values = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput('"data" is ragged or holds nested objects') from None
    count = math.prod(shape)
    if values.size != count:
        raise InvalidInput(f"shape {shape} needs {count} values; data holds {values.size}")
    return _as_datatype(values, want, dt).reshape(shape)


def _as_datatype(values: np.ndarray, want: np.dtype, name: str) -> np.ndarray:
    """The data as its declared datatype; values that are not of that kind are refused (the
    model's own dtype rules follow in ``inputs.py``)."""
    kind = values.dtype.kind
    if values.size == 0:
        return values.astype(want)
    if want.kind == "b":
        ok = kind == "b"
    elif want.kind in "iu":
        ok = kind in "iu"
        if ok and (values.min() < np.iinfo(want).min or values.max() > np.iinfo(want).max):
            raise InvalidInput(f"datatype {name}: values out of range")
    else:
        ok = kind in "fiu"
    if not ok:
        what = {"b": "booleans", "f": "numbers with a fraction", "i": "integers", "u": "integers"}
        raise InvalidInput(
            f"datatype {name} does not match data of {what.get(kind, 'non-numbers')}"
        )
    return values.astype(want)


# -- encoding -----------------------------------------------------------------------------------
def response(out: np.ndarray, model: LoadedModel, rid: str | None) -> bytes:
    """``{"model_name", "model_version", "id"?, "outputs": [output-0: shape, datatype, flat]}``."""
    dt = datatype(out.dtype)
    if out.dtype == np.float32 or out.dtype == np.float16:
        out = out.astype(np.float64)  # the float64 text of a float32 casts back exactly
    flat = np.ascontiguousarray(out).reshape(-1)
    doc: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version)}
    if rid is not None:
        doc["id"] = rid
    doc["outputs"] = [{"name": OUTPUT, "shape": list(out.shape), "datatype": dt, "data": flat}]
    try:
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # a dtype orjson does not serialize natively
        doc["outputs"][0]["data"] = flat.tolist()
        return orjson.dumps(doc)


def metadata(model: LoadedModel, versions: list[int]) -> dict:
    sig = model.signature
    out_shape = list(sig.output_shape) if sig and sig.output_shape is not None else [-1]
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": "onnx" if model.fmt == "onnx" else "pytorch",
        "inputs": [
            {
                "name": INPUT,
                "datatype": datatype(sig.dtype if sig else None),
                "shape": list(sig.shape) if sig else [-1],
            }
        ],
        "outputs": [
            {
                "name": OUTPUT,
                "datatype": datatype(sig.output_dtype if sig else None),
                "shape": out_shape,
            }
        ],
    }


# -- routes -------------------------------------------------------------------------------------
def route(app: WorkerApp, req: Request, conn: Connection) -> None:
    path = req.path.rstrip(b"/")
    if path == b"/v2":
        if app._method(req, conn, b"GET"):
            conn.send(200, _SERVER, req=req)
    elif path in (b"/v2/health/live", b"/v2/health/ready"):
        if app._method(req, conn, b"GET"):
            key = "live" if path.endswith(b"live") else "ready"
            conn.send(200, dumps({key: True}), req=req)
    elif path.startswith(_MODELS) and len(path) > len(_MODELS):
        _model_route(app, req, conn, path[len(_MODELS) :].split(b"/"))
    else:
        app._not_found(req, conn)


def _model_route(app: WorkerApp, req: Request, conn: Connection, parts: list[bytes]) -> None:
    raw, rest = parts[0], parts[1:]
    version: int | None = None
    if rest[:1] == [b"versions"]:
        if len(rest) < 2 or not rest[1].isdigit():
            return app._not_found(req, conn)
        try:
            version = parse_version(rest[1].decode())
        except InvalidInput:
            return app._not_found(req, conn)
        rest = rest[2:]
    if rest == [b"infer"]:
        if app._method(req, conn, b"POST"):
            infer(app, req, conn, raw, version)
    elif rest == [b"ready"] or not rest:
        if app._method(req, conn, b"GET"):
            model = _pinned(app, req, conn, raw.decode("latin-1"), version)
            if model is None:
                return None
            if rest:
                conn.send(200, dumps({"name": model.name, "ready": True}), req=req)
            else:
                served = app.table.served_versions(model.name)
                conn.send(200, dumps(metadata(model, served)), req=req)
    else:
        app._not_found(req, conn)
    return None


def _pinned(
    app: WorkerApp, req: Request, conn: Connection, name: str, version: int | None
) -> LoadedModel | None:
    """The live model, or the one serving ``version``; else answer 404 (naming what is served)."""
    model = app.table.live.get(name) if version is None else app.table.version(name, version)
    if model is None:
        if name in app.table.live:
            served = ", ".join(f"v{v}" for v in app.table.served_versions(name))
            message = f"{name} v{version} is not served; {name} serves {served}"
        else:
            app.unknown_errors.inc()
            message = app._not_deployed(name[:200])
        app.recent_errors.add(404, message)
        conn.send(404, error_body(message), req=req)
    return model


def infer(app: WorkerApp, req: Request, conn: Connection, raw: bytes, version: int | None) -> None:
    who = app._caller(req, conn)
    if who is None:
        return
    if version is None:
        model = app._model(req, conn, raw)  # the live version, or the canary's share
    else:
        model = _pinned(app, req, conn, raw.decode("latin-1"), version)
    if model is None:
        return
    try:
        ctype = media_type(req.headers.get(b"content-type", b""))
        if ctype and ctype != b"application/json":
            raise UnsupportedMediaType(
                f"unsupported Content-Type {ctype.decode('latin-1')[:100]!r}: use application/json"
            )
        parsed = parse(req.body)
        # a tensor protocol: a version with a one-hot step takes its encoded matrix here
        array = model.check(parsed.array, app.max_rows, table_rows=False)
    except InvalidInput as err:
        model.stats.errors.inc()
        app.recent_errors.add(err.http_status, str(err), model.name, model.version)
        conn.send(
            err.http_status, error_body(str(err)), extra_headers=model.response_headers, req=req
        )
        return
    rid = parsed.id
    app._submit(model, req, conn, who, array, lambda out: (response(out, model, rid), JSON))
