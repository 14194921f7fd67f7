"""One request's generation as the engine runs it (``Sequence``: prompt, parameters, tokens,
text, where its events go), and what of its text can go out after each token."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kernel_magics.generative.sampling import SamplingParams, TokenLogprob

Post = Callable[..., Any]  # post(fn, *args): run fn(*args) where the sequence's owner lives
# on_event(seq, text_delta, finish_reason or None, log-probabilities of the tokens since the
# previous event where the request asked for them, else None), run through ``post``
OnEvent = Callable[["Sequence", str, "str | None", "list[TokenLogprob] | None"], None]


def _direct(fn: Callable[..., Any], *args: Any) -> None:
    fn(*args)


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    on_event: OnEvent
    post: Post = _direct
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: bool = False  # set by the owner (a client gone); the engine drops it next step
    slot: int = -1
    cached: int = 0  # prompt tokens whose keys and values came from the prefix cache
    keep: bool = False  # a conversation's turn: kept in the prefix cache, completion included
    text: str = ""  # the completion's text so far
    sent: int = 0  # characters of the text already delivered
    detokenizer: Any = None  # the tokenizers library's DecodeStream, where the engine uses one
    generator: torch.Generator | None = None
    # the log-probabilities of tokens not yet handed to an event (``params.logprobs`` set): a
    # token whose text is held back goes out with the next event that has text
    logprobs: list[TokenLogprob] = field(default_factory=list)
    submitted: float = 0.0
    first_token_at: float = 0.0

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens)

    @property
    def reservation(self) -> int:
        return len(self.prompt_ids) + self.params.max_tokens


# what the engine hands ``on_event``: (sequence, text delta, finish reason or None,
# log-probabilities of its tokens since the last event where it asked for them, else None)
Event = tuple[Sequence, str, str | None, list[TokenLogprob] | None]


def releasable(
    text: str, stops: list[str] | tuple[str, ...], sent: int, finish: str | None
) -> tuple[str, int, str | None]:
    """What of the completion's ``text`` goes out now, past the ``sent`` characters already
    out: ``(delta, characters out after it, finish)``. The text is cut at the first stop
    string (which ends the sequence); until it ends, what could still become a stop string or
    an incomplete character is held back."""
    if stops:
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
    if finish is None:
        hold = max((len(s) - 1 for s in stops), default=0)
        end = len(text) - hold
        if text.endswith("\ufffd"):
            end = min(end, len(text) - 1)
        end = max(end, sent)
    else:
        end = len(text)
    return text[sent:end], end, finish
