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
- float32 weights of a large model (``gen_blocked_weights``), beside the plain copy: the same
  blocked layout, multiplied by oneDNN, which takes 4 rows or more faster and fewer slower.
  Measured on this machine (the 29 M model's matrices, one pass, two threads): 16 rows
  7.2 against 9.4 ms, 4 rows 5.1 against 5.8, one row 4.4 against 2.9; on the 4.2 M model's
  (256 wide) the plain copy was faster at every batch size. A product of ``BLOCKED_FROM_ROWS``
  rows or more in a decode step (the running batch) reads the blocked copy; fewer rows (one
  stream) and prefills read the plain one. Twice the weights' memory, for which the setting
  can say no.
"""

from __future__ import annotations

from typing import Any

import torch

BLOCKED_FROM_ROWS = 4
# oneDNN sets a product up for each new row count (measured here: 0.5-2 ms a matrix shape; a
# 29 M bfloat16 prefill of a new length 9-12 ms against 3-6 ms less once set up). A decode
# step's row count is one of at most ``gen_max_running``, set up at load; a prefill's, its
# prompts' tokens, is new time and again, so it is padded up to a multiple of PREFILL_ROWS,
# whose products up to SET_UP_PREFILL_ROWS are set up at load.
PREFILL_ROWS = 8
SET_UP_PREFILL_ROWS = 128


def blocks() -> bool:
    """Whether weights can be held in oneDNN's blocked layout (oneDNN and its linear ops are
    built in): a float32 copy, bfloat16's packed weights."""
    ops = torch.ops.mkldnn
    linear_ops = hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise")
    return bool(torch.backends.mkldnn.is_available()) and linear_ops


def packs(dtype: torch.dtype) -> bool:
    """Whether weights of ``dtype`` are packed for oneDNN (bfloat16 with native support)."""
    if dtype != torch.bfloat16 or not blocks():
        return False
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(supported()) if supported is not None else False


class Linear:
    """One or more linears side by side: ``x [rows, in] -> [rows, sum of outs]``."""

    __slots__ = ("bias", "blocked", "dtype", "packed", "weight", "width")

    def __init__(self, *linears: Any, pack: bool = False, blocked: bool = False) -> None:
        with torch.no_grad():
            self.width = linears[0].weight.shape[1]  # in features
            self.dtype = linears[0].weight.dtype
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
                self.blocked: torch.Tensor | None = None
            else:
                self.packed = None
                self.weight = _transposed(*linears)
                self.blocked = (
                    torch.ops.mkldnn._reorder_linear_weight(self.weight.t().contiguous(), None)
                    if blocked
                    else None
                )

    def __call__(self, x: torch.Tensor, step: bool = False) -> torch.Tensor:
        """``step``: a decode step's product, which may read the blocked copy. A prefill's reads
        the plain one: its row count is new time and again, and with prefills on the blocked
        copy the 29 M model's 16-stream TTFT p99 measured 47-58 ms, 37-39 on the plain one."""
        if self.packed is not None:
            return _onednn(x, self.packed, self.bias, step)
        if step and self.blocked is not None and x.shape[0] >= BLOCKED_FROM_ROWS:
            return _onednn(x, self.blocked, self.bias, step)
        if self.bias is None:
            return torch.mm(x, self.weight)
        return torch.addmm(self.bias, x, self.weight)

    def set_up(self, max_step_rows: int) -> None:
        """Have oneDNN set up this matrix's products now rather than in the middle of serving:
        every row count a decode step can have (up to ``max_step_rows``) and, where prefills
        read oneDNN's copy too (packed weights), their padded row counts."""
        if self.packed is None and self.blocked is None:
            return
        first = 1 if self.packed is not None else BLOCKED_FROM_ROWS
        for rows in range(first, max_step_rows + 1):
            self(torch.zeros((rows, self.width), dtype=self.dtype), step=True)
        if self.packed is not None:
            for rows in range(PREFILL_ROWS, SET_UP_PREFILL_ROWS + 1, PREFILL_ROWS):
                self(torch.zeros((rows, self.width), dtype=self.dtype))


def _onednn(
    x: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor | None, step: bool
) -> torch.Tensor:
    """``x`` times oneDNN's copy of the weights; a prefill's rows padded to a multiple of
    ``PREFILL_ROWS`` (zeros, cut off the product)."""
    rows = x.shape[0]
    extra = 0 if step else -rows % PREFILL_ROWS
    if extra:
        x = torch.nn.functional.pad(x, (0, 0, 0, extra))
    out = torch.ops.mkldnn._linear_pointwise(x, weights, bias, "none", [], "")
    return out[:rows] if extra else out


def output_layer(model: Any, pack: bool, blocked: bool = False) -> Linear | torch.Tensor:
    """The output layer: a ``Linear``, or, tied to the embedding, the embedding's own matrix
    read transposed (the lookup needs its rows, so it is neither moved nor packed)."""
    head, embed = model.lm_head, model.model.embed_tokens
    if head.weight.data_ptr() == embed.weight.data_ptr():
        return embed.weight.t()
    return Linear(head, pack=pack, blocked=blocked)


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
