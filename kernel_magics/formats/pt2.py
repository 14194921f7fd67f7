"""``pt2``: a ``torch.export`` program (``data/model.pt2``, MLflow's pytorch flavor), the format
``registration`` writes whenever ``torch.export`` can trace the model. No pickled code is read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from kernel_magics.formats.loaders import Graph, loader


@loader("pt2", "data/model.pt2", flavor="pytorch")
def load_pt2(path: Path) -> Graph:
    """``torch.export`` program (no pickled code)."""
    ep = torch.export.load(str(path))
    return Graph(ep.module(), static_batch(ep), graph_call(ep))


def graph_call(ep: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The exported graph called directly with its lifted weights: skips ``.module()``'s input
    flattening and guards (≈50 µs a call, most of a small model's forward). None when the
    graph has a signature we do not handle (several inputs or outputs, mutated buffers)."""
    from torch.export.graph_signature import InputKind, OutputKind

    sig = ep.graph_signature
    if [o.kind for o in sig.output_specs] != [OutputKind.USER_OUTPUT]:
        return None
    lifted: list[Any] = []
    user_at = None
    for i, spec in enumerate(sig.input_specs):
        if spec.kind == InputKind.USER_INPUT:
            if user_at is not None:
                return None
            user_at = i
            lifted.append(None)
        elif spec.kind == InputKind.PARAMETER:
            lifted.append(ep.state_dict[spec.target])
        elif spec.kind == InputKind.BUFFER:
            source = ep.state_dict if spec.persistent is not False else ep.constants
            lifted.append(source[spec.target])
        elif spec.kind in (InputKind.CONSTANT_TENSOR, InputKind.CUSTOM_OBJ):
            lifted.append(ep.constants[spec.target])
        else:
            return None
    if user_at != len(lifted) - 1:
        return None
    gm = ep.graph_module
    weights = tuple(lifted[:-1])

    def call(x: torch.Tensor) -> torch.Tensor:
        return gm(*weights, x)[0]

    return call


def static_batch(ep: Any) -> int | None:
    """torch.export fixes a size-1 example dimension: such a model only takes that batch size."""
    for node in ep.graph_module.graph.nodes:
        if node.op == "placeholder" and node.name in ep.graph_signature.user_inputs:
            val = node.meta.get("val")
            if val is not None and val.dim() > 0 and isinstance(val.shape[0], int):
                return int(val.shape[0])
    return None
