"""The prompts of one prefill forward, each distinct prompt computed once.

Requests often send the same prompt at the same time: several samples of one prompt (each with
its own seed or temperature), a client's retry, an evaluation's fixed prompts, a chat front
end's opening message. A prompt's keys, values and last-position logits depend on its tokens
only, so the prefill computes a prompt once, in the slot of the first request that sent it; the
others get a copy of its cache rows in their own slots and its logits, and sample their first
token from them with their own parameters. Only whole prompts are matched, and only within one
forward (the group it started with and the requests that join it): a prompt is not kept once
its forward is over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from kernel_magics.generative.cache import SlotCache
    from kernel_magics.generative.sequence import Sequence


class SharedPrefill:
    """Built per prefill forward: ``add`` each group that enters it, ``finish`` with its logits."""

    def __init__(self) -> None:
        self.computed: list[Sequence] = []  # in the forward's row order
        self.copies: list[tuple[Sequence, Sequence]] = []  # (computed source, sharing sequence)
        self._by_prompt: dict[tuple[tuple[int, ...], int | None], Sequence] = {}

    def add(self, group: list[Sequence]) -> list[Sequence]:
        """The sequences of ``group`` whose prompt the forward does not have yet: to compute. A
        prompt whose own log-probabilities a request wants (``echo``) is shared only with one
        that wants the same."""
        fresh = []
        for seq in group:
            params = seq.params
            scored = params.logprobs if params.scores_prompt else -1
            source = self._by_prompt.setdefault((tuple(seq.prompt_ids), scored), seq)
            if source is seq:
                fresh.append(seq)
            else:
                self.copies.append((source, seq))
        self.computed.extend(fresh)
        return fresh

    def finish(self, logits: torch.Tensor, cache: SlotCache) -> tuple[list[Sequence], torch.Tensor]:
        """Every sequence of the forward and its logits row (``logits``: the computed ones', in
        order); the sharing sequences' cache rows are copied from their sources' slots."""
        if not self.copies:
            return self.computed, logits
        row = {id(seq): index for index, seq in enumerate(self.computed)}
        sources = [source for source, _ in self.copies]
        sharing = [seq for _, seq in self.copies]
        longest = max(s.prompt_tokens for s in sharing)
        cache.copy_prompts([s.slot for s in sources], [s.slot for s in sharing], longest)
        shared_logits = logits[torch.tensor([row[id(s)] for s in sources])]
        return self.computed + sharing, torch.cat((logits, shared_logits))


# logits [end - start, vocab] of rows ``start..end`` of the scored prompts' positions, in order
PositionLogits = Callable[[int, int], torch.Tensor]


@dataclass(frozen=True)
class Prefilled:
    """What a prefill hands back: the logits of each prompt's last token [prompts, vocab]
    (those of prompts that joined it follow, in order), and those of every position of the
    prompts ``PromptBatch.scored`` names (``echo``), a block of rows when asked: a long prompt's
    ``[length, vocabulary]`` at once would be large (4,096 tokens of a 152 k vocabulary in
    bfloat16 ≈ 1.2 GB)."""

    last: torch.Tensor
    positions: PositionLogits


@dataclass(frozen=True)
class PromptBatch:
    """Prompts laid end to end (``tokens`` [total]), as the prefill's matrix products take them:
    no row is spent on padding. Attention reads them right-padded to the longest prompt
    (``padded_index``), where causality keeps each prompt to its own earlier tokens. A prompt
    whose start came from the prefix cache (``starts``) holds only its remaining tokens, which
    sit after that start and attend to it too. What is derived from the lengths is computed
    once (the prefill reads it at every layer)."""

    tokens: torch.Tensor  # [total]
    lengths: list[int]  # tokens to compute, per prompt
    slots: torch.Tensor  # [prompts] the cache slot each prompt is written to
    starts: list[int]  # per prompt, the tokens already in its slot (prefix cache)
    scored: list[bool]  # per prompt, whether every position's logits are wanted (``echo``)

    @cached_property
    def cached(self) -> bool:
        """Some prompt starts after tokens already in its slot."""
        return any(self.starts)

    @cached_property
    def longest(self) -> int:
        return max(self.lengths)

    @cached_property
    def positions(self) -> torch.Tensor:
        """Each token's position in its prompt [total]."""
        return torch.cat(
            [torch.arange(n) + start for n, start in zip(self.lengths, self.starts, strict=True)]
        )

    @cached_property
    def token_slots(self) -> torch.Tensor:
        """Each token's cache slot [total]."""
        return self.slots.repeat_interleave(torch.tensor(self.lengths))

    @cached_property
    def kv_length(self) -> int:
        """Positions attended by the longest prompt, its cached start included."""
        return max(n + start for n, start in zip(self.lengths, self.starts, strict=True))

    @cached_property
    def attend_mask(self) -> torch.Tensor:
        """Which cache positions each padded query row attends [prompts, 1, longest,
        kv_length]: its prompt's cached start and its own tokens up to itself (padding rows
        attend as the last real one would, and are dropped)."""
        starts = torch.tensor(self.starts)[:, None, None, None]
        rows = torch.arange(self.longest)[None, None, :, None]
        return torch.arange(self.kv_length)[None, None, None, :] <= starts + rows

    @cached_property
    def padded_index(self) -> torch.Tensor:
        """Each token's row in the prompts right-padded to the longest, flattened [total]."""
        longest = self.longest
        return torch.cat([torch.arange(n) + row * longest for row, n in enumerate(self.lengths)])

    @cached_property
    def scored_rows(self) -> torch.Tensor:
        """The rows in ``tokens`` of the prompts whose every position's logits are wanted."""
        ends = torch.tensor(self.lengths).cumsum(0).tolist()
        return torch.cat(
            [
                torch.arange(end - n, end)
                for n, end, scored in zip(self.lengths, ends, self.scored, strict=True)
                if scored
            ]
            or [torch.zeros(0, dtype=torch.long)]
        )

    @cached_property
    def last(self) -> torch.Tensor:
        """Each prompt's last token's row in ``tokens`` [prompts]."""
        return torch.tensor(self.lengths).cumsum(0) - 1

    def padded(self) -> torch.Tensor:
        """The ids right-padded to the longest [prompts, longest] (for the model's own
        forward)."""
        ids = torch.zeros(len(self.lengths) * self.longest, dtype=torch.long)
        ids[self.padded_index] = self.tokens
        return ids.view(len(self.lengths), -1)

    @staticmethod
    def join(first: PromptBatch, then: PromptBatch) -> PromptBatch:
        return PromptBatch(
            torch.cat((first.tokens, then.tokens)),
            first.lengths + then.lengths,
            torch.cat((first.slots, then.slots)),
            first.starts + then.starts,
            first.scored + then.scored,
        )


def prompt_batch(seqs: list[Sequence]) -> PromptBatch:
    """The prompts of ``seqs``, each to be written into its sequence's slot after the start
    already there (``Sequence.cached``)."""
    tokens = torch.tensor([t for s in seqs for t in s.prompt_ids[s.cached :]], dtype=torch.long)
    slots = torch.tensor([s.slot for s in seqs])
    lengths = [s.prompt_tokens - s.cached for s in seqs]
    scored = [s.params.scores_prompt for s in seqs]
    return PromptBatch(tokens, lengths, slots, [s.cached for s in seqs], scored)
