"""OpenAI's completion requests, decoded once for every server that answers them (the built-in
worker's ``openai_api.py``, the Ray replicas' ``stream.py``): the body, the model it names, each
choice's prompt tokens and sampling parameters. Errors are ``InvalidInput`` naming what is
wrong; the answers' shapes are ``openai_protocol``'s. Knows no HTTP server.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson

from kernel_magics.errors import InvalidInput
from kernel_magics.generative.sampling import SamplingParams

if TYPE_CHECKING:
    from kernel_magics.serving.request.model import LoadedModel

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
MAX_CHOICES = 16  # sequences one request may ask for: prompts x n


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
    if not _decimal(version):
        raise InvalidInput(f"model {ref!r}: the version after @ must be a number")
    return name, int(version)


def _decimal(text: str) -> bool:
    """ASCII digits only ("²".isdigit() is true, and int() refuses it)."""
    return text.isascii() and text.isdigit()


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
    copies differ, and the same request gives the same choices. A chat that sets no
    ``max_tokens`` may answer up to the rest of the model's room (``Engine.room``), as OpenAI's
    chat does, rather than ``DEFAULT_MAX_TOKENS``, the completions route's default."""
    params = params_of(body, chat, int(generator.model.config.vocab_size))
    n = body.get("n") or 1
    prompts = prompts_of(generator, body, chat)
    if chat and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        params = replace(params, max_tokens=max(1, generator.engine.room(len(prompts[0]))))
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
        token = int(key) if isinstance(key, str) and _decimal(key) else -1
        if token < 0 or (vocabulary is not None and token >= vocabulary):
            span = f" (0-{vocabulary - 1})" if vocabulary is not None else ""
            raise InvalidInput(f"logit_bias: {key!r} is not a token id of this model{span}")
        pairs.append((token, bias))
    return tuple(pairs)
