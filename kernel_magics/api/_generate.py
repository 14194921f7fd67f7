"""Generating text from a served language model, streamed from the inference process."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kernel_magics.api._context import _settings, _target
from kernel_magics.config import Settings
from kernel_magics.errors import (
    InvalidInput,
    KernelMagicsError,
    NotFound,
    Overloaded,
    ServiceUnavailable,
)
from kernel_magics.views import front_end_view

_ERRORS: dict[int, type[KernelMagicsError]] = {400: InvalidInput, 404: NotFound, 429: Overloaded}


@dataclass(frozen=True)
class Generation:
    """What ``generate`` produced and how fast (client side, over HTTP)."""

    model: str  # NAME@VERSION that answered
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float  # request sent → first text
    seconds: float  # request sent → last chunk

    @property
    def tokens_per_s(self) -> float:
        decode = self.seconds - self.ttft_s
        return (
            (self.completion_tokens - 1) / decode
            if decode > 0 and self.completion_tokens > 1
            else 0.0
        )

    def _repr_html_(self) -> str | None:
        return front_end_view(self, "text/html")


def generate(
    model: str,
    prompt: str,
    *,
    max_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    stop: list[str] | None = None,
    on_text: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
    settings: Settings | None = None,
) -> Generation:
    """Stream a completion of ``prompt`` from ``model`` (``NAME`` or ``NAME@VERSION``, deployed
    on the serving target); ``on_text(piece)`` is called as each piece arrives. Setting
    ``cancel`` closes the stream at the next piece (the server frees the sequence's slot) and
    returns what came so far, with ``finish_reason`` "cancelled"."""
    body = {"prompt": prompt} | _sampling(max_tokens, temperature, top_p, top_k, seed, stop)
    return _stream("/v1/completions", model, body, on_text, cancel, settings)


def chat(
    model: str,
    messages: list[dict[str, str]],
    *,
    max_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    stop: list[str] | None = None,
    on_text: Callable[[str], None] | None = None,
    cancel: threading.Event | None = None,
    settings: Settings | None = None,
) -> Generation:
    """Stream the assistant's next message after ``messages`` (``{"role", "content"}`` dicts,
    OpenAI's shape) from ``POST /v1/chat/completions``: the server renders them with the
    tokenizer's chat template (or the plain one of docs/generative.md). ``on_text`` and
    ``cancel`` as for ``generate``."""
    body = {"messages": messages} | _sampling(max_tokens, temperature, top_p, top_k, seed, stop)
    return _stream("/v1/chat/completions", model, body, on_text, cancel, settings)


def _sampling(
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int,
    seed: int | None,
    stop: list[str] | None,
) -> dict[str, Any]:
    return {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "seed": seed,
        "stop": stop or None,
        "stream": True,
    }


def _piece(chunk: dict) -> str:
    """The text a chunk adds: ``text`` (completions) or ``delta.content`` (chat)."""
    choice = (chunk.get("choices") or [{}])[0]
    if "delta" in choice:
        return str(choice["delta"].get("content") or "")
    return str(choice.get("text") or "")


def _stream(
    path: str,
    model: str,
    body: dict[str, Any],
    on_text: Callable[[str], None] | None,
    cancel: threading.Event | None,
    settings: Settings | None,
) -> Generation:
    serving = _target(_settings(settings))
    url = serving.url
    if url is None:
        raise ServiceUnavailable("the inference process is not running: %deploy a model first")
    request = urllib.request.Request(
        f"{url}{path}",
        data=json.dumps({"model": model} | body).encode(),
        # the target's own token: the built-in process's, none on Ray
        headers={
            "content-type": "application/json",
            "authorization": f"Bearer {serving.http.token()}",
        },
    )
    started = time.perf_counter()
    first = 0.0
    pieces: list[str] = []
    last: dict = {}
    cancelled = False
    try:
        # leaving the ``with`` early closes the connection: the server sees the client gone
        # and frees the sequence's slot at its next step
        with urllib.request.urlopen(request, timeout=_settings(settings).request_timeout_s) as resp:
            for raw in resp:
                if cancel is not None and cancel.is_set():
                    cancelled = True
                    break
                line = raw.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                last = json.loads(line[6:])
                piece = _piece(last)
                if piece:
                    first = first or time.perf_counter()
                    pieces.append(piece)
                    if on_text is not None:
                        on_text(piece)
    except urllib.error.HTTPError as err:
        try:
            message = json.loads(err.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {err.code}"
        raise _ERRORS.get(err.code, ServiceUnavailable)(message) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
        raise ServiceUnavailable(f"the inference process did not answer: {err}") from None
    ended = time.perf_counter()
    usage = last.get("usage") or {}
    finish = "cancelled" if cancelled else (last.get("choices") or [{}])[0].get("finish_reason")
    return Generation(
        model=str(last.get("model", model)),
        text="".join(pieces),
        finish_reason=str(finish),
        prompt_tokens=int(usage.get("prompt_tokens", 0)),
        # a cancelled stream has no usage chunk: its pieces are what it received
        completion_tokens=int(usage.get("completion_tokens", len(pieces))),
        ttft_s=(first or ended) - started,
        seconds=ended - started,
    )
