"""The registry of model formats: one loader per format, picked by the version's ``km.format``
tag (``loader_for``).

A format registers itself with ``@loader(format, file, flavor=...)`` when its module is
imported; ``FORMAT_MODULES`` names those modules (see the package docstring for adding one).
``path`` is the format's file inside the MLflow model folder. Versions registered before the
tag existed are recognised by which registered file is present, in ``FORMAT_MODULES`` order.

Nothing here imports torch or a runtime: a format's module imports what it needs, and only
when a version of that format is loaded.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel_magics.errors import DeployFailed

if TYPE_CHECKING:
    import torch


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
    flavor: str  # the MLflow flavor in the folder's MLmodel file
    takes_tensors: bool = True  # False: no signature or input example (generative models)


LOADERS: dict[str, Loader] = {}
# The registry: one module per format, each registering with ``@loader`` when imported. Named
# here (not imported) so that nothing of a format loads until a version of it does (onnxruntime
# only for an ONNX version). Untagged versions are recognised in this order.
FORMAT_MODULES = (
    "kernel_magics.formats.pt2",
    "kernel_magics.formats.torch_pickle",
    "kernel_magics.formats.onnx",
    "kernel_magics.formats.sklearn",
    "kernel_magics.generative.loader",
)


def loader(
    fmt: str, file: str, *, flavor: str, takes_tensors: bool = True
) -> Callable[[LoadFn], LoadFn]:
    """Register ``fn`` as the loader of format ``fmt``, whose model is the file ``file`` in a
    folder whose MLmodel declares ``flavor``. ``takes_tensors=False``: the model has no tensor
    signature or input example (a language model answers text routes)."""

    def register(fn: LoadFn) -> LoadFn:
        LOADERS[fmt] = Loader(fmt, file, fn, flavor, takes_tensors)
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
    ordered = sorted(LOADERS.values(), key=_registry_order)
    for candidate in ordered:
        if (folder / candidate.file).is_file():
            return candidate
    files = " or ".join(candidate.file for candidate in ordered)
    raise DeployFailed(f"no {files} in {folder}")


def served_flavors() -> set[str]:
    """The MLflow flavors some registered format loads (``pytorch``, ``onnx``)."""
    _import_format_modules()
    return {found.flavor for found in LOADERS.values()}


def _registry_order(found: Loader) -> int:
    """``FORMAT_MODULES`` order, whatever order the modules happened to be imported in (a
    kernel feature may import one format directly before the registry imports the rest)."""
    module = found.load.__module__
    return FORMAT_MODULES.index(module) if module in FORMAT_MODULES else len(FORMAT_MODULES)


@functools.cache
def _import_format_modules() -> None:
    for module in FORMAT_MODULES:
        importlib.import_module(module)
