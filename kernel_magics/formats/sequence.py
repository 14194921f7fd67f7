"""The sequence axis of a token model at export: a model that reads rows of token ids through a
sequence layer (an RNN, attention, a transformer) is exported with its sequence length dynamic
where the model allows it, so that a model registered with 32-token rows also takes 4- or
50-token ones; otherwise the length stays the example's, and registration says why.

MLflow's pt2 export (``mlflow.pytorch.log_model``) keeps dynamic exactly the axes that the
signature marks -1; from the example alone it infers (-1, 32). ``sequence_signature`` exports
once itself to learn what the model allows and gives MLflow the signature that says it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kernel_magics.errors import first_line

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass(frozen=True)
class SequenceAxis:
    signature: Any  # mlflow.models.ModelSignature, axis 1 -1 when dynamic
    dynamic: bool
    note: str  # what registration says about it


def is_sequence_model(model: torch.nn.Module, example: np.ndarray) -> bool:
    """Rows of token ids (a 2-D integer example) read by a layer that runs along them."""
    import torch

    layers = (torch.nn.RNNBase, torch.nn.MultiheadAttention, torch.nn.TransformerEncoderLayer)
    return (
        example.ndim == 2
        and example.dtype.kind in "iu"
        and example.shape[1] > 1
        and any(isinstance(m, layers) for m in model.modules())
    )


def sequence_signature(model: torch.nn.Module, example: np.ndarray) -> SequenceAxis | None:
    """For a sequence model (``is_sequence_model``), the signature that keeps the sequence axis
    dynamic if ``torch.export`` can, else fixed at the example's length, and the note saying
    which; None for other models. ``model`` is in eval mode."""
    if not is_sequence_model(model, example):
        return None
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec
    from torch.export import Dim

    x = torch.from_numpy(example)
    length = example.shape[1]
    try:
        ep = torch.export.export(model, (x,), dynamic_shapes=({0: Dim.AUTO, 1: Dim.DYNAMIC},))
    except Exception as err:  # the graph depends on the length: torch.export says no more
        reason = _why_fixed(model, length, err)
        with torch.no_grad():
            out = model(x)
        out_shape = (-1, *out.shape[1:])
        note = f"sequence length fixed at {length}: {reason}"
        in_shape: tuple[int, ...] = (-1, length)
        dynamic = False
    else:
        (user_input,) = [n for n in ep.graph.nodes if n.op == "placeholder"][-1:]
        axis = user_input.meta["val"].shape[1]
        bounds = (
            ep.range_constraints.get(axis.node.expr) if isinstance(axis, torch.SymInt) else None
        )
        low = int(bounds.lower) if bounds is not None else 2
        high = bounds.upper if bounds is not None else None
        # an upper bound only where the graph proves one (sympy's infinity otherwise)
        most = str(high) if high is not None and str(high).isdigit() else None
        span = f"{low}..{most} tokens" if most else f"{low} tokens or more"
        note = f"sequence length dynamic, {span} (the example had {length})"
        output = next(n for n in ep.graph.nodes if n.op == "output").args[0][0].meta["val"]
        out_shape = tuple(-1 if isinstance(d, torch.SymInt) else int(d) for d in output.shape)
        out = output
        in_shape = (-1, -1)
        dynamic = True
    signature = ModelSignature(
        inputs=Schema([TensorSpec(example.dtype, in_shape)]),
        outputs=Schema([TensorSpec(_numpy_dtype(out.dtype), out_shape)]),
    )
    return SequenceAxis(signature, dynamic, note)


def _why_fixed(model: torch.nn.Module, length: int, err: Exception) -> str:
    import torch

    rnn = next((m for m in model.modules() if isinstance(m, torch.nn.RNNBase)), None)
    if rnn is not None:
        return f"torch.export unrolls the {type(rnn).__name__} over the example's {length} steps"
    if "specialized it to be a constant" in str(err):
        return f"the model's graph depends on it (a layer sized for {length} positions)"
    return first_line(err, limit=200)


def _numpy_dtype(dtype: torch.dtype) -> Any:
    import torch

    return torch.empty((), dtype=dtype).numpy().dtype
