"""OpenAI's completion shapes, decoded and encoded once for every server that answers them.

The built-in worker (``openai_api.py``, on its own HTTP protocol) and the Ray target's model
replicas (``serving/ray_app.py`` through ``stream.py``) both read a request with ``read_body``,
``model_ref``, ``prompt_of`` and ``params_of`` and write its answer with ``Completion``; only
how bytes reach the client differs. Knows no HTTP server.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

import orjson

from kernel_magics.errors import InvalidInput, KernelMagicsError, Overloaded
from kernel_magics.generative.sampling import SamplingParams

if TYPE_CHECKING:
    from kernel_magics.serving.request.model import LoadedModel

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
DONE = b"data: [DONE]\n\n"
EVENT_STREAM = "text/event-stream"
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}


def error_json(status: int, message: str, param: str | None = None) -> bytes:
    """OpenAI's error object, its ``type`` named by the HTTP status."""
    kind = _ERROR_TYPES.get(status, "rate_limit_error" if status == 429 else "server_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": None}})


def error_answer(err: KernelMagicsError) -> tuple[int, dict[str, str], bytes]:
    """An error's status, headers (``Retry-After`` on a full queue) and OpenAI error body."""
    headers = {"retry-after": str(err.retry_after)} if isinstance(err, Overloaded) else {}
    return err.http_status, headers, error_json(err.http_status, str(err))


def model_list(models: list[dict]) -> dict:
    """``GET /v1/models``: this server's own listing (``models``) and OpenAI's list shape
    (``object`` + ``data``) side by side."""
    data = [
        {"id": m["name"], "object": "model", "created": 0, "owned_by": "kernel-magics"}
        for m in models
    ]
    return {"models": models, "object": "list", "data": data}


# Parameters of OpenAI's completion routes this server does not implement, each with the values
# that ask for nothing (clients send their defaults): any other value is a 400 that names it,
# rather than an answer that silently lacks what was asked for.
NOT_IMPLEMENTED: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False, 0),  # an int on /v1/completions, a bool on chat
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "tools": (None, []),
    "functions": (None, []),
    "response_format": (None, {"type": "text"}),
}


# -- requests -------------------------------------------------------------------------------------
def read_body(raw: bytes) -> dict:
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError as err:
        raise InvalidInput(f"the body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    if body.get("n", 1) != 1:
        raise InvalidInput("n must be 1: one completion per request")
    for key, off in NOT_IMPLEMENTED.items():
        if body.get(key) not in off:
            raise InvalidInput(f"{key} is not supported by this server: leave it out")
    return body


def model_ref(ref: Any) -> tuple[str, int | None]:
    """``model``: ``NAME`` (its live version, or its canary's share) or ``NAME@V``."""
    if not isinstance(ref, str) or not ref:
        raise InvalidInput("model is required: a deployed model's name, or NAME@VERSION")
    name, at, version = ref.partition("@")
    if not at:
        return name, None
    if not version.isdigit():
        raise InvalidInput(f"model {ref!r}: the version after @ must be a number")
    return name, int(version)


def generative(model: LoadedModel) -> LoadedModel:
    """``model`` if it generates text; else the error that names the route it answers."""
    if model.generator is None:
        raise InvalidInput(
            f"{model.name} v{model.version} is not a generative model: "
            f"POST /v1/models/{model.name}:predict"
        )
    return model


def prompt_of(generator: Any, body: dict, chat: bool) -> str:
    """The text to complete: the messages through the model's chat template, or ``prompt``."""
    if chat:
        return str(generator.chat_prompt(body.get("messages")))
    value = body.get("prompt")
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise InvalidInput("prompt must be text (one prompt per request)")
    return value


def params_of(body: dict) -> SamplingParams:
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    elif stop is not None and not isinstance(stop, list):
        raise InvalidInput("stop must be a string or a list of strings")

    def pick(key: str, default: Any) -> Any:
        value = body.get(key)
        return default if value is None else value

    return SamplingParams(
        max_tokens=DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        temperature=pick("temperature", 1.0),
        top_p=pick("top_p", 1.0),
        top_k=pick("top_k", 0),
        seed=body.get("seed"),
        stop=tuple(stop or ()),
    ).check()


# -- answers --------------------------------------------------------------------------------------
class Completion:
    """One request's answer document: the whole answer, or its server-sent event chunks."""

    def __init__(self, chat: bool, label: str) -> None:
        self.chat, self.label = chat, label
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())

    @staticmethod
    def usage(prompt_tokens: int, completion_tokens: int) -> dict:
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.label}

    def whole(self, text: str, finish: str, usage: dict) -> bytes:
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
            }
            doc = self._head("chat.completion")
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            doc = self._head("text_completion")
        return orjson.dumps(doc | {"choices": [choice], "usage": usage})

    def chunk(
        self, delta: str, finish: str | None, first: bool = False, usage: dict | None = None
    ) -> bytes:
        """One ``data:`` event; the last one carries ``finish_reason`` and ``usage``."""
        if self.chat:
            part: dict[str, Any] = {"content": delta}
            if first:
                part["role"] = "assistant"
            choice: dict[str, Any] = {"index": 0, "delta": part, "finish_reason": finish}
            doc = self._head("chat.completion.chunk")
        else:
            choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
            doc = self._head("text_completion")
        doc["choices"] = [choice]
        if usage is not None:
            doc["usage"] = usage
        return b"data: " + orjson.dumps(doc) + b"\n\n"


def ended_badly(finish: str) -> tuple[int, bytes] | None:
    """A generation that ended without its text (the engine aborted it or failed): the status
    and error a whole (not streamed) answer gets; None for ``stop`` and ``length``."""
    if finish in ("stop", "length"):
        return None
    status = 503 if finish == "abort" else 500
    return status, error_json(status, f"generation ended: {finish}")
