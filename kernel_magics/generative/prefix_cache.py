"""Prompts' keys and values kept after their prefill, so that a later request whose prompt
starts the same way computes only the rest (a prefix cache).

Requests repeat the start of their prompts: a system prompt or a chat template's opening before
every user message, a conversation's earlier turns before its newest message, an evaluation's
fixed prompts, a client's retry. A token's keys and values depend only on the tokens before it,
so they can be copied from an earlier prompt that starts with the same tokens instead of being
computed again. After each prefill forward the engine stores the prompts it computed
(``store``), and when a chat turn ends, its prompt and completion (the next turn's prompt starts
with both); before the next forward, each new prompt takes the longest usable start from here
(``load``), copied into its own cache slot, and the forward computes its remaining tokens
(``prompts.PromptBatch.starts``).

What matches:

- a prompt seen whole before: all but its last token (the forward computes the last one for
  the logits its first token is sampled from);
- a prompt that shares at least one whole block of ``BLOCK`` tokens with a stored one: those
  blocks (found by a hash chained over the block boundaries; the tokens themselves are
  compared before a match is used), then token by token as far as the stored prompt that holds
  the last of them goes on the same way. A shared start shorter than one block is computed.

Stored prompts are kept up to ``budget`` tokens in all (setting ``gen_prefix_cache_tokens``),
the least recently used going first. Each token costs the model's KV bytes per token (keys and
values of every layer). Only the engine thread touches a ``PrefixCache``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from kernel_magics.generative.cache import SlotCache

BLOCK = 16  # tokens per block matched by hash


class _Entry:
    __slots__ = ("blocks", "keys", "tokens", "values")

    def __init__(
        self,
        tokens: tuple[int, ...],
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        blocks: list[int],
    ) -> None:
        self.tokens, self.keys, self.values, self.blocks = tokens, keys, values, blocks


def _block_hashes(tokens: tuple[int, ...]) -> list[int]:
    """A hash per whole block of ``tokens``, each chained to the blocks before it."""
    hashes, previous = [], 0
    for end in range(BLOCK, len(tokens) + 1, BLOCK):
        previous = hash((previous, tokens[end - BLOCK : end]))
        hashes.append(previous)
    return hashes


class PrefixCache:
    def __init__(self, budget: int) -> None:
        self.budget = max(0, budget)
        self.tokens = 0  # held now
        self.hits = 0  # prompts that took a start from here
        self.reused = 0  # prompt tokens taken from here instead of computed
        self._whole: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()  # least recent first
        self._by_block: dict[int, _Entry] = {}

    def _match(self, prompt: tuple[int, ...]) -> tuple[_Entry | None, int]:
        """The stored entry with the longest usable start of ``prompt``, and its length."""
        usable = len(prompt) - 1  # the last token is always computed
        whole = self._whole.get(prompt)
        if whole is not None:
            return whole, usable
        best, matched = None, 0
        for count, digest in enumerate(_block_hashes(prompt[:usable]), start=1):
            entry = self._by_block.get(digest)
            length = count * BLOCK
            if entry is None or entry.tokens[:length] != prompt[:length]:
                break
            best, matched = entry, length
        if best is None:
            return None, 0
        # past the last whole block: the tokens the holder of that block shares with the prompt
        end = min(len(best.tokens), usable)
        while matched < end and best.tokens[matched] == prompt[matched]:
            matched += 1
        return best, matched

    def load(self, prompt: list[int], cache: SlotCache, slot: int) -> int:
        """Copy the longest stored start of ``prompt`` into ``slot``; its length (0: none)."""
        if not self._whole:
            return 0
        entry, length = self._match(tuple(prompt))
        if entry is None or length == 0:
            return 0
        self._whole.move_to_end(entry.tokens)
        cache.load_prompt(slot, entry.keys, entry.values, length)
        self.hits += 1
        self.reused += length
        return length

    def store(self, prompt: list[int], cache: SlotCache, slot: int) -> None:
        """Keep ``prompt``'s keys and values, read from ``slot`` (where its prefill wrote
        them), unless it is stored already or longer than the whole budget."""
        tokens = tuple(prompt)
        if tokens in self._whole:
            self._whole.move_to_end(tokens)
            return
        if len(tokens) > self.budget:
            return
        while self.tokens + len(tokens) > self.budget:
            self._evict()
        keys, values = cache.read_prompt(slot, len(tokens))
        entry = _Entry(tokens, keys, values, _block_hashes(tokens))
        self._whole[tokens] = entry
        for digest in entry.blocks:
            self._by_block[digest] = entry  # the newest holder: the last to be evicted
        self.tokens += len(tokens)

    def _evict(self) -> None:
        _, entry = self._whole.popitem(last=False)
        self.tokens -= len(entry.tokens)
        for digest in entry.blocks:
            if self._by_block.get(digest) is entry:
                del self._by_block[digest]

    def __contains__(self, prompt: object) -> bool:
        """Whether exactly these tokens (a tuple) are kept."""
        return prompt in self._whole

    def describe(self) -> dict[str, int]:
        return {
            "prefix_hits": self.hits,
            "prefix_tokens_reused": self.reused,
            "prefix_cache_tokens": self.tokens,
        }
