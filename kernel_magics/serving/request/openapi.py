"""The OpenAPI 3 document of the public HTTP API (served at ``/openapi.json``): the routes, plus
concrete paths per live model that give its exact input shape and dtype."""

from __future__ import annotations

from typing import Any

import numpy as np

from kernel_magics.serving.request.openapi_schemas import (
    LABELS_PARAM,
    NAME_PARAM,
    SCHEMAS,
    SECURED,
    errors,
    json_response,
    ref,
)


def _manage(action: str, body: str | None, summary: str) -> dict:
    op: dict[str, Any] = {
        "summary": summary,
        "operationId": action,
        "security": SECURED,
        "parameters": [NAME_PARAM],
        "responses": {
            "200": json_response(ref("ManageResponse")),
            **errors(400, 401, 403, 404, 409, 413, 503),
        },
    }
    if body:
        op["requestBody"] = {
            "required": False,
            "content": {"application/json": {"schema": ref(body)}},
        }
    return {"post": op}


def _value_schema(dtype: str) -> dict:
    """One input value of ``dtype`` in JSON, bounded so that every value the schema admits
    fits the model (a larger number would overflow a float32 model to infinity: refused)."""
    kind = np.dtype(dtype).kind
    if kind == "b":
        return {"type": "boolean"}
    if kind in "iu":
        ints = np.iinfo(dtype)
        return {"type": "integer", "minimum": int(ints.min), "maximum": int(ints.max)}
    largest = float(np.finfo(dtype).max) if kind == "f" else float(np.finfo(np.float32).max)
    return {"type": "number", "minimum": -largest, "maximum": largest}


def _row_schema(shape: list[int], dtype: str) -> dict:
    """JSON schema of one row of a model's input (shape without the batch dimension): arrays
    nested as deep as the rank, fixed sizes where the signature fixes them."""
    item = _value_schema(dtype)
    for size in reversed(shape):
        item = {"type": "array", "items": item}
        if size != -1:
            item.update(minItems=size, maxItems=size)
    return item


def _table_row_schema(columns: list[dict]) -> dict:
    """One row for a version with a one-hot step (``preprocess.py``): a record of its columns,
    or their values in training order; a categorical column takes one of its categories."""
    number = _value_schema("float32")
    fields = {
        c["name"]: {"type": "string", "enum": list(c["categories"])}
        if c.get("categories") is not None
        else number
        for c in columns
    }
    record = {"type": "object", "required": list(fields), "properties": fields}
    values = {
        "type": "array",
        "minItems": len(fields),
        "maxItems": len(fields),
        "items": {"oneOf": [number, {"type": "string"}]},
    }
    return {"oneOf": [record, values]}


def _model_paths(model: dict, max_rows: int) -> dict:
    """Concrete paths for one live model, with its exact row shape: a client (or a fuzzer) can
    build valid requests from the document alone. They take precedence over the templates."""
    name, spec = model["name"], model.get("input") or {}
    shape, dtype = list(spec.get("shape") or [-1]), str(spec.get("dtype") or "float32")
    rows = {"type": "array", "minItems": 1, "maxItems": min(max_rows, 1024)}
    encoding = model.get("preprocess")
    if encoding:  # :predict and /invocations take table rows (v2 takes the encoded matrix)
        rows["items"] = _table_row_schema(encoding["columns"])
    else:
        rows["items"] = _row_schema(shape[1:], dtype)
    one_of = [
        {"type": "object", "required": [key], "additionalProperties": False,
         "properties": {key: rows}}
        for key in ("instances", "inputs")
    ]  # fmt: skip
    body = {"required": True, "content": {"application/json": {"schema": {"oneOf": one_of}}}}
    # MLflow's protocol ignores keys it does not know ("params" among them): so do we there.
    loose = [{k: v for k, v in alt.items() if k != "additionalProperties"} for alt in one_of]
    inv_content: dict = {"application/json": {"schema": {"oneOf": loose}}}
    if spec.get("columns"):
        inv_content["text/csv"] = {"schema": {"type": "string"}}
    inv_body = {"required": True, "content": inv_content}
    predict = document_template()["paths"]["/v1/models/{name}:predict"]["post"]
    invocations = document_template()["paths"]["/v1/models/{name}/invocations"]["post"]
    info = document_template()["paths"]["/v1/models/{name}"]["get"]
    strip: dict[str, list] = {"parameters": []}
    return {
        f"/v1/models/{name}:predict": {
            "post": {**predict, **strip, "operationId": f"predict_{name}", "requestBody": body}
        },
        f"/v1/models/{name}/invocations": {
            "post": {
                **invocations,
                **strip,
                "operationId": f"invocations_{name}",
                "requestBody": inv_body,
            }
        },
        f"/v1/models/{name}": {"get": {**info, **strip, "operationId": f"getModel_{name}"}},
        **_v2_paths(name, shape, dtype, max_rows),
    }


def _v2_paths(name: str, shape: list[int], dtype: str, max_rows: int) -> dict:
    """The model's Open Inference Protocol routes (``request/v2.py``): infer with its exact
    tensor (datatype, trailing shape), metadata and readiness."""
    from kernel_magics.serving.request.v2 import datatype

    rank = len(shape)  # OpenAPI 3.0 has no per-position items: the rank, and sizes ≥ 0
    tensor = {
        **SCHEMAS["V2Tensor"],
        "properties": {
            **SCHEMAS["V2Tensor"]["properties"],
            "datatype": {"type": "string", "enum": [datatype(dtype)]},
            "shape": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": max_rows},
                "minItems": rank,
                "maxItems": rank,
            },
            "data": {"type": "array", "items": _value_schema(dtype)},
        },
    }
    body = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": tensor},
        },
    }
    json_body = {"required": True, "content": {"application/json": {"schema": body}}}
    ok = {"200": json_response(ref("V2InferResponse")), **errors(400, 401, 404, 413, 415)}
    base = f"/v2/models/{name}"
    ready = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    }
    return {
        f"{base}/infer": {
            "post": {
                "summary": "Open Inference Protocol (KServe v2) inference",
                "operationId": f"v2infer_{name}",
                "security": SECURED,
                "requestBody": json_body,
                "responses": ok,
            }
        },
        base: {
            "get": {
                "summary": "Open Inference Protocol model metadata",
                "operationId": f"v2metadata_{name}",
                "responses": {"200": json_response(ref("V2ModelMetadata")), **errors(404)},
            }
        },
        f"{base}/ready": {
            "get": {
                "summary": "Open Inference Protocol model readiness",
                "operationId": f"v2ready_{name}",
                "responses": {"200": json_response(ready), **errors(404)},
            }
        },
    }


def document(models: list[dict] | None = None, max_rows: int = 65536) -> dict:
    """The API, plus one set of concrete paths per live model (regenerated on every swap)."""
    doc = document_template()
    for model in models or []:
        if "generation" not in model:  # a language model takes no rows (docs/generative.md)
            doc["paths"].update(_model_paths(model, max_rows))
    return doc


def document_template() -> dict:
    npy = {"application/x-npy": {"schema": {"type": "string", "format": "binary"}}}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "kernel-magics inference API",
            "version": "1",
            "description": "Predictions, MLflow-compatible invocations and zero-downtime "
            "deployment of registered PyTorch models.",
        },
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/ping": {
                "get": {
                    "summary": "Liveness",
                    "operationId": "ping",
                    "responses": {
                        "200": {
                            "description": "Alive",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Status and the version live for each model",
                    "operationId": "health",
                    "responses": {
                        "200": json_response(
                            {
                                "type": "object",
                                "required": ["status", "models"],
                                "properties": {
                                    "status": {"type": "string"},
                                    "models": {
                                        "type": "object",
                                        "additionalProperties": {"type": "integer"},
                                    },
                                },
                            }
                        )
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (a token unless metrics_requires_token is off)",
                    "operationId": "metrics",
                    "security": SECURED,
                    "responses": {
                        "200": {
                            "description": "Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        **errors(401),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": json_response({"type": "object"})},
                }
            },
            "/v1/models": {
                "get": {
                    "summary": "Live models",
                    "operationId": "listModels",
                    "responses": {
                        "200": json_response(
                            {
                                "type": "object",
                                "required": ["models"],
                                "properties": {
                                    "models": {"type": "array", "items": ref("ModelInfo")}
                                },
                            }
                        )
                    },
                }
            },
            "/v1/models/{name}": {
                "get": {
                    "summary": "One live model: version, batching, signature, history",
                    "operationId": "getModel",
                    "parameters": [NAME_PARAM],
                    "responses": {"200": json_response(ref("ModelInfo")), **errors(404)},
                }
            },
            "/v1/models/{name}:predict": {
                "post": {
                    "summary": "Predict (JSON rows or an .npy array; answers .npy on request)",
                    "operationId": "predict",
                    "security": SECURED,
                    "parameters": [NAME_PARAM, LABELS_PARAM],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": ref("PredictRequest")},
                            **npy,
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Model outputs; headers name the version",
                            "headers": {
                                "X-Model-Version": {"schema": {"type": "integer"}},
                                "X-Model-Name": {"schema": {"type": "string"}},
                            },
                            "content": {
                                "application/json": {"schema": ref("PredictResponse")},
                                **npy,
                            },
                        },
                        **errors(400, 401, 404, 413, 415),
                    },
                }
            },
            "/v1/models/{name}/invocations": {
                "post": {
                    "summary": "MLflow scoring protocol (same answers as `mlflow models serve`)",
                    "operationId": "invocations",
                    "security": SECURED,
                    "parameters": [NAME_PARAM],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": ref("InvocationsRequest")},
                        },
                    },
                    "responses": {
                        "200": json_response(ref("PredictResponse")),
                        **errors(400, 401, 404, 413, 415),
                    },
                }
            },
            "/v1/models/{name}/deploy": _manage(
                "deploy", "DeployRequest", "Load, warm and swap in a version (zero downtime)"
            ),
            "/v1/models/{name}/rollback": _manage(
                "rollback", "RollbackRequest", "Swap back to the previous (or a given) version"
            ),
            "/v1/models/{name}/undeploy": _manage("undeploy", None, "Stop serving a model"),
            "/v1/models/{name}/promote": _manage("promote", None, "Make the running canary live"),
            "/v1/models/{name}/feedback": {
                "post": {
                    "summary": "True labels for logged requests, by their X-Request-ID "
                    "(stored beside the inference log; a manage-scope token)",
                    "operationId": "feedback",
                    "security": SECURED,
                    "parameters": [NAME_PARAM],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": ref("FeedbackRequest")}},
                    },
                    "responses": {
                        "200": json_response(ref("FeedbackResponse")),
                        **errors(400, 401, 403, 404, 413, 503),
                    },
                }
            },
        },
    }
