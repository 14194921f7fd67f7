"""``POST /v1/completions`` and ``POST /v1/chat/completions`` in OpenAI's shapes, on the
worker's port with its tokens.

``model`` is a served model's name (its live version, or its canary's share) or ``NAME@V`` (a
version this worker serves: live or canary). One prompt (text) per request and ``n`` = 1.
``"stream": true`` answers server-sent events, one ``data:`` line per step that added text, the
last chunk carrying ``finish_reason`` and ``usage``, then ``data: [DONE]``. Errors are OpenAI's
error object with the HTTP status of the core's error classes. A stream whose client went away
is cancelled at the engine's next step, which frees its slot.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

import orjson

from kernel_magics.errors import InvalidInput, KernelMagicsError, NotFound, Overloaded
from kernel_magics.generative.sampling import SamplingParams
from kernel_magics.generative.sequence import Sequence
from kernel_magics.serving.request.protocol import Connection, Request
from kernel_magics.serving.request.streaming import ChunkedResponse
from kernel_magics.serving.tokens import ANONYMOUS

if TYPE_CHECKING:
    from kernel_magics.serving.request.app import WorkerApp
    from kernel_magics.serving.request.model import LoadedModel

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
_DONE = b"data: [DONE]\n\n"


def error_json(status: int, message: str, param: str | None = None) -> bytes:
    kind = _ERROR_TYPES.get(status, "rate_limit_error" if status == 429 else "server_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": None}})


def _fail(conn: Connection, req: Request, err: KernelMagicsError) -> None:
    extra = b"retry-after: %d\r\n" % err.retry_after if isinstance(err, Overloaded) else b""
    conn.send(err.http_status, error_json(err.http_status, str(err)), extra_headers=extra, req=req)


def completions(app: WorkerApp, req: Request, conn: Connection) -> None:
    _answer(app, req, conn, chat=False)


def chat_completions(app: WorkerApp, req: Request, conn: Connection) -> None:
    _answer(app, req, conn, chat=True)


def _answer(app: WorkerApp, req: Request, conn: Connection, chat: bool) -> None:
    who = app.tokens.identify(req.headers.get(b"authorization"))
    if who is None and app.predict_auth:
        msg = "missing or wrong bearer token: send 'Authorization: Bearer <token>'"
        conn.send(401, error_json(401, msg), req=req)
        return None
    try:
        body = _body(req)
        model = _resolve(app, req, body.get("model"))
        generator = model.generator
        params = _params(body)
        if chat:
            prompt = generator.chat_prompt(body.get("messages"))
        else:
            prompt = _prompt(body.get("prompt"))
        ids = generator.encode(prompt)
        generator.engine.check_length(len(ids), params.max_tokens)
    except KernelMagicsError as err:
        return _fail(conn, req, err)
    who = who or ANONYMOUS
    app.usage.request(who)
    reply = _Reply(app, model, req, conn, chat, bool(body.get("stream")), who)
    # a chat's next turn starts with this one: its completion is kept for it (prefix cache)
    seq = Sequence(ids, params, reply.on_event, post=app.loop.call_soon_threadsafe, keep=chat)
    reply.seq = seq
    model.inflight.enter()
    try:
        generator.engine.submit(seq)
    except KernelMagicsError as err:
        model.inflight.leave()
        return _fail(conn, req, err)
    if reply.stream:
        reply.start()
    return None


class _Reply:
    """One request's answer, fed by the engine's events on the event loop."""

    def __init__(
        self, app: WorkerApp, model: LoadedModel, req: Request, conn: Connection, chat: bool,
        stream: bool, who: str,
    ) -> None:  # fmt: skip
        self.app, self.model, self.req, self.conn = app, model, req, conn
        self.chat, self.stream, self.who = chat, stream, who
        self.id = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.label = f"{model.name}@{model.version}"
        self.text: list[str] = []
        self.seq: Sequence | None = None
        self.out: ChunkedResponse | None = None
        self.done = False
        self.last_text_at = 0.0  # when the previous piece of text arrived (metrics)
        self.counted = 0  # completion tokens already added to the version's token counter

    def start(self) -> None:
        self.out = ChunkedResponse(self.conn, self.req, extra_headers=self.model.response_headers)

    def on_event(self, seq: Sequence, delta: str, finish: str | None) -> None:
        if self.done:
            return
        if self.out.gone if self.out is not None else self.conn.closed:
            seq.cancelled = True  # the client is gone: the engine frees the slot next step
            self._close()
            return
        stats = self.model.stats
        if stats is not None and seq.completion_tokens > self.counted:
            stats.tokens.inc(seq.completion_tokens - self.counted)
            self.counted = seq.completion_tokens
        if delta and self.model.stats is not None:
            now = time.perf_counter()
            if self.last_text_at:
                self.model.stats.inter_token.observe(now - self.last_text_at)
            else:
                self.model.stats.ttft.observe(now - self.req.t0)
            self.last_text_at = now
        if self.out is not None:
            if delta or finish is None:
                self.out.write(self._chunk(delta, None, first=not self.text))
            self.text.append(delta)
            if finish is not None:
                self.out.write(self._chunk("", finish, usage=self._usage(seq)))
                self.out.write(_DONE)
                self._close()
            return
        self.text.append(delta)
        if finish is None:
            return
        if finish not in ("stop", "length"):
            status = 503 if finish == "abort" else 500
            msg = f"generation ended: {finish}"
            self.conn.send(status, error_json(status, msg), req=self.req)
        else:
            headers = self.model.response_headers
            self.conn.send(200, self._whole(finish, seq), extra_headers=headers, req=self.req)
        self._close()

    def _close(self) -> None:
        self.done = True
        seq = self.seq
        if seq is not None:
            self.app.usage.tokens(self.who, seq.prompt_tokens, seq.completion_tokens)
        if self.out is not None:
            self.out.end()
        stats = self.model.stats
        if stats is not None:
            stats.requests.inc()
            stats.latency.observe(time.perf_counter() - self.req.t0)
        self.model.inflight.leave()

    def _usage(self, seq: Sequence) -> dict:
        return {
            "prompt_tokens": seq.prompt_tokens,
            "completion_tokens": seq.completion_tokens,
            "total_tokens": seq.prompt_tokens + seq.completion_tokens,
        }

    def _head(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.label}

    def _whole(self, finish: str, seq: Sequence) -> bytes:
        text = "".join(self.text)
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
        return orjson.dumps(doc | {"choices": [choice], "usage": self._usage(seq)})

    def _chunk(
        self, delta: str, finish: str | None, first: bool = False, usage: dict | None = None
    ) -> bytes:
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


# -- request parsing ------------------------------------------------------------------------------
def _body(req: Request) -> dict:
    try:
        body = orjson.loads(req.body) if req.body else None
    except orjson.JSONDecodeError as err:
        raise InvalidInput(f"the body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object")
    if body.get("n", 1) != 1:
        raise InvalidInput("n must be 1: one completion per request")
    return body


def _resolve(app: WorkerApp, req: Request, ref: Any) -> LoadedModel:
    """``NAME`` (live, or its canary's share) or ``NAME@V`` (a version served here)."""
    if not isinstance(ref, str) or not ref:
        raise InvalidInput("model is required: a deployed model's name, or NAME@VERSION")
    name, at, version = ref.partition("@")
    live = app.table.live.get(name)
    if live is None:
        raise NotFound(app._not_deployed(name[:200]))
    if at:
        if not version.isdigit():
            raise InvalidInput(f"model {ref!r}: the version after @ must be a number")
        pinned = app.table.version(name, int(version))
        if pinned is None:
            served = ", ".join(f"v{v}" for v in app.table.served_versions(name))
            raise NotFound(f"{name} v{version} is not served (served: {served})")
        model = pinned
    else:
        split = app.table.canary.get(name) if app.table.canary else None
        model = live if split is None else split.pick(live, req)
    if model.generator is None:
        raise InvalidInput(
            f"{name} v{model.version} is not a generative model: POST /v1/models/{name}:predict"
        )
    return model


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise InvalidInput("prompt must be text (one prompt per request)")
    return value


def _params(body: dict) -> SamplingParams:
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
