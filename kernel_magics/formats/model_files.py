"""Reading a model version's MLflow folder without MLflow: its signature and input example
(``MLmodel``, ``input_example.json``). The model itself is read by its format's loader
(``loaders.py``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernel_magics.errors import DeployFailed
from kernel_magics.formats.loaders import served_flavors


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
    flavors = set(meta.get("flavors") or {})
    served = served_flavors()
    if not served & flavors:
        raise DeployFailed(
            f"{folder} holds no flavor that a registered format loads "
            f"(it has {', '.join(sorted(flavors)) or 'none'}; served: {', '.join(sorted(served))})"
        )
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


def read_pyfunc(folder: Path) -> str | None:
    """The module MLflow's pyfunc loads the folder with (``mlflow.sklearn``, ``mlflow.keras``,
    ``mlflow.pytorch`` …): what ``mlflow models serve`` answers with, whatever format serves."""
    import yaml  # only at load time

    meta = yaml.safe_load((folder / "MLmodel").read_text())
    pyfunc = (meta.get("flavors") or {}).get("python_function") or {}
    module = pyfunc.get("loader_module")
    return str(module) if module else None


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


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join("N" if d == -1 else str(d) for d in shape) + ")"
