"""The weight matrices of the direct forward (``decode.py``), held the way this CPU multiplies
them fastest, with one copy in memory.

- float32 (and any dtype without the path below): the linears' weights side by side as one
  contiguous ``[in, sum of outs]`` matrix, each linear's own weight made a transposed view of
  its columns. With a few rows per product (the running batch) MKL multiplies a row-major
  activation by a contiguous ``[in, out]`` matrix in about two thirds of the time of
  ``F.linear``'s product by the transpose of ``[out, in]`` (16 rows, 512 x 3,072: 300 vs
  460 µs with the weights in cache; level where they are not, as for the 29 M model), and the
  model's own forward reads the same numbers.
- bfloat16 on a CPU whose oneDNN has native bfloat16 (AVX-512 BF16 / AMX): the weights
  reordered once into oneDNN's blocked layout (``mkldnn._reorder_linear_weight``, the layout
  PyTorch's own compiler packs linears into) and multiplied by ``mkldnn._linear_pointwise``.
  Measured on this machine (one thread, 512 x 3,072, weights not in cache): 270-470 µs per
  product at 1 or 16 rows against 560-660 µs for ``F.linear`` in bfloat16 and 475-1,600 µs in
  float32. The model's own linears are emptied (the packed copy is the only one): its forward
  is not called again for an architecture the direct forward serves, prefill included.
"""

from __future__ import annotations

from typing import Any

import torch


def packs(dtype: torch.dtype) -> bool:
    """Whether weights of ``dtype`` are packed for oneDNN (bfloat16 with native support)."""
    if dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return False
    ops = torch.ops.mkldnn
    if not (hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise")):
        return False
    supported = getattr(ops, "_is_mkldnn_bf16_supported", None)
    return bool(supported()) if supported is not None else False


class Linear:
    """One or more linears side by side: ``x [rows, in] -> [rows, sum of outs]``."""

    __slots__ = ("bias", "packed", "weight")

    def __init__(self, *linears: Any, pack: bool = False) -> None:
        with torch.no_grad():
            biases = [linear.bias for linear in linears]
            self.bias = None if biases[0] is None else torch.cat(biases)
            if pack:
                fused = torch.cat([linear.weight for linear in linears])  # [outs, in]
                self.packed: torch.Tensor | None = torch.ops.mkldnn._reorder_linear_weight(
                    fused, None
                )
                self.weight = torch.empty(0, dtype=fused.dtype)  # the packed copy is used
                for linear in linears:  # the packed copy is the only one kept
                    linear.weight = torch.nn.Parameter(
                        torch.empty(0, dtype=fused.dtype), requires_grad=False
                    )
            else:
                self.packed = None
                self.weight = _transposed(*linears)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        if self.bias is None:
            return torch.mm(x, self.weight)
        return torch.addmm(self.bias, x, self.weight)


def output_layer(model: Any, pack: bool) -> Linear | torch.Tensor:
    """The output layer: a ``Linear``, or, tied to the embedding, the embedding's own matrix
    read transposed (the lookup needs its rows, so it is neither moved nor packed)."""
    head, embed = model.lm_head, model.model.embed_tokens
    if head.weight.data_ptr() == embed.weight.data_ptr():
        return embed.weight.t()
    return Linear(head, pack=pack)


def _transposed(*linears: Any) -> torch.Tensor:
    """The linears' weights side by side as one contiguous ``[in, sum of outs]`` matrix, each
    linear's weight made a (transposed) view of its columns."""
    fused = torch.cat([linear.weight for linear in linears]).t().contiguous()
    column = 0
    for linear in linears:
        outs = linear.weight.shape[0]
        grad = linear.weight.requires_grad
        view = fused[:, column : column + outs].t()
        linear.weight = torch.nn.Parameter(view, requires_grad=grad)
        column += outs
    return fused
