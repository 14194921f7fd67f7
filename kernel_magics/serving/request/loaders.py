"""Model loaders, one per serialization format, picked by the version's ``km.format`` tag.

A new format is one decorated function::

    @loader("onnx", "data/model.onnx")
    def _load_onnx(path: Path) -> Graph: ...

``path`` is the format's file inside the MLflow model folder. Versions registered before the
tag existed are recognised by which registered file is present (``loader_for``).

Pickle (MLflow's format for models torch.export cannot trace) is acceptable only because the
supervisor hands workers folders from the store after their content hash was checked; request
bodies are never unpickled.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kernel_magics.errors import DeployFailed


@dataclass
class Graph:
    """A loaded model: ``fn(batch tensor) -> output``.

    ``fixed_batch``: the only batch size the graph takes (None: any). ``direct``: a faster call
    of the same graph the model adopts if it gives the same answer as ``fn`` on the input
    example (see ``graph_call``)."""

    fn: Callable[[torch.Tensor], Any]
    fixed_batch: int | None = None
    direct: Callable[[torch.Tensor], torch.Tensor] | None = None
    generator: Any = None  # a generative model's engine (kernel_magics.generative.loader)


LoadFn = Callable[[Path], Graph]


@dataclass(frozen=True)
class Loader:
    format: str
    file: str  # relative to the model folder
    load: LoadFn
    takes_tensors: bool = True  # False: no signature or input example (generative models)


LOADERS: dict[str, Loader] = {}
# Formats served by modules of their own, which register with ``@loader`` when imported; named
# here (not imported) so that nothing of theirs loads until a version is (onnx: optimize).
FORMAT_MODULES = (
    "kernel_magics.serving.request.loader_onnx",
    "kernel_magics.generative.loader",
)


def loader(fmt: str, file: str, *, takes_tensors: bool = True) -> Callable[[LoadFn], LoadFn]:
    """Register ``fn`` as the loader of format ``fmt``, whose model is the file ``file``."""

    def register(fn: LoadFn) -> LoadFn:
        LOADERS[fmt] = Loader(fmt, file, fn, takes_tensors)
        return fn

    return register


def loader_for(folder: Path, fmt: str | None) -> Loader:
    """The loader of ``fmt``; for an untagged (older) version, the first registered format whose
    file the folder holds. DeployFailed names what is missing."""
    _import_format_modules()
    if fmt:
        found = LOADERS.get(fmt)
        if found is None:
            known = ", ".join(LOADERS)
            raise DeployFailed(f"model format {fmt!r} is not served (known formats: {known})")
        if not (folder / found.file).is_file():
            raise DeployFailed(f"no {found.file} in {folder} (format {fmt})")
        return found
    for candidate in LOADERS.values():
        if (folder / candidate.file).is_file():
            return candidate
    files = " or ".join(candidate.file for candidate in LOADERS.values())
    raise DeployFailed(f"no {files} in {folder}")


@functools.cache
def _import_format_modules() -> None:
    for module in FORMAT_MODULES:
        importlib.import_module(module)


@loader("pt2", "data/model.pt2")
def load_pt2(path: Path) -> Graph:
    """``torch.export`` program (no pickled code)."""
    ep = torch.export.load(str(path))
    return Graph(ep.module(), static_batch(ep), graph_call(ep))


@loader("pickle", "data/model.pth")
def load_pickle(path: Path) -> Graph:
    """MLflow's pickle format: a whole ``nn.Module`` (classes travel by value)."""
    model = torch.load(path, map_location="cpu", weights_only=False)
    if hasattr(model, "eval"):
        model.eval()
    return Graph(model)


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
