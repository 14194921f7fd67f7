"""What the registry browser reads besides ``api.models()``: a version's run params, the metric
histories of runs (the training curves) and the size of a version's files.

Read-only, through the store ``kernel_magics.api`` itself uses (one MLflow client per settings);
versions never change once registered, so sizes and finished runs are cached.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from kernel_magics.config import Settings

CURVES = ("train_loss", "val_loss")


def _store(settings: Settings) -> Any:
    from kernel_magics import api

    return api._store(settings)  # the api's cached store: no second client per call


@functools.lru_cache(maxsize=512)
def run_params(settings: Settings, run_id: str) -> dict[str, str]:
    return dict(_store(settings).client.get_run(run_id).data.params)


@functools.lru_cache(maxsize=512)
def metric_history(settings: Settings, run_id: str, key: str) -> tuple[tuple[int, float], ...]:
    """``(step, value)`` of one metric of a finished run, by step (epoch)."""
    found = _store(settings).client.get_metric_history(run_id, key)
    return tuple(sorted((int(m.step), float(m.value)) for m in found))


@functools.lru_cache(maxsize=512)
def version_size(settings: Settings, name: str, version: int) -> int:
    """Bytes of the version's model folder (downloaded first from a remote store)."""
    store = _store(settings)
    folder = Path(store.local_path(store.resolve(name, version)))
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
