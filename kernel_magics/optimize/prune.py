"""Magnitude pruning.

Unstructured: the smallest-magnitude entries of every weight matrix and kernel are set to zero.
That is all it does — parameter count, file size and speed stay the same (dense kernels
multiply zeros like any other number); the table says so.

Structured: really smaller layers. In the exported graph (what a pt2 version holds), every
``linear`` whose output reaches only another ``linear`` (through element-wise activations and
dropout) loses its lowest-L2 output neurons, and the next layer the matching input columns;
smaller weight tensors replace the old ones and the model is exported again. That covers
``nn.Sequential`` stacks of ``nn.Linear`` layers (MLPs, the heads of bigger models); any other
structure gets a one-line message.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx

from kernel_magics.errors import InvalidInput, first_line

LINEAR = "aten.linear.default"
# Element-wise ops between two linear layers: a neuron dropped before them is dropped after.
ELEMENTWISE = {
    f"aten.{op}.default"
    for op in (
        "relu",
        "relu_",
        "gelu",
        "silu",
        "tanh",
        "sigmoid",
        "leaky_relu",
        "elu",
        "hardtanh",
        "hardswish",
        "mish",
        "dropout",
        "clone",
    )
}


@dataclass(frozen=True)
class PrunedLayer:
    weight: str  # the weight's attribute path in the graph module
    before: int  # output neurons before
    after: int


def as_graph(model: torch.nn.Module, example: np.ndarray) -> fx.GraphModule:
    """The model as an exported, trainable graph module (a pt2 version already is one)."""
    if not _is_exported(model):
        from torch.export import Dim

        try:
            ep = torch.export.export(
                model.eval(),
                (torch.from_numpy(example),),
                dynamic_shapes=({0: Dim("batch")},),
            )
        except Exception as err:
            raise InvalidInput(
                f"structured pruning needs a model torch.export can trace; "
                f"{type(model).__name__} failed: {first_line(err, limit=200)}"
            ) from None
        model = ep.module()
    return trainable(model)  # type: ignore[arg-type]


def trainable(module: fx.GraphModule) -> fx.GraphModule:
    """``ExportedProgram.module()`` refuses ``train()``/``eval()``; the graph itself does not
    care (dropout and batch norm were exported in eval form), so give it the plain methods."""
    module.__dict__.pop("train", None)
    module.__dict__.pop("eval", None)
    return module


def _is_exported(model: torch.nn.Module) -> bool:
    return isinstance(model, fx.GraphModule) and any(
        str(n.target) == LINEAR for n in model.graph.nodes
    )


def structured(gm: fx.GraphModule, amount: float, example: np.ndarray) -> list[PrunedLayer]:
    """Drop ``amount`` of the output neurons (lowest L2 norm of their weight rows) of every
    prunable linear layer, in place; the model's outputs keep their shape."""
    x = torch.from_numpy(example)
    with torch.no_grad():
        before = gm(x).shape
    pairs = _chains(gm)
    if not pairs:
        raise InvalidInput(
            "structured pruning found no Linear layer that feeds only another Linear layer "
            "(supported: nn.Sequential stacks of nn.Linear with element-wise activations); "
            "use unstructured pruning (without --structured)"
        )
    done = []
    for producer, consumer in pairs:
        weight_node: Any = producer.args[1]
        bias_node: Any = producer.args[2] if len(producer.args) > 2 else None
        weight = _tensor(gm, weight_node)
        rows = weight.shape[0]
        keep = max(1, round(rows * (1 - amount)))
        index = weight.norm(dim=1).topk(keep).indices.sort().values
        _replace(gm, weight_node, weight[index])
        if bias_node is not None:
            _replace(gm, bias_node, _tensor(gm, bias_node)[index])
        _replace(gm, consumer.args[1], _tensor(gm, consumer.args[1])[:, index])
        done.append(PrunedLayer(str(weight_node.target), rows, keep))
    gm.recompile()
    with torch.no_grad():
        after = gm(x).shape
    if after != before:
        raise InvalidInput(f"pruning changed the output shape from {before} to {after}")
    return done


def _chains(gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node]]:
    """(producer, consumer) linear nodes: the producer's output reaches only the consumer's
    input, through element-wise nodes; each weight used by that layer alone."""
    pairs = []
    for node in gm.graph.nodes:
        if str(node.target) != LINEAR or not _own_weights(node):
            continue
        current = node
        while len(current.users) == 1:
            (user,) = current.users
            if user.args[0] is not current:
                break
            if str(user.target) == LINEAR:
                if _own_weights(user):
                    pairs.append((node, user))
                break
            if str(user.target) not in ELEMENTWISE:
                break
            current = user
    return pairs


def _own_weights(node: fx.Node) -> bool:
    params = [a for a in node.args[1:3] if a is not None]
    return all(isinstance(a, fx.Node) and a.op == "get_attr" and len(a.users) == 1 for a in params)


def _tensor(gm: fx.GraphModule, node: Any) -> torch.Tensor:
    return gm.get_parameter(node.target).detach()


def _replace(gm: fx.GraphModule, node: Any, value: torch.Tensor) -> None:
    owner, _, attr = node.target.rpartition(".")
    module = gm.get_submodule(owner) if owner else gm
    setattr(module, attr, torch.nn.Parameter(value.clone().contiguous()))


def unstructured(model: torch.nn.Module, amount: float) -> dict[str, torch.Tensor]:
    """Zero the ``amount`` smallest-magnitude entries of each weight matrix or kernel (rank ≥
    2), in place; returns the masks (1 = kept) by parameter name."""
    masks = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim < 2 or not param.is_floating_point():
                continue
            drop = int(round(param.numel() * amount))
            mask = torch.ones_like(param)
            if drop:
                index = param.abs().flatten().topk(drop, largest=False).indices
                mask.view(-1)[index] = 0
            param.mul_(mask)
            masks[name] = mask
    if not masks:
        raise InvalidInput(
            f"{type(model).__name__} has no weight matrix or kernel to prune (no parameter of "
            "rank 2 or more)"
        )
    return masks


def keep_zeros(model: torch.nn.Module, masks: dict[str, torch.Tensor]) -> Callable[[], None]:
    """While fine-tuning, pruned entries get no gradient (they stay zero with Adam, AdamW and
    SGD alike); returns the function that removes the hooks."""
    params = dict(model.named_parameters())
    handles = [params[n].register_hook(lambda g, m=m: g * m) for n, m in masks.items()]

    def remove() -> None:
        for handle in handles:
            handle.remove()

    return remove


def sparsity(model: torch.nn.Module) -> float:
    """Fraction of zeros among the weights of rank ≥ 2."""
    weights = [p for p in model.parameters() if p.ndim >= 2]
    total = sum(p.numel() for p in weights)
    return sum(int((p == 0).sum()) for p in weights) / total if total else 0.0
