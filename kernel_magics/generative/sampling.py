"""Sampling parameters of one request and the token choice for each running sequence.

Greedy (``temperature`` 0) is an argmax over the batch; sampled rows go through temperature,
top-k and top-p and draw with the sequence's own ``torch.Generator``: with a ``seed`` the same
request gives the same tokens whatever else runs beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernel_magics.errors import InvalidInput

MAX_STOP_STRINGS = 4  # as OpenAI's API
MAX_STOP_CHARS = 200


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # OpenAI's: subtracted from a token's logit once it is in the completion (presence), and
    # per time it is there (frequency); the prompt's tokens are not counted (as vLLM)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty)

    def check(self) -> SamplingParams:
        """Raise InvalidInput naming the first field out of range."""
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int):
            raise InvalidInput("max_tokens must be an integer")
        if self.max_tokens < 1:
            raise InvalidInput(f"max_tokens must be at least 1, got {self.max_tokens}")
        _number("temperature", self.temperature, 0.0, 2.0)
        _number("top_p", self.top_p, 0.0, 1.0)
        _number("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _number("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if self.top_p == 0.0:
            raise InvalidInput("top_p must be above 0")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidInput(f"top_k must be an integer >= 0, got {self.top_k!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise InvalidInput(f"seed must be an integer, got {self.seed!r}")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidInput(f"stop takes at most {MAX_STOP_STRINGS} strings")
        for s in self.stop:
            if not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS:
                raise InvalidInput(
                    f"each stop string must be non-empty text of at most {MAX_STOP_CHARS} chars"
                )
        return self


def _number(name: str, value: object, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{name} must be a number, got {value!r}")
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low:g} and {high:g}, got {value}")


def generator_for(params: SamplingParams) -> torch.Generator | None:
    """The sequence's random stream: seeded when asked, else from the global one."""
    if params.greedy:
        return None
    gen = torch.Generator()
    gen.manual_seed(params.seed if params.seed is not None else int(torch.seed()))
    return gen


def choose(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    completions: list[list[int]] | None = None,
) -> list[int]:
    """One next token per row of ``logits`` ([rows, vocab]); ``completions``: each row's
    tokens so far, for the rows with a presence or frequency penalty."""
    chosen = logits.argmax(dim=-1).tolist()
    for row, (p, gen) in enumerate(zip(params, generators, strict=True)):
        if p.greedy and not p.penalized:
            continue
        scores = logits[row].float()
        if p.penalized and completions is not None and completions[row]:
            counts = torch.bincount(torch.tensor(completions[row]), minlength=scores.shape[-1])
            scores = scores - p.frequency_penalty * counts - p.presence_penalty * (counts > 0)
        if p.greedy:
            chosen[row] = int(scores.argmax())
            continue
        scores = scores / p.temperature
        if p.top_k:
            kth = torch.topk(scores, min(p.top_k, scores.shape[-1])).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            # keep the smallest prefix whose mass reaches top_p (the first token always)
            drop = sorted_probs.cumsum(-1) - sorted_probs >= p.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        chosen[row] = int(torch.multinomial(probs, 1, generator=gen))
    return chosen
