"""A completion as an async iterator on the caller's event loop: what a server that relays an
iterator's items to its client answers (the Ray target's model replicas, ``serving/ray_app.py``).

The iterator yields the answer's head first, ``(status, content type, headers)``, then its
body's pieces: each server-sent event of a stream as it comes, or the whole answer. Shapes and
errors are ``openai_protocol``'s, as on the built-in worker's routes. Closing the iterator early
(the client went away) cancels the sequence, which frees its slot at the engine's next step.
The request is metered as on the built-in worker (``meter.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from kernel_magics.errors import KernelMagicsError
from kernel_magics.generative.meter import Meter
from kernel_magics.generative.openai_protocol import EVENT_STREAM, Choices, error_answer
from kernel_magics.generative.openai_requests import choices_of
from kernel_magics.generative.sequence import Event, Sequence

if TYPE_CHECKING:
    from kernel_magics.serving.request.model import LoadedModel

JSON = "application/json"
Head = tuple[int, str, dict[str, str]]  # status, content type, headers


async def failure(err: KernelMagicsError) -> AsyncIterator[Head | bytes]:
    status, headers, body = error_answer(err)
    yield status, JSON, headers
    yield body


async def completion(
    model: LoadedModel, body: dict, chat: bool, t0: float
) -> AsyncIterator[Head | bytes]:
    """``model``'s answer to one decoded request ``body`` (``/v1/completions``, or
    ``/v1/chat/completions`` when ``chat``), metered into ``model.stats`` from ``t0`` (when the
    request arrived, ``time.perf_counter``)."""
    meter = Meter(model.stats, t0)
    events: asyncio.Queue[Event] = asyncio.Queue()
    try:
        plans, prompt_tokens = choices_of(model.generator, body, chat)
        post = asyncio.get_running_loop().call_soon_threadsafe
        seqs = [
            # a chat's next turn starts with this one (prefix cache)
            Sequence(ids, params, lambda *event: events.put_nowait(event), post=post, keep=chat)
            for ids, params in plans
        ]
        model.generator.engine.submit(*seqs)
    except KernelMagicsError as err:
        async for item in failure(err):
            yield item
        return
    model.inflight.enter()
    tags = {"x-model-name": model.name, "x-model-version": str(model.version)}
    stream = bool(body.get("stream"))
    choices = Choices(chat, model, seqs, prompt_tokens, stream)
    try:
        if stream:
            yield 200, EVENT_STREAM, tags
        while not choices.done:
            event = await events.get()
            meter.event(choices, event[0], event[1])
            for piece in choices.event(*event):
                yield piece
        if not stream:
            status, whole = choices.whole()
            yield status, JSON, tags if status == 200 else {}
            yield whole
    finally:
        if not choices.done:  # closed before the end: the client is gone
            for seq in seqs:
                seq.cancelled = True
        meter.end()
        model.inflight.leave()
