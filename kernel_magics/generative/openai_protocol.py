"""OpenAI's completion answers, encoded once for every server that answers them.

The built-in worker (``openai_api.py``, on its own HTTP protocol) and the Ray target's model
replicas (``serving/ray_app.py`` through ``stream.py``) both read a request with
``openai_requests`` and turn the engine's events into its answer with ``Choices`` (errors:
``error_answer``); only how bytes reach the client differs. Knows no HTTP server.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

import orjson

from kernel_magics.errors import KernelMagicsError, Overloaded
from kernel_magics.generative.logprobs import ChoiceLogprobs, Vocabulary
from kernel_magics.generative.sampling import TokenLogprob

if TYPE_CHECKING:
    from kernel_magics.serving.request.model import LoadedModel

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

    def whole(self, choices: list[tuple[str, str, dict | None]], usage: dict) -> bytes:
        """The whole answer: each choice's ``(text, finish_reason, logprobs)`` in index
        order."""
        if self.chat:
            doc = self._head("chat.completion")
            listed: list[dict[str, Any]] = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
                for i, (text, finish, logprobs) in enumerate(choices)
            ]
        else:
            doc = self._head("text_completion")
            listed = [
                {"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}
                for i, (text, finish, logprobs) in enumerate(choices)
            ]
        return orjson.dumps(doc | {"choices": listed, "usage": usage})

    def chunk(
        self,
        delta: str,
        finish: str | None,
        index: int = 0,
        first: bool = False,
        usage: dict | None = None,
        logprobs: dict | None = None,
    ) -> bytes:
        """One ``data:`` event of choice ``index``; the last one carries ``usage``."""
        if self.chat:
            part: dict[str, Any] = {"content": delta}
            if first:
                part["role"] = "assistant"
            choice: dict[str, Any] = {"index": index, "delta": part}
            choice |= {"logprobs": logprobs, "finish_reason": finish}
            doc = self._head("chat.completion.chunk")
        else:
            choice = {"index": index, "text": delta, "logprobs": logprobs, "finish_reason": finish}
            doc = self._head("text_completion")
        doc["choices"] = [choice]
        if usage is not None:
            doc["usage"] = usage
        return b"data: " + orjson.dumps(doc) + b"\n\n"


class Choices:
    """One request's choices as the engine's events come in (``event``): the server-sent events
    a stream writes now, and once every choice has ended the whole answer (``whole``)."""

    def __init__(
        self, chat: bool, model: LoadedModel, seqs: list[Any], prompt_tokens: int, stream: bool
    ) -> None:
        """``model``: the version answering (its ``NAME@V`` labels the answer; its tokenizer
        gives the texts of tokens, for log-probabilities and ``echo``)."""
        vocabulary: Vocabulary = model.generator
        label = f"{model.name}@{model.version}"
        self.answer = Completion(chat, label)
        self.seqs, self.prompt_tokens, self.stream = seqs, prompt_tokens, stream
        self._index = {id(seq): i for i, seq in enumerate(seqs)}
        self.texts: list[list[str]] = [[] for _ in seqs]
        self.finish: list[str | None] = [None] * len(seqs)
        self.logprobs = [
            None
            if s.params.logprobs is None
            else ChoiceLogprobs(chat, vocabulary, s.params.logprobs)
            for s in seqs
        ]
        # the prompt's text, to go out first where the request asks for it (``echo``)
        self.echoes = [vocabulary.text(s.prompt_ids) if s.params.echo else "" for s in seqs]

    def index(self, seq: Any) -> int:
        return self._index[id(seq)]

    @property
    def done(self) -> bool:
        return None not in self.finish

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.seqs)

    def event(
        self,
        seq: Any,
        delta: str,
        finish: str | None,
        logprobs: list[TokenLogprob] | None = None,
    ) -> list[bytes]:
        """Record one event of ``seq``; what a stream sends for it (nothing when not one). A
        chunk carries the log-probabilities of the tokens it brings (the last chunk those of
        tokens whose text a stop string cut)."""
        i = self.index(seq)
        if self.echoes[i]:
            delta, self.echoes[i] = self.echoes[i] + delta, ""
        tracked = self.logprobs[i]
        part = tracked.add(logprobs) if tracked is not None and logprobs else None
        out = []
        if self.stream and (delta or finish is None):
            first = not self.texts[i]
            out.append(self.answer.chunk(delta, None, index=i, first=first, logprobs=part))
            part = None
        self.texts[i].append(delta)
        if finish is None:
            return out
        self.finish[i] = finish
        if self.stream:
            usage = self.usage() if self.done else None
            out.append(self.answer.chunk("", finish, index=i, usage=usage, logprobs=part))
            if self.done:
                out.append(DONE)
        return out

    def usage(self) -> dict:
        return Completion.usage(self.prompt_tokens, self.completion_tokens)

    def whole(self) -> tuple[int, bytes]:
        """The status and body of the answer (not streamed) once every choice has ended: an
        error where one ended without its text."""
        for finish in self.finish:
            failed = ended_badly(str(finish))
            if failed is not None:
                return failed
        choices = [
            ("".join(texts), str(finish), None if logprobs is None else logprobs.whole())
            for texts, finish, logprobs in zip(self.texts, self.finish, self.logprobs, strict=True)
        ]
        return 200, self.answer.whole(choices, self.usage())


def ended_badly(finish: str) -> tuple[int, bytes] | None:
    """A generation that ended without its text (the engine aborted it or failed): the status
    and error a whole (not streamed) answer gets; None for ``stop`` and ``length``."""
    if finish in ("stop", "length"):
        return None
    status = 503 if finish == "abort" else 500
    return status, error_json(status, f"generation ended: {finish}")
