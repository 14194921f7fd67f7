"""A completion as an async iterator on the caller's event loop: what a server that relays an
iterator's items to its client answers (the Ray target's model replicas, ``serving/ray_app.py``).

The iterator yields the answer's head first, ``(status, content type, headers)``, then its
body's pieces: each server-sent event of a stream as it comes, or the whole answer. Shapes and
errors are ``openai_protocol``'s, as on the built-in worker's routes. Closing the iterator early
(the client went away) cancels the sequence, which frees its slot at the engine's next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from kernel_magics.errors import KernelMagicsError
from kernel_magics.generative.openai_protocol import (
    DONE,
    EVENT_STREAM,
    Completion,
    ended_badly,
    error_answer,
    params_of,
    prompt_of,
)
from kernel_magics.generative.sequence import Sequence

if TYPE_CHECKING:
    from kernel_magics.serving.request.model import LoadedModel

JSON = "application/json"
Head = tuple[int, str, dict[str, str]]  # status, content type, headers


async def failure(err: KernelMagicsError) -> AsyncIterator[Head | bytes]:
    status, headers, body = error_answer(err)
    yield status, JSON, headers
    yield body


async def completion(model: LoadedModel, body: dict, chat: bool) -> AsyncIterator[Head | bytes]:
    """``model``'s answer to one decoded request ``body`` (``/v1/completions``, or
    ``/v1/chat/completions`` when ``chat``)."""
    generator = model.generator
    events: asyncio.Queue[tuple[str, str | None]] = asyncio.Queue()
    try:
        params = params_of(body)
        ids = generator.encode(prompt_of(generator, body, chat))
        generator.engine.check_length(len(ids), params.max_tokens)
        seq = Sequence(
            ids,
            params,
            lambda _seq, delta, finish: events.put_nowait((delta, finish)),
            post=asyncio.get_running_loop().call_soon_threadsafe,
            keep=chat,  # a chat's next turn starts with this one (prefix cache)
        )
        generator.engine.submit(seq)
    except KernelMagicsError as err:
        async for item in failure(err):
            yield item
        return
    model.inflight.enter()
    tags = {"x-model-name": model.name, "x-model-version": str(model.version)}
    answer = Completion(chat, f"{model.name}@{model.version}")
    stream = bool(body.get("stream"))
    finish: str | None = None
    try:
        if stream:
            yield 200, EVENT_STREAM, tags
        text: list[str] = []
        while finish is None:
            delta, finish = await events.get()
            if stream and (delta or finish is None):
                yield answer.chunk(delta, None, first=not text)
            text.append(delta)
        usage = Completion.usage(seq.prompt_tokens, seq.completion_tokens)
        if stream:
            yield answer.chunk("", finish, usage=usage)
            yield DONE
            return
        failed = ended_badly(finish)
        if failed is not None:
            yield failed[0], JSON, tags
            yield failed[1]
        else:
            yield 200, JSON, tags
            yield answer.whole("".join(text), finish, usage)
    finally:
        if finish is None:
            seq.cancelled = True  # closed before the end: the client is gone
        model.inflight.leave()
