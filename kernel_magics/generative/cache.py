"""The KV cache of the running batch: one preallocated row ("slot") per running sequence.

Each layer holds keys and values as ``[slots, kv_heads, capacity, head_dim]``. The running
sequences always occupy slots ``0..n-1`` (a finished sequence's slot is filled by the last
one), so a decode step attends over the view ``[:n, :, :longest]`` without copying the batch
together. Sequences of different lengths share that forward: each writes its new key at its
own position and the additive mask hides the positions past its length. The capacity grows
(doubling, up to the model's context length) with the longest reservation admitted.

The model calls ``update`` once per layer (transformers' ``Cache`` protocol for the attention
of Llama-like architectures); the engine sets ``mode`` before each forward.
"""

from __future__ import annotations

from typing import Any

import torch

_MIN_CAPACITY = 64


class SlotCache:
    """Not thread-safe: only the engine thread touches it."""

    def __init__(
        self, layers: int, slots: int, kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> None:
        self.layers, self.slots, self.kv_heads, self.head_dim = layers, slots, kv_heads, head_dim
        self.dtype = dtype
        self.capacity = 0
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        # bfloat16/float16: one layer's keys and values in float32, where a decode step's
        # attention reads them (``decode._attend_step``)
        self.scratch: tuple[torch.Tensor, torch.Tensor] | None = None
        # set by the engine before each forward
        self.prefill_slots: torch.Tensor | None = None  # prefill: the slot of each new prompt
        self.rows = 0  # decode: slots 0..rows-1 take one token each
        self.positions: torch.Tensor | None = None  # decode: where each row writes
        self.kv_len = 0  # decode: keys attended (the longest running sequence + 1)
        self._arange = torch.arange(slots)

    # -- memory ------------------------------------------------------------------------------
    def reserve(self, tokens: int) -> None:
        """Make room for a sequence of ``tokens`` tokens (prompt + completion) in every slot."""
        if tokens <= self.capacity:
            return
        capacity = max(_MIN_CAPACITY, self.capacity)
        while capacity < tokens:
            capacity *= 2
        shape = (self.slots, self.kv_heads, capacity, self.head_dim)
        keys = [torch.zeros(shape, dtype=self.dtype) for _ in range(self.layers)]
        values = [torch.zeros(shape, dtype=self.dtype) for _ in range(self.layers)]
        if self.capacity:
            for old, new in zip(self.keys + self.values, keys + values, strict=True):
                new[:, :, : self.capacity].copy_(old)
        self.keys, self.values, self.capacity = keys, values, capacity
        if self.dtype != torch.float32:
            # Kept, not made per step: fresh multi-megabyte temporaries come from new pages
            # every time (glibc maps them), which at 120 cached tokens made a 29 M model's
            # 16-row bfloat16 step take 31 instead of 18 ms (one thread).
            self.scratch = (torch.empty(shape), torch.empty(shape))

    @property
    def bytes(self) -> int:
        scratch = list(self.scratch or ())
        return sum(t.numel() * t.element_size() for t in self.keys + self.values + scratch)

    def move(self, source: int, dest: int, length: int) -> None:
        """Slot ``source``'s first ``length`` positions into slot ``dest`` (compaction)."""
        for tensor in self.keys + self.values:
            tensor[dest, :, :length].copy_(tensor[source, :, :length])

    def copy_prompts(self, sources: list[int], dests: list[int], length: int) -> None:
        """The first ``length`` positions of each source slot into its dest slot (prompts
        shared within a prefill: ``prompts.SharedPrefill``)."""
        src, dst = torch.tensor(sources), torch.tensor(dests)
        for tensor in self.keys + self.values:
            tensor[dst, :, :length] = tensor[src, :, :length]

    def read_prompt(self, slot: int, length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """A copy of slot ``slot``'s first ``length`` positions, per layer [kv_heads, length,
        head_dim] (``prefix_cache.PrefixCache.store``)."""
        keys = [t[slot, :, :length].clone() for t in self.keys]
        return keys, [t[slot, :, :length].clone() for t in self.values]

    def load_prompt(
        self, slot: int, keys: list[torch.Tensor], values: list[torch.Tensor], length: int
    ) -> None:
        """The first ``length`` positions of per-layer ``keys`` and ``values`` into slot
        ``slot`` (``prefix_cache.PrefixCache.load``)."""
        for tensor, stored in zip(self.keys + self.values, keys + values, strict=True):
            tensor[slot, :, :length].copy_(stored[:, :length])

    def write_prompts(
        self, layer: int, slots: torch.Tensor, positions: torch.Tensor, key: torch.Tensor,
        value: torch.Tensor,
    ) -> None:  # fmt: skip
        """Prompt tokens' keys and values [tokens, kv_heads, head_dim], token ``i`` into slot
        ``slots[i]`` at ``positions[i]`` (a prefill after a cached start)."""
        self.keys[layer][slots, :, positions] = key
        self.values[layer][slots, :, positions] = value

    def prompt_view(
        self, layer: int, slots: torch.Tensor, length: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``slots``' first ``length`` positions [prompts, kv_heads,
        length, head_dim] (gathered, a copy)."""
        return self.keys[layer][slots, :, :length], self.values[layer][slots, :, :length]

    # -- transformers' Cache protocol (what the attention layers call) -----------------------
    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self.prefill_slots is not None:  # key: [new prompts, heads, longest prompt, dim]
            slots, length = self.prefill_slots, key.shape[2]
            keys[slots, :, :length] = key
            values[slots, :, :length] = value
            return key, value  # a prompt attends to itself only
        rows, positions = self._arange[: self.rows], self.positions
        keys[rows, :, positions] = key[:, :, 0]
        values[rows, :, positions] = value[:, :, 0]
        return keys[: self.rows, :, : self.kv_len], values[: self.rows, :, : self.kv_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.kv_len

    def __len__(self) -> int:
        return self.layers

    @property
    def is_compileable(self) -> bool:
        return False
