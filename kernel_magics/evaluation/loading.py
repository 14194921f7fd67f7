"""A registered version, loaded in this process the way the inference process loads it.

The folder comes from the store and is checked against the SHA-256 recorded at registration
(``formats.verified``); the model is read by the format loader of its ``km.format`` (pt2
through ``torch.export.load(...).module()``, MLflow's pickle format through ``torch.load``), so
what is evaluated is exactly what ``%deploy`` would serve. Versions are immutable: a loaded one
is kept for the next call (a few, by store, name and version).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel_magics.errors import InvalidInput
from kernel_magics.preprocess import TableEncoder, read_encoder
from kernel_magics.store import TAG_FORMAT, Store, VersionInfo, parse_ref
from kernel_magics.warmup import wait_for_warmup

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass
class LoadedVersion:
    info: VersionInfo
    folder: Path
    format: str
    call: Callable[[torch.Tensor], Any]  # the model's forward on one batch
    fixed_batch: int | None  # the only batch size the graph takes (None: any)
    example: np.ndarray | None  # input example rows in the model's dtype
    parameter_count: int
    size_bytes: int  # the model folder on disk
    encoder: TableEncoder | None = None  # the declared one-hot step (preprocess.py)

    @property
    def ref(self) -> str:
        return f"{self.info.name}@{self.info.version}"


def load_version(store: Store, target: str | VersionInfo) -> LoadedVersion:
    """``NAME``, ``NAME@VERSION`` or ``NAME@ALIAS`` (or a resolved version), loaded."""
    if isinstance(target, str):
        name, ref = parse_ref(target)
        target = store.resolve(name, ref)
    return _load(store, target.name, target.version)


@functools.lru_cache(maxsize=4)
def _load(store: Store, name: str, version: int) -> LoadedVersion:
    from kernel_magics.formats.loaders import loader_for
    from kernel_magics.formats.model_files import read_example, read_signature
    from kernel_magics.formats.verified import verified_folder

    # loading a pt2 program while %load_ext's warm-up runs would import torch._dynamo from two
    # threads at once, which can break that module for the whole process
    wait_for_warmup()
    info = store.resolve(name, version)
    folder = verified_folder(store, info)  # IntegrityError if its files changed
    loader = loader_for(folder, info.tags.get(TAG_FORMAT))
    graph = loader.load(folder / loader.file)
    example = read_example(folder)
    if example is not None:
        example = example.astype(read_signature(folder, example).dtype, copy=False)
    module = graph.fn
    parameters = getattr(module, "parameters", None)
    count = sum(p.numel() for p in parameters()) if callable(parameters) else 0
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return LoadedVersion(
        info,
        folder,
        loader.format,
        graph.fn,
        graph.fixed_batch,
        example,
        count,
        size,
        read_encoder(folder),
    )


def forward(loaded: LoadedVersion, X: np.ndarray, batch_size: int = 4096) -> torch.Tensor:
    """Outputs for every row of ``X``, in batches, without gradients."""
    import torch

    size = loaded.fixed_batch or batch_size
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(X), size):
            chunk = torch.from_numpy(X[start : start + size])
            if loaded.fixed_batch and len(chunk) < size:  # pad the last batch of a fixed graph
                pad = chunk[-1:].expand(size - len(chunk), *chunk.shape[1:])
                outputs.append(loaded.call(torch.cat([chunk, pad]))[: len(chunk)])
            else:
                outputs.append(loaded.call(chunk))
    return torch.cat(outputs) if outputs else torch.empty(0)


def input_rows(X: Any, loaded: LoadedVersion) -> np.ndarray:
    """``X`` as rows in the dtype the version takes (its input example's); raw table rows
    encoded first when the version declares an encoding step."""
    from kernel_magics.training.inputs import model_input_array

    if loaded.encoder is not None:
        return loaded.encoder.encode(X)
    array = model_input_array(X, "X")
    if array.ndim == 1:
        array = array.reshape(1, -1)
    example = loaded.example
    if example is not None and array.shape[1:] != example.shape[1:]:
        raise InvalidInput(
            f"X has rows of shape {tuple(array.shape[1:])}, but {loaded.ref} takes rows of "
            f"shape {tuple(example.shape[1:])}"
        )
    if example is not None and array.dtype != example.dtype:
        array = array.astype(example.dtype)
    return array
