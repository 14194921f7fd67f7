"""What the registry browser reads besides ``api.models()``: a version's run params, the metric
histories of runs (the training curves) and the size of a version's files.

Read-only, through the store ``kernel_magics.api`` itself uses (one MLflow client per settings);
versions never change once registered, so sizes and finished runs are cached.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

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
def version_size(settings: Settings, name: str, version: int) -> int | None:
    """Bytes of the version's model folder where it is on this machine, else None: a remote
    store's files are not downloaded just to show their size. Resolved through the client
    alone: ``Store.local_path`` switches MLflow's process-wide tracking URI, which a background
    thread must never do while the kernel trains."""
    store = _store(settings)
    source = store.resolve(name, version).source
    if source.startswith("models:/"):  # a logged model: its artifact location
        location = store.client.get_logged_model(source.removeprefix("models:/")).artifact_location
    else:
        location = source
    parts = urlsplit(location)
    if parts.scheme not in ("", "file"):
        return None
    folder = Path(unquote(parts.path))
    if not folder.is_dir():
        return None
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
