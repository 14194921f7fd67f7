"""Reading a model version's MLflow folder without MLflow: its signature and input example
(``MLmodel``, ``input_example.json``) and, for pt2 models, the exported graph called directly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kernel_magics.errors import DeployFailed


@dataclass
class Signature:
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 for variable dimensions; first is the batch
    columns: list[str] | None = None  # a column-based (DataFrame) signature
    output_shape: tuple[int, ...] | None = None
    output_dtype: str | None = None

    def describe(self) -> dict:
        return {
            "input": {"dtype": self.dtype.name, "shape": list(self.shape)}
            | ({"columns": self.columns} if self.columns else {}),
            "output": {"dtype": self.output_dtype, "shape": list(self.output_shape or ())}
            if self.output_shape is not None
            else None,
        }


def _tensor_specs(raw: str | None) -> list[dict]:
    return json.loads(raw) if raw else []


def read_signature(folder: Path, example: np.ndarray | None) -> Signature:
    import yaml  # only at load time

    meta = yaml.safe_load((folder / "MLmodel").read_text())
    if "pytorch" not in (meta.get("flavors") or {}):
        raise DeployFailed(f"{folder} is not an MLflow PyTorch model (no pytorch flavor)")
    sig = meta.get("signature") or {}
    inputs = _tensor_specs(sig.get("inputs"))
    outputs = _tensor_specs(sig.get("outputs"))
    out_shape = out_dtype = None
    if len(outputs) == 1 and outputs[0].get("type") == "tensor":
        spec = outputs[0]["tensor-spec"]
        out_shape, out_dtype = tuple(spec["shape"]), spec["dtype"]
    if inputs and all(i.get("type") == "tensor" for i in inputs):
        if len(inputs) != 1 or inputs[0].get("name"):
            raise DeployFailed("models with several or named input tensors are not supported")
        spec = inputs[0]["tensor-spec"]
        return Signature(np.dtype(spec["dtype"]), tuple(spec["shape"]), None, out_shape, out_dtype)
    if inputs:  # column-based: MLflow's wrapper feeds DataFrame.to_numpy(float32)
        columns = [str(i.get("name", n)) for n, i in enumerate(inputs)]
        return Signature(np.dtype("float32"), (-1, len(columns)), columns, out_shape, out_dtype)
    if example is not None:
        return Signature(example.dtype, (-1, *example.shape[1:]), None, out_shape, out_dtype)
    raise DeployFailed(f"{folder}: no signature and no input example; cannot check inputs")


def read_example(folder: Path) -> np.ndarray | None:
    path = folder / "input_example.json"
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    if isinstance(doc, dict):
        doc = doc.get("data", doc.get("inputs", doc.get("instances")))
    try:
        return np.asarray(doc)
    except ValueError:
        return None


def graph_call(ep: Any) -> tuple[Any, int | None] | None:
    """The exported graph called directly with its lifted weights: skips ``.module()``'s input
    flattening and guards (≈50 µs a call, most of a small model's forward). Returns
    (callable, static batch size or None), or None when the graph has a shape we do not handle."""
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

    return call, None


def static_batch(ep: Any) -> int | None:
    """torch.export fixes a size-1 example dimension: such a model only takes that batch size."""
    for node in ep.graph_module.graph.nodes:
        if node.op == "placeholder" and node.name in ep.graph_signature.user_inputs:
            val = node.meta.get("val")
            if val is not None and val.dim() > 0 and isinstance(val.shape[0], int):
                return int(val.shape[0])
    return None


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join("N" if d == -1 else str(d) for d in shape) + ")"
