"""Prefill and decode step through the model's own forward, for the architectures that
``decode.DirectDecoder`` does not know. The ``SlotCache`` stands in for transformers' cache
(its ``update`` is the Cache protocol the attention layers call); prompts start at position 0
(no prefix cache on this path)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from kernel_magics.generative.prompts import Prefilled

if TYPE_CHECKING:
    from kernel_magics.generative.cache import SlotCache
    from kernel_magics.generative.prompts import PromptBatch


def prefill(model: Any, batch: PromptBatch, cache: SlotCache, keeps_logits: bool) -> Prefilled:
    """The prompts of ``batch`` right-padded through ``model``, each one's keys and values
    written into its slot; the logits at each prompt's last position [prompts, vocab], and
    those of every position of the prompts ``batch.scored`` names (``echo``). The model's
    forward makes the latter whole, ``[prompts, longest, vocab]`` (its output layer may do
    more than a product, so it is not called a block at a time here as the direct forward
    does). ``keeps_logits``: the model's forward takes ``logits_to_keep``."""
    ids, last = batch.padded(), [n - 1 for n in batch.lengths]
    prompts, length = ids.shape
    dtype = cache.dtype
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype)
    mask = mask.triu(1)[None, None].expand(prompts, 1, length, length)
    # only the positions that end a prompt go through the output layer (where the model takes
    # ``logits_to_keep``): the rest of a prompt's logits are never read
    scored = any(batch.scored)
    keep = sorted(set(last)) if keeps_logits and not scored else list(range(length))
    extra = {"logits_to_keep": torch.tensor(keep)} if keeps_logits and not scored else {}
    cache.prefill_slots = batch.slots
    try:
        out = model(
            input_ids=ids,
            position_ids=torch.arange(length)[None].expand(prompts, length),
            attention_mask=mask,
            cache=cache,
            use_cache=True,
            **extra,
        )
    finally:
        cache.prefill_slots = None
    columns = torch.tensor([keep.index(i) for i in last])
    logits = out.logits[torch.arange(prompts), columns]
    every = [out.logits[p, :n] for p, n in enumerate(batch.lengths) if batch.scored[p]]
    positions = torch.cat(every) if every else logits[:0]
    return Prefilled(logits, lambda start, end: positions[start:end])


def step(
    model: Any, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: SlotCache
) -> torch.Tensor:
    """One token per running row (the cache's ``rows``/``positions``/``kv_len`` set);
    logits [rows, vocab]."""
    out = model(
        input_ids=tokens[:, None],
        position_ids=positions[:, None],
        attention_mask=mask,
        cache=cache,
        use_cache=True,
    )
    return out.logits[:, -1]
