"""The shared parts of the OpenAPI document (``openapi.py``): component schemas, the model-name
path parameter and response helpers."""

from __future__ import annotations

from typing import Any

from kernel_magics.naming import NAME_PATTERN
from kernel_magics.quality.canary_judge import METRICS
from kernel_magics.quality.feedback import MAX_FEEDBACK_ITEMS, MAX_LABEL_CHARS
from kernel_magics.quality.log_store import MAX_REQUEST_ID
from kernel_magics.serving.deploy_options import (
    CANARY_MAX,
    CANARY_MIN,
    LOG_SAMPLE_MAX,
    LOG_SAMPLE_MIN,
    MAX_BATCH_SIZE_MAX,
    MAX_BATCH_SIZE_MIN,
    MAX_WAIT_MS_MAX,
    MAX_WAIT_MS_MIN,
)

_REF = "#/components/schemas/"
NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "Registered model name",
    "schema": {"type": "string", "pattern": NAME_PATTERN},
}
LABELS_PARAM = {
    "name": "labels",
    "in": "query",
    "required": False,
    "description": "true: a classifier adds its class label per row (JSON answers only)",
    "schema": {"type": "boolean"},
}
SECURED: list[dict[str, list[str]]] = [{"bearer": []}]


def ref(name: str) -> dict:
    return {"$ref": _REF + name}


def json_response(schema: dict, description: str = "") -> dict:
    return {"description": description or "OK", "content": {"application/json": {"schema": schema}}}


def errors(*codes: int) -> dict:
    words = {
        400: "Bad input (malformed body, wrong shape or dtype, values that do not fit, NaN)",
        401: "Missing or wrong bearer token",
        403: "The token's scope does not allow this (management needs scope manage)",
        404: "Model not deployed, or unknown version",
        409: "The version could not be loaded or warmed; the live version keeps serving",
        413: "Body or row count over the limit",
        415: "Unsupported Content-Type",
        503: "The inference process or its store is not available; retry",
    }
    return {str(c): json_response(ref("Error"), words[c]) for c in codes}


_ROWS = {
    "type": "array",
    "minItems": 1,
    "description": "Rows; each row matches the model's input signature",
    "items": {"type": "array", "items": {"type": "number"}},
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string", "description": "One line naming the problem"},
            "required_scope": {"type": "string", "description": "403: the token scope needed"},
        },
    },
    "PredictRequest": {
        "type": "object",
        "description": 'Exactly one of "instances" or "inputs"',
        "oneOf": [
            {
                "required": ["instances"],
                "additionalProperties": False,
                "properties": {"instances": _ROWS},
            },
            {
                "required": ["inputs"],
                "additionalProperties": False,
                "properties": {"inputs": _ROWS},
            },
        ],
    },
    "PredictResponse": {
        "type": "object",
        "required": ["predictions"],
        "properties": {
            "predictions": {"type": "array", "description": "Raw model outputs"},
            "labels": {
                "type": "array",
                "description": "?labels=true (a classifier): each row's best-scoring label",
            },
        },
    },
    "InvocationsRequest": {
        "type": "object",
        "description": "MLflow scoring protocol: exactly one of these keys",
        "properties": {
            "dataframe_split": {
                "type": "object",
                "properties": {
                    "columns": {"type": "array"},
                    "index": {"type": "array"},
                    "data": {"type": "array"},
                },
                "required": ["data"],
            },
            "dataframe_records": {"type": "array", "items": {"type": "object"}},
            "instances": {"type": "array"},
            "inputs": {"type": "array"},
            "params": {"type": "object"},
        },
    },
    "History": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "time": {"type": "string"},
                "action": {"type": "string"},
                "from_version": {"type": "integer", "nullable": True},
                "to_version": {"type": "integer", "nullable": True},
                # set when the process promoted or rolled back a judged canary by itself
                "reason": {"type": "string", "nullable": True},
                "evidence": {"type": "object", "nullable": True},
            },
        },
    },
    "TensorSpec": {
        "type": "object",
        "nullable": True,
        "properties": {
            "dtype": {"type": "string", "nullable": True},
            "shape": {"type": "array", "items": {"type": "integer"}},
        },
    },
    "ModelInfo": {
        "type": "object",
        "required": ["name", "version", "state"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "integer"},
            "state": {"type": "string", "enum": ["live"]},
            "loaded_at": {"type": "string"},
            "task": {"type": "string", "nullable": True},
            "classes": {
                "type": "array",
                "nullable": True,
                "description": "A classifier's labels in output order",
                "items": {},
            },
            "format": {"type": "string"},
            "fast_path": {"type": "boolean"},
            "fixed_batch": {"type": "integer", "nullable": True},
            "max_batch_size": {"type": "integer"},
            "max_wait_ms": {"type": "number"},
            "log_sample": {
                "type": "number",
                "description": "The share of requests the inference log keeps",
            },
            "load_ms": {"type": "number"},
            "warm_ms": {"type": "number"},
            "input": ref("TensorSpec"),
            "output": ref("TensorSpec"),
            "history": ref("History"),
            "canary": {
                "type": "object",
                "nullable": True,
                "description": "A canary beside the live version: its version and share",
                "properties": {
                    "version": {"type": "integer"},
                    "percent": {"type": "integer"},
                },
            },
        },
    },
    "DeployRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "ref": {
                "type": "string",
                "minLength": 1,
                "nullable": True,
                "description": "Version number or alias; null = newest version",
            },
            "max_batch_size": {
                "type": "integer",
                "minimum": MAX_BATCH_SIZE_MIN,
                "maximum": MAX_BATCH_SIZE_MAX,
                "nullable": True,
            },
            "max_wait_ms": {
                "type": "number",
                "minimum": MAX_WAIT_MS_MIN,
                "maximum": MAX_WAIT_MS_MAX,
                "nullable": True,
            },
            "log_sample": {
                "type": "number",
                "minimum": LOG_SAMPLE_MIN,
                "maximum": LOG_SAMPLE_MAX,
                "nullable": True,
                "description": "The share of requests the inference log keeps",
            },
            "canary": {
                "type": "integer",
                "minimum": CANARY_MIN,
                "maximum": CANARY_MAX,
                "nullable": True,
                "description": "Load beside the live version and send it this percent of "
                "requests (deterministic: a hash of X-Request-ID, else every (100/P)th request)",
            },
            "analyze": {
                "type": "object",
                "nullable": True,
                "additionalProperties": False,
                "description": "With canary: the process promotes or rolls back the canary by "
                "itself once each version answered min_requests within window_s, judged on "
                "metrics (null fields: the canary_* settings)",
                "properties": {
                    "metrics": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "string", "enum": list(METRICS)},
                    },
                    "window_s": {
                        "type": "number",
                        "minimum": 0,
                        "exclusiveMinimum": True,
                        "nullable": True,
                    },
                    "min_requests": {"type": "integer", "minimum": 1, "nullable": True},
                },
            },
        },
    },
    "FeedbackRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["feedback"],
        "properties": {
            "feedback": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_FEEDBACK_ITEMS,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["request_id", "label"],
                    "properties": {
                        "request_id": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_REQUEST_ID,
                            "description": "The X-Request-ID the prediction was answered with",
                        },
                        "row": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": 2**31 - 1,
                            "description": "The row inside that request (default 0)",
                        },
                        "label": {
                            "description": "The true class label or value of that row",
                            "anyOf": [
                                {"type": "string", "maxLength": MAX_LABEL_CHARS},
                                {"type": "number"},
                                {"type": "boolean"},
                            ],
                        },
                    },
                },
            }
        },
    },
    "FeedbackResponse": {
        "type": "object",
        "properties": {
            "accepted": {"type": "integer", "description": "Labels stored"},
            "unknown": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Request ids not in the inference log (not an error)",
            },
        },
    },
    "RollbackRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "to": {
                "type": "integer",
                "minimum": 1,
                "maximum": 2**31 - 1,
                "nullable": True,
                "description": "Version to make live; null = the one live before this one",
            }
        },
    },
    "ManageResponse": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "integer", "nullable": True},
            "previous_version": {"type": "integer", "nullable": True},
            "action": {
                "type": "string",
                "enum": ["deploy", "rollback", "undeploy", "canary", "canary-drop", "promote"],
            },
            "canary": {"type": "integer", "nullable": True},
            "load_ms": {"type": "number", "nullable": True},
            "unchanged": {
                "type": "boolean",
                "description": "The version was already live as asked: nothing changed",
            },
            "history": ref("History"),
        },
    },
}

# The Open Inference Protocol (KServe v2): shapes as it defines them (request/v2.py)
V2_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype", "data"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string"},
        "data": {"type": "array", "description": "Flat in row-major order, or nested"},
        "parameters": {"type": "object"},
    },
}
SCHEMAS["V2Tensor"] = V2_TENSOR
SCHEMAS["V2InferResponse"] = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "outputs": {"type": "array", "items": ref("V2Tensor")},
    },
}
_V2_TENSOR_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
}
SCHEMAS["V2ModelMetadata"] = {
    "type": "object",
    "required": ["name", "versions", "platform", "inputs", "outputs"],
    "properties": {
        "name": {"type": "string"},
        "versions": {"type": "array", "items": {"type": "string"}},
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": _V2_TENSOR_META},
        "outputs": {"type": "array", "items": _V2_TENSOR_META},
    },
}
