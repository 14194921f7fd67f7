"""Sampling parameters of one request and the token choice for each running sequence.

Greedy (``temperature`` 0) is an argmax over the batch; sampled rows go through temperature,
top-k and top-p and draw with the sequence's own ``torch.Generator``: with a ``seed`` the same
request gives the same tokens whatever else runs beside it. ``logit_bias`` and the two
penalties change a row's logits before either choice. The log-probabilities a request asks
for (``logprobs_of``) are the model's own, before any of these (as vLLM reports by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from kernel_magics.errors import InvalidInput

if TYPE_CHECKING:
    from kernel_magics.generative.prompts import PositionLogits

MAX_STOP_STRINGS = 4  # as OpenAI's API
MAX_STOP_CHARS = 200
MAX_LOGPROBS = 20  # alternatives per token (OpenAI's top_logprobs; vLLM's default limit)
MAX_LOGIT_BIAS = 300  # tokens one request may bias (as OpenAI's API)
SCORE_ROWS = 256  # prompt positions scored at a time (``prompt_logprobs``)
# a token, its log-probability and the most likely tokens' (id, log-probability) at its place;
# a prompt's first token has neither (nothing comes before it)
TokenLogprob = tuple[int, float | None, tuple[tuple[int, float], ...]]


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
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    logprobs: int | None = None  # alternatives reported per token; None: no log-probabilities
    echo: bool = False  # the answer starts with the prompt (and its log-probabilities, asked)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty)

    @property
    def scores_prompt(self) -> bool:
        """Whether the prompt's own tokens' log-probabilities are wanted (``echo``)."""
        return self.echo and self.logprobs is not None

    @property
    def adjusted(self) -> bool:
        """Whether the row's logits change before the choice (a bias or a penalty)."""
        return self.penalized or bool(self.logit_bias)

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
        if self.logprobs is not None and (
            isinstance(self.logprobs, bool)
            or not isinstance(self.logprobs, int)
            or not 0 <= self.logprobs <= MAX_LOGPROBS
        ):
            raise InvalidInput(
                f"the number of log-probabilities per token must be an integer from 0 to "
                f"{MAX_LOGPROBS}, got {self.logprobs!r}"
            )
        if not isinstance(self.echo, bool):
            raise InvalidInput(f"echo must be true or false, got {self.echo!r}")
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise InvalidInput(f"logit_bias takes at most {MAX_LOGIT_BIAS} tokens")
        for _, bias in self.logit_bias:
            _number("a logit_bias value", bias, -100.0, 100.0)
        if self.seed is not None and (
            isinstance(self.seed, bool)
            or not isinstance(self.seed, int)
            or not -(2**63) <= self.seed < 2**63
        ):
            # (torch's generators take 64 bits; a request's copies add up to MAX_CHOICES)
            raise InvalidInput(f"seed must be a 64-bit signed integer, got {self.seed!r}")
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
        if p.greedy and not p.adjusted:
            continue
        scores = logits[row].float()
        if p.logit_bias:
            ids, biases = zip(*p.logit_bias, strict=True)
            scores = scores.index_add(
                0, torch.tensor(ids), torch.tensor(biases, dtype=scores.dtype)
            )
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


def logprobs_of(
    logits: torch.Tensor, params: list[SamplingParams], chosen: list[int]
) -> list[TokenLogprob | None]:
    """Each row's chosen token's log-probability and its ``logprobs`` most likely tokens', from
    the model's own logits (None for the rows that did not ask)."""
    out: list[TokenLogprob | None] = [None] * len(params)
    rows = [row for row, p in enumerate(params) if p.logprobs is not None]
    if not rows:
        return out
    table = torch.log_softmax(logits[rows].float(), dim=-1)
    for i, row in enumerate(rows):
        k = params[row].logprobs or 0
        top: tuple[tuple[int, float], ...] = ()
        if k:
            values, ids = torch.topk(table[i], min(k, table.shape[-1]))
            top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
        out[row] = (chosen[row], float(table[i, chosen[row]]), top)
    return out


def prompt_logprobs(
    logits: PositionLogits, prompt: list[int], alternatives: int
) -> list[TokenLogprob]:
    """Each of a prompt's tokens' log-probability given the tokens before it, and the
    ``alternatives`` most likely tokens at its place (``logits(start, end)``: the logits of
    the prompt's positions ``start..end`` [end - start, vocab]); the first token has none."""
    following = torch.tensor(prompt[1:])
    chosen: list[float] = []
    top_ids: list[list[int]] = [[] for _ in following]
    top_values: list[list[float]] = [[] for _ in following]
    # in blocks of rows: a float32 copy of [prompt, vocabulary] at once would be large
    for start in range(0, len(following), SCORE_ROWS):
        end = min(start + SCORE_ROWS, len(following))
        table = torch.log_softmax(logits(start, end).float(), dim=-1)
        chosen += table.gather(1, following[start:end, None])[:, 0].tolist()
        if alternatives:
            values, ids = torch.topk(table, min(alternatives, table.shape[-1]))
            top_ids[start:end], top_values[start:end] = ids.tolist(), values.tolist()
    out: list[TokenLogprob] = [(prompt[0], None, ())]
    for token, logprob, ids_at, values_at in zip(
        prompt[1:], chosen, top_ids, top_values, strict=True
    ):
        out.append((token, logprob, tuple(zip(ids_at, values_at, strict=True))))
    return out
