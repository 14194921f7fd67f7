"""A direct forward for Llama-shaped models (Llama, Mistral, Qwen2): the prefill of new prompts
(which prompts arriving meanwhile can join between two layers) and the decode step (one new
token per running sequence), the same arithmetic as transformers' modules without their
per-layer Python.

At the sizes served on a CPU here the model's own forward spends most of a decode step in
Python (module calls, keyword plumbing, mask and output bookkeeping), not in arithmetic. This
forward calls the model's own weights through ``torch.nn.functional`` directly: the attention
projections and the MLP's gate and up projections as one matrix product each (``linear.py``
holds them, fused once at load, in the layout this CPU multiplies fastest), RMSNorm, rotary
embeddings (the model's own ``rotary_emb``, so any RoPE scaling the config sets applies),
attention over the slot cache. Architectures it does not recognise (``supports``) prefill and
decode through the model's forward as before.

The model is then a serving copy: its weights are views of the fused matrices, or emptied
where the packed copy is the only one (``linear.py``), so ``save_pretrained`` refuses it (the
inference process loads a version from the store and never saves it back).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kernel_magics.generative.cache import SlotCache
from kernel_magics.generative.linear import Linear, blocks, output_layer, packs
from kernel_magics.generative.prompts import Prefilled, PromptBatch

_TYPES = ("llama", "mistral", "qwen2")


def supports(model: Any) -> bool:
    """Whether ``model`` is a Llama-shaped causal LM this step reproduces exactly."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in _TYPES:
        return False
    if getattr(config, "hidden_act", None) != "silu" or getattr(config, "pretraining_tp", 1) > 1:
        return False
    window = getattr(config, "sliding_window", None)
    context = getattr(config, "max_position_embeddings", 0)
    if window and getattr(config, "use_sliding_window", True) and window < context:
        return False
    inner = getattr(model, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if inner is None or not all(hasattr(inner, n) for n in needed):
        return False
    if not hasattr(model, "lm_head"):
        return False
    attn = inner.layers[0].self_attn
    head_dim = attn.head_dim
    return bool(abs(attn.scaling - head_dim**-0.5) < 1e-12)


@dataclass(slots=True)
class _Layer:
    qkv: Linear  # query, key and value projections side by side
    o: Linear
    gate_up: Linear  # the MLP's gate and up projections side by side
    down: Linear
    norm1: torch.Tensor
    eps1: float
    norm2: torch.Tensor
    eps2: float


class DirectDecoder:
    """Built once per loaded model: ``prefill`` writes new prompts into the cache, ``step``
    decodes one token per running sequence; both return the logits of each row's last token."""

    def __init__(self, model: Any, blocked: bool = False) -> None:
        inner, config = model.model, model.config
        self.packed = packs(inner.embed_tokens.weight.dtype)
        # a blocked copy beside the plain one (``linear.py``), where packing is not the layout
        self.blocked = blocked and not self.packed and blocks()
        self.embed = inner.embed_tokens.weight
        self.rotary = inner.rotary_emb
        self.final_norm, self.final_eps = inner.norm.weight, inner.norm.variance_epsilon
        self.lm_head = output_layer(model, self.packed, self.blocked)
        attn0 = inner.layers[0].self_attn
        self.head_dim = attn0.head_dim
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.q_size = self.heads * self.head_dim
        self.kv_size = self.kv_heads * self.head_dim
        self.intermediate = inner.layers[0].mlp.gate_proj.weight.shape[0]
        self.layers: list[_Layer] = []
        pack, copy = self.packed, self.blocked
        for block in inner.layers:
            attn, mlp = block.self_attn, block.mlp
            self.layers.append(
                _Layer(
                    qkv=Linear(attn.q_proj, attn.k_proj, attn.v_proj, pack=pack, blocked=copy),
                    o=Linear(attn.o_proj, pack=pack, blocked=copy),
                    gate_up=Linear(mlp.gate_proj, mlp.up_proj, pack=pack, blocked=copy),
                    down=Linear(mlp.down_proj, pack=pack, blocked=copy),
                    norm1=block.input_layernorm.weight,
                    eps1=block.input_layernorm.variance_epsilon,
                    norm2=block.post_attention_layernorm.weight,
                    eps2=block.post_attention_layernorm.variance_epsilon,
                )
            )

    def set_up(self, max_step_rows: int) -> None:
        """oneDNN's products for the row counts a step or a prefill can have, at load
        (``linear.py``)."""
        with torch.inference_mode():
            for layer in self.layers:
                for linear in (layer.qkv, layer.o, layer.gate_up, layer.down):
                    linear.set_up(max_step_rows)
            if isinstance(self.lm_head, Linear):
                self.lm_head.set_up(max_step_rows)

    def step(
        self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: SlotCache
    ) -> torch.Tensor:
        """``tokens`` [rows], ``positions`` [rows], ``mask`` [rows, 1, 1, kv_len] additive;
        the cache's ``rows``/``positions``/``kv_len`` are set. Returns logits [rows, vocab]."""
        rows = tokens.shape[0]
        hidden = F.embedding(tokens, self.embed)  # [rows, hidden]
        cos, sin = self.rotary(hidden[:, None], positions[:, None])
        cos, sin = cos[:, None], sin[:, None]  # [rows, 1, 1, head_dim]
        gqa = self.heads != self.kv_heads
        reduced = cache.dtype != torch.float32
        for index, layer in enumerate(self.layers):
            x = _rms_norm(hidden, layer.norm1, layer.eps1)
            q, k, v = self._split(layer.qkv(x, step=True), rows, 1)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys, values = cache.update(k, v, index)
            if reduced:
                assert cache.scratch is not None
                out = _attend_step(q, keys, values, mask, cache.scratch)
            else:
                out = F.scaled_dot_product_attention(
                    q, keys, values, attn_mask=mask, enable_gqa=gqa
                )
            hidden = self._rest_of_layer(layer, hidden, out.reshape(rows, self.q_size), step=True)
        return self._logits(hidden, step=True)

    def prefill(
        self, batch: PromptBatch, cache: SlotCache, joining: Joining | None = None
    ) -> Prefilled:
        """The prompts of ``batch`` through every layer, each one's keys and values written
        into its slot; returns the logits of each prompt's last token, and those of every
        position of the prompts ``batch.scored`` names (``echo``) through the output layer a
        block at a time, when asked (``prompts.Prefilled``). The
        matrix products take the prompts end to end; attention takes them right-padded to the
        longest, where padding sits after a prompt's last token: causality hides it from the
        real positions, and decoding overwrites its keys before unmasking them.

        ``joining`` is asked between two layers for prompts that arrived meanwhile: they are
        brought through the layers done so far on their own, then go on in this forward, so
        that a prompt arriving during another's prefill does not wait for it to end. Their
        logits follow, in order."""
        hidden = F.embedding(batch.tokens, self.embed)  # [total, hidden]
        rope = self._rope(hidden, batch)
        for index in range(len(self.layers)):
            more = joining() if index and joining is not None else None
            if more is not None:
                caught_up = F.embedding(more.tokens, self.embed)
                more_rope = self._rope(caught_up, more)
                caught_up = self._layers(caught_up, more, cache, range(index), more_rope)
                hidden, batch = torch.cat((hidden, caught_up)), PromptBatch.join(batch, more)
                rope = (torch.cat((rope[0], more_rope[0])), torch.cat((rope[1], more_rope[1])))
            hidden = self._layers(hidden, batch, cache, range(index, index + 1), rope)
        # [scored positions, hidden]: small; none but where a prompt is scored (``echo``)
        scored = hidden[batch.scored_rows] if any(batch.scored) else hidden[:0]
        return Prefilled(
            self._logits(hidden[batch.last]), lambda start, end: self._logits(scored[start:end])
        )

    def _rope(self, hidden: torch.Tensor, batch: PromptBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary cos and sin at each token's position in its prompt, [total, 1, head_dim]."""
        cos, sin = self.rotary(hidden[None], batch.positions[None])
        return cos[0, :, None], sin[0, :, None]

    def _layers(
        self,
        hidden: torch.Tensor,
        batch: PromptBatch,
        cache: SlotCache,
        layers: range,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """``layers`` over the prompts of ``batch`` end to end [total, hidden], keys and
        values written to their slots."""
        total, prompts, longest = hidden.shape[0], len(batch.lengths), batch.longest
        index = batch.padded_index
        cos, sin = rope
        gqa = self.heads != self.kv_heads
        cache.prefill_slots = batch.slots

        def padded(t: torch.Tensor) -> torch.Tensor:  # [total, heads, dim] -> [p, heads, l, dim]
            out = t.new_zeros((prompts * longest, *t.shape[1:])).index_copy_(0, index, t)
            return out.view(prompts, longest, *t.shape[1:]).transpose(1, 2)

        try:
            for number in layers:
                layer = self.layers[number]
                x = _rms_norm(hidden, layer.norm1, layer.eps1)
                q, k, v = self._split(layer.qkv(x), total, 1)  # [total, heads, 1, dim]
                q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
                q = q * cos + _rotate_half(q) * sin
                k = k * cos + _rotate_half(k) * sin
                if batch.cached:  # after a cached start: attend to it in the slot as well
                    cache.write_prompts(number, batch.token_slots, batch.positions, k, v)
                    keys, values = cache.prompt_view(number, batch.slots, batch.kv_length)
                    causal: dict[str, Any] = {"attn_mask": batch.attend_mask}
                else:
                    keys, values = cache.update(padded(k), padded(v), number)
                    causal = {"is_causal": True}
                out = F.scaled_dot_product_attention(
                    padded(q), keys, values, enable_gqa=gqa, **causal
                )
                out = out.transpose(1, 2).reshape(prompts * longest, self.q_size)[index]
                hidden = self._rest_of_layer(layer, hidden, out)
        finally:
            cache.prefill_slots = None
        return hidden

    def _split(
        self, qkv: torch.Tensor, prompts: int, length: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key, value as [prompts, heads, length, head_dim] from one fused product."""
        q_size, kv_size, head_dim = self.q_size, self.kv_size, self.head_dim
        qkv = qkv.view(prompts, length, -1)
        q = qkv[..., :q_size].reshape(prompts, length, -1, head_dim)
        k = qkv[..., q_size : q_size + kv_size].reshape(prompts, length, -1, head_dim)
        v = qkv[..., q_size + kv_size :].reshape(prompts, length, -1, head_dim)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _rest_of_layer(
        self, layer: _Layer, hidden: torch.Tensor, attended: torch.Tensor, step: bool = False
    ) -> torch.Tensor:
        """The attention's output projection and the MLP, each added to the residual."""
        hidden = hidden + layer.o(attended, step)
        x = _rms_norm(hidden, layer.norm2, layer.eps2)
        gate, up = layer.gate_up(x, step).split(self.intermediate, dim=-1)
        return hidden + layer.down(F.silu(gate) * up, step)

    def _logits(self, hidden: torch.Tensor, step: bool = False) -> torch.Tensor:
        hidden = _rms_norm(hidden, self.final_norm, self.final_eps)
        head = self.lm_head
        return head(hidden, step) if isinstance(head, Linear) else torch.mm(hidden, head)


# asked between two prefill layers: the prompts that join, or None
Joining = Callable[[], "PromptBatch | None"]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def _attend_step(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    scratch: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """A decode step's attention in bfloat16 (or float16): each row's one query [rows, heads, 1,
    dim] over its cached keys and values [rows, kv_heads, kv_len, dim], ``mask`` [rows, 1, 1,
    kv_len] additive. ``scratch``: float32 room for one layer's keys and values, each at
    least as many elements as they have (``SlotCache.scratch``).

    Two batched products in float32 rather than ``F.scaled_dot_product_attention``, whose CPU
    kernel in bfloat16 spends most of its time on blocks set up for a long query. Measured
    here (16 rows, 8 heads of 64, caches evicted between calls, median of 150): 2 threads
    723 -> 653 µs at 40 cached tokens, 805 -> 699 at 75, 1,453 -> 1,087 at 150; 1 thread
    986 -> 814, 1,534 -> 1,091, 2,682 -> 1,739. In float32 the kernel is the faster (370
    against 505 µs at 40) and the step keeps it. The arithmetic is the kernel's: scores and
    softmax in float32, the unnormalised weights rounded to the cache's precision before
    they multiply the values, the sum divided out last, so that greedy tokens stay those of
    ``generate`` in that precision. The queries of a key/value head's group go side by side
    where one query would be, so grouped-query attention reads each cached head once."""
    rows, heads, _, dim = q.shape
    kv_heads, length = keys.shape[1], keys.shape[2]
    shape = (rows, kv_heads, length, dim)  # contiguous, as a fresh tensor would be
    keys32 = scratch[0].view(-1)[: keys.numel()].view(shape).copy_(keys)
    values32 = scratch[1].view(-1)[: values.numel()].view(shape).copy_(values)
    grouped = q.reshape(rows, kv_heads, heads // kv_heads, dim)
    scores = torch.matmul(grouped.float(), keys32.transpose(-1, -2)) * dim**-0.5 + mask
    weights = (scores - scores.amax(-1, keepdim=True)).exp()
    total = weights.sum(-1, keepdim=True)
    out = torch.matmul(weights.to(q.dtype).float(), values32) / total
    return out.to(q.dtype).reshape(rows, heads, 1, dim)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
