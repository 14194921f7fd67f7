"""``POST /v1/completions`` and ``POST /v1/chat/completions`` on the worker's port with its
tokens (the shapes themselves: ``openai_requests.py`` and ``openai_protocol.py``).

``model`` is a served model's name (its live version, or its canary's share) or ``NAME@V`` (a
version this worker serves: live or canary). A prompt or a list of them, ``n`` completions of
each (``openai_requests.MAX_CHOICES`` in all), decoded side by side in the running batch.
``"stream": true`` answers server-sent events, one ``data:`` line per choice per step that added
text, each choice's last chunk carrying its ``finish_reason`` and the request's last one
``usage``, then ``data: [DONE]``. Errors are OpenAI's
error object with the HTTP status of the core's error classes. A stream whose client went away
is cancelled at the engine's next step, which frees its slot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kernel_magics.errors import KernelMagicsError, NotFound
from kernel_magics.generative.meter import Meter
from kernel_magics.generative.openai_protocol import Choices, error_answer, error_json
from kernel_magics.generative.openai_requests import choices_of, generative, model_ref, read_body
from kernel_magics.generative.sampling import TokenLogprob
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
        plans, prompt_tokens = choices_of(model.generator, body, chat)
    except KernelMagicsError as err:
        return _fail(conn, req, err)
    who = who or ANONYMOUS
    app.usage.request(who)
    stream = bool(body.get("stream"))
    reply = _Reply(app, model, req, conn, who)
    post = app.loop.call_soon_threadsafe
    # a chat's next turn starts with this one: its completion is kept for it (prefix cache)
    seqs = [Sequence(ids, params, reply.on_event, post=post, keep=chat) for ids, params in plans]
    reply.choices = Choices(chat, model, seqs, prompt_tokens, stream)
    model.inflight.enter()
    try:
        model.generator.engine.submit(*seqs)
    except KernelMagicsError as err:
        model.inflight.leave()
        return _fail(conn, req, err)
    if stream:
        reply.start()
    return None


class _Reply:
    """One request's answer, fed by the engine's events on the event loop."""

    def __init__(
        self, app: WorkerApp, model: LoadedModel, req: Request, conn: Connection, who: str
    ) -> None:
        self.app, self.model, self.req, self.conn, self.who = app, model, req, conn, who
        self.choices: Choices | None = None
        self.out: ChunkedResponse | None = None
        self.done = False
        self.meter = Meter(model.stats, req.t0)

    def start(self) -> None:
        self.out = ChunkedResponse(self.conn, self.req, extra_headers=self.model.response_headers)

    def on_event(
        self,
        seq: Sequence,
        delta: str,
        finish: str | None,
        logprobs: list[TokenLogprob] | None = None,
    ) -> None:
        choices = self.choices
        if self.done or choices is None:
            return
        if self.out.gone if self.out is not None else self.conn.closed:
            for each in choices.seqs:  # the client is gone: the engine frees the slots next step
                each.cancelled = True
            self._close()
            return
        self.meter.event(choices, seq, delta)
        pieces = choices.event(seq, delta, finish, logprobs)
        if self.out is not None:
            for piece in pieces:
                self.out.write(piece)
        if not choices.done:
            return
        if self.out is None:
            status, body = choices.whole()
            headers = self.model.response_headers if status == 200 else b""
            self.conn.send(status, body, extra_headers=headers, req=self.req)
        self._close()

    def _close(self) -> None:
        self.done = True
        if self.choices is not None:
            usage = self.choices.usage()
            self.app.usage.tokens(self.who, usage["prompt_tokens"], usage["completion_tokens"])
        if self.out is not None:
            self.out.end()
        self.meter.end()
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
