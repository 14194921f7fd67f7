"""A direct decode step for Llama-shaped models (Llama, Mistral, Qwen2): one new token per
running sequence, the same arithmetic as transformers' modules without their per-layer Python.

At the sizes served on a CPU here the model's own forward spends most of a decode step in
Python (module calls, keyword plumbing, mask and output bookkeeping), not in arithmetic. This
step calls the model's own weights through ``torch.nn.functional`` directly: the attention
projections and the MLP's gate and up projections as one matrix product each (the weights
concatenated once at load), RMSNorm, rotary embeddings (the model's own ``rotary_emb``, so any
RoPE scaling the config sets applies), attention over the slot cache. Prompts are still
prefilled by the model's own forward. Architectures it does not recognise (``supports``) decode
through the model's forward as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from kernel_magics.generative.cache import SlotCache

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
    qkv_w: torch.Tensor  # query, key and value projections stacked
    qkv_b: torch.Tensor | None
    o: torch.Tensor
    gate_up: torch.Tensor  # the MLP's gate and up projections stacked
    down: torch.Tensor
    norm1: torch.Tensor
    eps1: float
    norm2: torch.Tensor
    eps2: float


class DirectDecoder:
    """Built once per loaded model; ``step`` is one decode forward, returning the last logits."""

    def __init__(self, model: Any) -> None:
        inner, config = model.model, model.config
        self.embed = inner.embed_tokens.weight
        self.rotary = inner.rotary_emb
        self.final_norm, self.final_eps = inner.norm.weight, inner.norm.variance_epsilon
        self.lm_head = model.lm_head.weight
        attn0 = inner.layers[0].self_attn
        self.head_dim = attn0.head_dim
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.q_size = self.heads * self.head_dim
        self.kv_size = self.kv_heads * self.head_dim
        self.intermediate = inner.layers[0].mlp.gate_proj.weight.shape[0]
        self.layers: list[_Layer] = []
        with torch.no_grad():
            for block in inner.layers:
                attn, mlp = block.self_attn, block.mlp
                bias = attn.q_proj.bias
                qkv_b = None
                if bias is not None:
                    qkv_b = torch.cat([bias, attn.k_proj.bias, attn.v_proj.bias])
                layer = _Layer(
                    qkv_w=_fuse(attn.q_proj, attn.k_proj, attn.v_proj),
                    qkv_b=qkv_b,
                    o=attn.o_proj.weight,
                    gate_up=_fuse(mlp.gate_proj, mlp.up_proj),
                    down=mlp.down_proj.weight,
                    norm1=block.input_layernorm.weight,
                    eps1=block.input_layernorm.variance_epsilon,
                    norm2=block.post_attention_layernorm.weight,
                    eps2=block.post_attention_layernorm.variance_epsilon,
                )
                self.layers.append(layer)

    def step(
        self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: SlotCache
    ) -> torch.Tensor:
        """``tokens`` [rows], ``positions`` [rows], ``mask`` [rows, 1, 1, kv_len] additive;
        the cache's ``rows``/``positions``/``kv_len`` are set. Returns logits [rows, vocab]."""
        rows = tokens.shape[0]
        hidden = F.embedding(tokens, self.embed)[:, None]  # [rows, 1, hidden]
        cos, sin = self.rotary(hidden, positions[:, None])
        cos, sin = cos[:, None], sin[:, None]  # [rows, 1, 1, head_dim]
        q_size, kv_size, head_dim = self.q_size, self.kv_size, self.head_dim
        gqa = self.heads != self.kv_heads
        for index, layer in enumerate(self.layers):
            x = _rms_norm(hidden, layer.norm1, layer.eps1)
            qkv = F.linear(x, layer.qkv_w, layer.qkv_b)
            q = qkv[..., :q_size].view(rows, 1, -1, head_dim).transpose(1, 2)
            k = qkv[..., q_size : q_size + kv_size].view(rows, 1, -1, head_dim).transpose(1, 2)
            v = qkv[..., q_size + kv_size :].view(rows, 1, -1, head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys, values = cache.update(k, v, index)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=gqa)
            hidden = hidden + F.linear(out.transpose(1, 2).reshape(rows, 1, q_size), layer.o)
            x = _rms_norm(hidden, layer.norm2, layer.eps2)
            gate, up = F.linear(x, layer.gate_up).split(self.intermediate, dim=-1)
            hidden = hidden + F.linear(F.silu(gate) * up, layer.down)
        hidden = _rms_norm(hidden, self.final_norm, self.final_eps)
        return F.linear(hidden[:, 0], self.lm_head)


def _fuse(*linears: Any) -> torch.Tensor:
    """The linears' weights stacked into one matrix, and each linear's weight made a view of its
    rows: one matrix product instead of several, and no second copy of the weights in memory
    (the model's own forward, which prefills, reads the same numbers)."""
    fused = torch.cat([linear.weight for linear in linears])
    row = 0
    for linear in linears:
        rows = linear.weight.shape[0]
        grad = linear.weight.requires_grad
        linear.weight = torch.nn.Parameter(fused[row : row + rows], requires_grad=grad)
        row += rows
    return fused


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
