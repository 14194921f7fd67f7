"""``POST /v1/completions`` and ``POST /v1/chat/completions`` on the worker's port with its
tokens (the shapes themselves: ``openai_protocol.py``).

``model`` is a served model's name (its live version, or its canary's share) or ``NAME@V`` (a
version this worker serves: live or canary). One prompt (text) per request and ``n`` = 1.
``"stream": true`` answers server-sent events, one ``data:`` line per step that added text, the
last chunk carrying ``finish_reason`` and ``usage``, then ``data: [DONE]``. Errors are OpenAI's
error object with the HTTP status of the core's error classes. A stream whose client went away
is cancelled at the engine's next step, which frees its slot.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from kernel_magics.errors import KernelMagicsError, NotFound
from kernel_magics.generative.openai_protocol import (
    DONE,
    Completion,
    ended_badly,
    error_answer,
    error_json,
    generative,
    model_ref,
    params_of,
    prompt_of,
    read_body,
)
from kernel_magics.generative.sequence import Sequence
from kernel_magics.serving.request.protocol import Connection, Request
from kernel_magics.serving.request.streaming import ChunkedResponse
from kernel_magics.serving.tokens import ANONYMOUS

if TYPE_CHECKING:
    from kernel_magics.serving.request.app import WorkerApp
    from kernel_magics.serving.request.model import LoadedModel


def _fail(conn: Connection, req: Request, err: KernelMagicsError) -> None:
    status, headers, body = error_answer(err)
    extra = "".join(f"{key}: {value}\r\n" for key, value in headers.items()).encode("latin-1")
    conn.send(status, body, extra_headers=extra, req=req)


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
        body = read_body(req.body)
        model = _resolve(app, req, body.get("model"))
        generator = model.generator
        params = params_of(body)
        ids = generator.encode(prompt_of(generator, body, chat))
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
        self.stream, self.who = stream, who
        self.answer = Completion(chat, f"{model.name}@{model.version}")
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
                self.out.write(self.answer.chunk(delta, None, first=not self.text))
            self.text.append(delta)
            if finish is not None:
                usage = Completion.usage(seq.prompt_tokens, seq.completion_tokens)
                self.out.write(self.answer.chunk("", finish, usage=usage))
                self.out.write(DONE)
                self._close()
            return
        self.text.append(delta)
        if finish is None:
            return
        failed = ended_badly(finish)
        if failed is not None:
            self.conn.send(failed[0], failed[1], req=self.req)
        else:
            usage = Completion.usage(seq.prompt_tokens, seq.completion_tokens)
            whole = self.answer.whole("".join(self.text), finish, usage)
            self.conn.send(200, whole, extra_headers=self.model.response_headers, req=self.req)
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


def _resolve(app: WorkerApp, req: Request, ref: Any) -> LoadedModel:
    """``NAME`` (live, or its canary's share) or ``NAME@V`` (a version served here)."""
    name, version = model_ref(ref)
    live = app.table.live.get(name)
    if live is None:
        raise NotFound(app._not_deployed(name[:200]))
    if version is not None:
        pinned = app.table.version(name, version)
        if pinned is None:
            served = ", ".join(f"v{v}" for v in app.table.served_versions(name))
            raise NotFound(f"{name} v{version} is not served (served: {served})")
        model = pinned
    else:
        split = app.table.canary.get(name) if app.table.canary else None
        model = live if split is None else split.pick(live, req)
    return generative(model)
