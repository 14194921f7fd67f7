"""The one Python API of kernel-magics.

Magics, widgets, the CLI, the JupyterLab panel and papermill pipelines all call these functions
and only render what they return. Every failure a user can cause raises a
``kernel_magics.errors.KernelMagicsError`` whose message is one readable line.

    from kernel_magics import api
    r = api.train(Net(), X, y, name="digits", epochs=5)
    api.deploy("digits")                 # newest version goes live in the inference process
    api.predict("digits", X[:3])         # class labels (raw=True: model outputs)
    api.rollback("digits")
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kernel_magics.config import Settings, load_settings
from kernel_magics.errors import InvalidInput, ServiceUnavailable
from kernel_magics.serving import tokens
from kernel_magics.store import Store, parse_ref, validate_name
from kernel_magics.tracking import TrainResult, run_training

if TYPE_CHECKING:
    import numpy as np
    import torch

    from kernel_magics.targets.local import ServingClient

__all__ = [
    "TrainResult",
    "ModelSummary",
    "VersionRow",
    "train",
    "deploy",
    "rollback",
    "undeploy",
    "predict",
    "models",
    "history",
    "server_status",
    "server_start",
    "server_stop",
    "server_logs",
    "server_token",
]


@functools.lru_cache(maxsize=8)
def _store(settings: Settings) -> Store:
    return Store(settings)


@functools.lru_cache(maxsize=8)
def _client(settings: Settings) -> ServingClient:
    from kernel_magics.targets.local import ServingClient

    return ServingClient(settings)


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else load_settings()


# -- training -----------------------------------------------------------------------------------
def train(
    model: torch.nn.Module,
    X: Any,
    y: Any = None,
    *,
    name: str,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    val_split: float = 0.2,
    seed: int = 0,
    task: str | None = None,
    progress: Any = "auto",
    settings: Settings | None = None,
) -> TrainResult:
    """Train ``model`` on (X, y), log the run to MLflow and register a new version of ``name``.

    ``y`` may be the name of a column of a DataFrame ``X``. ``progress`` is "auto", "widget",
    "text", "none" or a ``Progress`` object. A kernel interrupt raises ``TrainingInterrupted``
    after recording the run as KILLED; nothing is registered.
    """
    import torch

    from kernel_magics.training.data import prepare_data
    from kernel_magics.training.fit import fit
    from kernel_magics.widgets.progress import make_progress

    validate_name(name)
    if not isinstance(model, torch.nn.Module):
        raise InvalidInput(f"the model must be a torch.nn.Module, got {type(model).__name__}")
    data = prepare_data(X, y, task=task, val_split=val_split, seed=seed)
    reporter = make_progress(progress) if isinstance(progress, str) else progress
    params = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "weight_decay": weight_decay,
        "val_split": val_split,
        "seed": seed,
        "model_class": type(model).__name__,
    }

    def fit_fn(on_epoch: Any) -> Any:
        return fit(
            model,
            data,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            optimizer=optimizer,
            weight_decay=weight_decay,
            seed=seed,
            on_epoch=on_epoch,
            progress=reporter,
        )

    return run_training(_store(_settings(settings)), name, model, data, params, fit_fn)


# -- deployment ---------------------------------------------------------------------------------
def deploy(
    target: str,
    version: int | str | None = None,
    *,
    max_batch_size: int | None = None,
    max_wait_ms: float | None = None,
    settings: Settings | None = None,
) -> dict:
    """Make ``NAME`` (newest version), ``NAME@VERSION`` or ``NAME@ALIAS`` live.

    Starts the inference process if needed. The new version is loaded and warmed before it takes
    traffic; if it fails, the live version keeps serving and ``DeployFailed`` says why.
    Returns ``{"name", "version", "previous_version", "action", "load_ms", "url", ...}``.
    """
    name, ref = parse_ref(target)
    ref = str(version) if version is not None else ref
    s = _settings(settings)
    options = {
        k: v
        for k, v in (("max_batch_size", max_batch_size), ("max_wait_ms", max_wait_ms))
        if v is not None
    }
    client = _running_client(s, lambda: _store(s).resolve(name, ref))
    return {**client.deploy(name, ref, **options), "url": client.url}


def rollback(name: str, to: int | None = None, *, settings: Settings | None = None) -> dict:
    """Make the previously live version (or version ``to``) live again, same hot swap."""
    validate_name(name)
    s = _settings(settings)
    check = (lambda: _store(s).resolve(name, int(to))) if to is not None else (lambda: None)
    client = _running_client(s, check)
    return {**client.rollback(name, to), "url": client.url}


def _running_client(settings: Settings, check: Callable[[], object]) -> ServingClient:
    """The client of a running inference process. A process that must start (≈3 s of imports)
    starts while ``check`` validates the request in the kernel (an unknown model or version
    fails at once, without waiting for the start)."""
    client = _client(settings)
    if client.is_ready():
        check()
        return client
    starting: concurrent.futures.Future = concurrent.futures.Future()

    def start() -> None:
        try:
            starting.set_result(client.ensure_running())
        except BaseException as err:
            starting.set_exception(err)

    threading.Thread(target=start, name="kernel-magics-start", daemon=True).start()
    check()
    starting.result()
    return client


def undeploy(name: str, *, settings: Settings | None = None) -> dict:
    """Stop serving ``name`` and clear its live alias (recorded in the history)."""
    validate_name(name)
    client = _client(_settings(settings))
    client.ensure_running()
    return client.undeploy(name)


def history(name: str, *, settings: Settings | None = None) -> list[dict]:
    """Deployment events of ``name``, oldest first: time, action, from_version, to_version."""
    validate_name(name)
    s = _settings(settings)
    _client(s).settle(name)
    return _store(s).history(name)


# -- inference ----------------------------------------------------------------------------------
def _as_features(X: Any) -> np.ndarray:
    import numpy as np

    if hasattr(X, "detach"):  # torch tensor
        X = X.detach().cpu().numpy()
    elif hasattr(X, "to_numpy"):  # pandas
        X = X.to_numpy()
    try:
        array = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise InvalidInput(f"cannot turn the input into a float32 array: {err}") from None
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise InvalidInput(f"expected a 2-D array of rows, got {array.ndim} dimensions")
    return array


def predict(
    name: str, X: Any, *, raw: bool = False, settings: Settings | None = None
) -> np.ndarray:
    """Predictions of the live version of ``name``, through its HTTP endpoint.

    Classification models answer class labels unless ``raw`` (then the model's outputs).
    """
    import numpy as np

    validate_name(name)
    s = _settings(settings)
    outputs, version = _client(s).predict(name, _as_features(X))
    if raw:
        return outputs
    info = _version_info(s, name, version)
    if info.task == "classification" and outputs.ndim == 2:
        index = outputs.argmax(axis=1)
        classes = info.classes
        return (
            np.asarray(classes, dtype=object)[index].astype(type(classes[0])) if classes else index
        )
    return outputs


@functools.lru_cache(maxsize=256)
def _version_info(settings: Settings, name: str, version: int) -> Any:
    # Versions are immutable once registered, so caching by (name, version) is safe.
    return _store(settings).resolve(name, int(version))


# -- what exists --------------------------------------------------------------------------------
@dataclass
class VersionRow:
    version: int
    created: float
    run_id: str | None
    task: str | None
    format: str | None
    metrics: dict[str, float]
    aliases: tuple[str, ...]
    live: bool


@dataclass
class ModelSummary:
    name: str
    live_version: int | None
    served_version: int | None
    versions: list[VersionRow] = field(default_factory=list)

    def _repr_html_(self) -> str:
        from kernel_magics import display

        return display.models_html([self])


def models(*, settings: Settings | None = None) -> list[ModelSummary]:
    """Every registered model with its versions, final metrics, and what is live and served."""
    s = _settings(settings)
    store = _store(s)
    served: dict[str, int] = {}
    try:
        status = _client(s).status()
    except ServiceUnavailable:
        status = None
    if status:
        for model_name, state in (status.get("models") or {}).items():
            version = state.get("version") if isinstance(state, dict) else state
            if version is not None:
                served[model_name] = int(version)
    summaries = []
    for model_name in store.model_names():
        versions = store.versions(model_name)
        metrics = store.run_metrics([v.run_id for v in versions if v.run_id])
        live = store.live_version(model_name)
        rows = [
            VersionRow(
                version=v.version,
                created=v.created,
                run_id=v.run_id,
                task=v.task,
                format=v.tags.get("km.format"),
                metrics=metrics.get(v.run_id or "", {}),
                aliases=v.aliases,
                # search results carry no aliases on every backend: compare numbers
                live=v.version == live,
            )
            for v in versions
        ]
        summaries.append(ModelSummary(model_name, live, served.get(model_name), rows))
    return summaries


# -- the inference process ----------------------------------------------------------------------
def server_status(*, settings: Settings | None = None) -> dict | None:
    """``{"url", "pid", "workers", "status", "models"}`` of the running process, or None."""
    return _client(_settings(settings)).status()


def server_start(
    *,
    workers: int | None = None,
    host: str | None = None,
    port: int | None = None,
    allow_remote: bool | None = None,
    settings: Settings | None = None,
) -> dict:
    """Start the inference process (if not running) and return its status. A host other than
    loopback needs ``allow_remote=True`` (and then every request needs a token)."""
    changes = {"host": host, "port": port, "allow_remote": allow_remote}
    s = _settings(settings).replace(**{k: v for k, v in changes.items() if v is not None})
    s.check_bind()
    client = _client(s)
    if workers is None:
        client.ensure_running()
    else:
        client.start(workers=workers)
    return client.status() or {}


def server_stop(*, settings: Settings | None = None) -> bool:
    """Stop the inference process this home folder started; False if none was running."""
    return _client(_settings(settings)).stop()


def server_logs(lines: int = 50, *, settings: Settings | None = None) -> str:
    return _client(_settings(settings)).logs(lines)


def server_token(*, settings: Settings | None = None) -> str:
    """The bearer token scripts and ``curl`` need for the HTTP API."""
    return _client(_settings(settings)).token()


def token_create(name: str, *, settings: Settings | None = None) -> str:
    """A new named bearer token (shown once; its usage is metered under ``name``)."""
    return tokens.create_token(_settings(settings), name)


def token_revoke(name: str, *, settings: Settings | None = None) -> None:
    """Revoke a named token; a running process refuses it within a second."""
    tokens.revoke_token(_settings(settings), name)


def token_list(*, settings: Settings | None = None) -> list[dict]:
    """Named tokens: ``[{"name", "created"}]`` (never the tokens themselves)."""
    return tokens.list_tokens(_settings(settings))
