"""What front ends read about runs and versions besides ``models()``: a run's params and metric
histories (the registry browser's details and training curves), the size of a version's files,
and the run an interrupted ``%train`` left behind.

Read-only, through the store every API call uses (one MLflow client per settings); versions
never change once registered, so sizes and finished runs are cached.
"""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.parse import unquote, urlsplit

from kernel_magics.api._context import _settings, _store
from kernel_magics.config import Settings


def run_params(run_id: str, *, settings: Settings | None = None) -> dict[str, str]:
    """The params a run logged (``lr``, ``epochs``, …)."""
    return dict(_run_params(_settings(settings), run_id))


def metric_history(
    run_id: str, key: str, *, settings: Settings | None = None
) -> tuple[tuple[int, float], ...]:
    """``(step, value)`` of one metric of a finished run, by step (epoch)."""
    return _metric_history(_settings(settings), run_id, key)


def version_size(name: str, version: int, *, settings: Settings | None = None) -> int | None:
    """Bytes of the version's model folder where it is on this machine, else None: a remote
    store's files are not downloaded just to show their size."""
    return _version_size(_settings(settings), name, int(version))


def last_run_id(*, settings: Settings | None = None) -> str | None:
    """The run this thread opened last (MLflow remembers it per thread): after an interrupted
    ``%train``, the run that was ended KILLED. None when there is none or the store fails (the
    caller is already reporting a failure)."""
    try:
        import mlflow

        with _store(_settings(settings)).tracking():
            run = mlflow.last_active_run()
        return run.info.run_id if run is not None else None
    except Exception:  # the store itself may be what failed
        return None


@functools.lru_cache(maxsize=512)
def _run_params(settings: Settings, run_id: str) -> tuple[tuple[str, str], ...]:
    return tuple(_store(settings).client.get_run(run_id).data.params.items())


@functools.lru_cache(maxsize=512)
def _metric_history(settings: Settings, run_id: str, key: str) -> tuple[tuple[int, float], ...]:
    found = _store(settings).client.get_metric_history(run_id, key)
    return tuple(sorted((int(m.step), float(m.value)) for m in found))


@functools.lru_cache(maxsize=512)
def _version_size(settings: Settings, name: str, version: int) -> int | None:
    # Resolved through the client alone: ``Store.local_path`` switches MLflow's process-wide
    # tracking URI, which a background thread must never do while the kernel trains.
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
