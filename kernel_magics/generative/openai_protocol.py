"""OpenAI's completion shapes, decoded and encoded once for every server that answers them.

The built-in worker (``openai_api.py``, on its own HTTP protocol) and the Ray target's model
replicas (``serving/ray_app.py`` through ``stream.py``) both read a request with ``read_body``,
``model_ref`` and ``choices_of`` and turn the engine's events into its answer with ``Choices``
(errors: ``error_answer``); only how bytes reach the client differs. Knows no HTTP server.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson

from kernel_magics.errors import InvalidInput, KernelMagicsError, Overloaded
from kernel_magics.generative.logprobs import ChoiceLogprobs, Vocabulary
from kernel_magics.generative.sampling import SamplingParams, TokenLogprob

if TYPE_CHECKING:
    from kernel_magics.serving.request.model import LoadedModel

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_CHOICES = 16  # sequences one request may ask for: prompts x n
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
    "suffix": (None, ""),
    "best_of": (None, 1),
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
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise InvalidInput(f"n must be a positive integer, got {n!r}")
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


def prompts_of(generator: Any, body: dict, chat: bool) -> list[list[int]]:
    """The token ids to complete: the messages through the model's chat template, or
    ``prompt`` as OpenAI takes it (a text, a list of texts, a list of token ids, or a list of
    such lists; evaluation harnesses send token ids)."""
    if chat:
        return [generator.encode(str(generator.chat_prompt(body.get("messages"))))]
    value = body.get("prompt")
    prompts = [value] if isinstance(value, str) or _token_ids(value) else value
    if not isinstance(prompts, list) or not prompts:
        raise InvalidInput("prompt must be text, token ids, or a list of either")
    vocabulary = int(generator.model.config.vocab_size)
    out = []
    for prompt in prompts:
        if isinstance(prompt, str):
            out.append(generator.encode(prompt))
        elif not _token_ids(prompt):
            raise InvalidInput("prompt must be text, token ids, or a list of either")
        elif any(not 0 <= t < vocabulary for t in prompt):
            raise InvalidInput(
                f"a token id in prompt is outside the vocabulary (0-{vocabulary - 1})"
            )
        else:
            out.append(list(prompt))
    return out


def _token_ids(value: Any) -> bool:
    """A non-empty list of integers (not booleans)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def choices_of(
    generator: Any, body: dict, chat: bool
) -> tuple[list[tuple[list[int], SamplingParams]], int]:
    """Each choice's prompt token ids and sampling parameters, ``n`` per prompt (choice ``i``
    is prompt ``i // n``'s), and the prompts' tokens (each prompt counted once, as OpenAI's
    ``usage`` does). With a ``seed``, copy ``j`` of a prompt samples with ``seed + j``: the
    copies differ, and the same request gives the same choices."""
    params = params_of(body, chat, int(generator.model.config.vocab_size))
    n = body.get("n") or 1
    prompts = prompts_of(generator, body, chat)
    if len(prompts) * n > MAX_CHOICES:
        raise InvalidInput(
            f"{len(prompts)} prompt(s) x n={n} is over {MAX_CHOICES} choices per request"
        )
    for ids in prompts:
        generator.engine.check_length(len(ids), params.max_tokens)
    copies = [
        params if params.seed is None else replace(params, seed=params.seed + j) for j in range(n)
    ]
    return [(ids, copy) for ids in prompts for copy in copies], sum(len(ids) for ids in prompts)


def params_of(body: dict, chat: bool = False, vocabulary: int | None = None) -> SamplingParams:
    """A request's sampling parameters (``vocabulary``: the model's, which ``logit_bias``'s
    token ids must be in)."""
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
        presence_penalty=pick("presence_penalty", 0.0),
        frequency_penalty=pick("frequency_penalty", 0.0),
        logit_bias=_logit_bias(body.get("logit_bias"), vocabulary),
        logprobs=_logprobs(body, chat),
        echo=_echo(body.get("echo"), chat),
    ).check()


def _echo(value: Any, chat: bool) -> Any:
    """``echo`` (``/v1/completions``): the answer's text starts with the prompt, and with
    ``logprobs`` its log-probabilities start with the prompt's own."""
    if value is None:
        return False
    if chat and value is not False:
        raise InvalidInput("echo is for /v1/completions")
    return value


def _logprobs(body: dict, chat: bool) -> int | None:
    """The alternatives per token a request asks for; None where it asks no log-probabilities.
    Chat: ``logprobs: true`` and ``top_logprobs: N``; completions: ``logprobs: N``."""
    value, top = body.get("logprobs"), body.get("top_logprobs")
    if not chat:
        if top is not None:
            raise InvalidInput("top_logprobs is for /v1/chat/completions: here send logprobs: N")
        return None if value is None or value is False else value
    if value is None or value is False:
        if top not in (None, 0):
            raise InvalidInput("top_logprobs needs logprobs: true")
        return None
    if value is not True:
        raise InvalidInput(f"logprobs must be true or false, got {value!r}")
    return 0 if top is None else top


def _logit_bias(value: Any, vocabulary: int | None) -> tuple[tuple[int, float], ...]:
    """``{"token id": bias}`` as ``(id, bias)`` pairs, each id in the vocabulary."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise InvalidInput("logit_bias must be an object of token id: bias")
    pairs = []
    for key, bias in value.items():
        token = int(key) if isinstance(key, str) and key.isdigit() else -1
        if token < 0 or (vocabulary is not None and token >= vocabulary):
            span = f" (0-{vocabulary - 1})" if vocabulary is not None else ""
            raise InvalidInput(f"logit_bias: {key!r} is not a token id of this model{span}")
        pairs.append((token, bias))
    return tuple(pairs)


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
        self,
        chat: bool,
        label: str,
        seqs: list[Any],
        prompt_tokens: int,
        stream: bool,
        vocabulary: Vocabulary,
    ) -> None:
        """``vocabulary``: the texts of tokens, for log-probabilities and ``echo``."""
        self.answer = Completion(chat, label)
        self.seqs, self.prompt_tokens, self.stream = seqs, prompt_tokens, stream
        self._index = {id(seq): i for i, seq in enumerate(seqs)}
        self.texts: list[list[str]] = [[] for _ in seqs]
        self.finish: list[str | None] = [None] * len(seqs)
        self.logprobs = [
            None
            if s.params.logprobs is None
            else ChoiceLogprobs(chat, vocabulary.token_text, s.params.logprobs)
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
