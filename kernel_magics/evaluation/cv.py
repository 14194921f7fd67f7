"""``%evaluate NAME[@V] --data X Y --cv K --model EXPR``: K-fold cross-validation of the recipe
that made a version.

The recipe is the version's recorded hyper-parameters (its run's params, as ``%train`` logs
them: epochs, lr, batch size, optimizer, weight decay, seed, loss, task) and a model factory
the caller gives (the class is not recoverable from a stored graph). Each fold trains a fresh
model with ``training.fit`` on the other folds and scores it on its own (stratified folds for
classification, shuffled with the recorded seed; the model is built under seed + fold). Mean
and standard deviation (population, ``ddof=0``) per metric; logged as a ``cv`` evaluation run of
the version and as version tags ``km.cv.<metric>`` / ``km.cv.<metric>_std``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kernel_magics.errors import InvalidInput
from kernel_magics.evaluation import html_view
from kernel_magics.evaluation.evaluate import log_to_version
from kernel_magics.evaluation.metrics import HEADLINE
from kernel_magics.store import Store, VersionInfo, parse_ref
from kernel_magics.training.config import LOSS_TASKS, TASKS, TrainConfig

if TYPE_CHECKING:
    import torch

MIN_FOLDS, MAX_FOLDS = 2, 50
_CASTS: dict[str, Callable[[str], Any]] = {
    "epochs": int,
    "lr": float,
    "batch_size": int,
    "optimizer": str,
    "weight_decay": float,
    "seed": int,
}
# Recorded since preprocessing travels with the model; a run without them trained on the data
# as given, so their absence means "none" rather than today's defaults.
_PREPROCESS_CASTS: dict[str, Callable[[str], Any]] = {"scale": str, "encode": str}


@dataclass
class CVResult:
    """What ``%evaluate ... --cv K`` returns."""

    name: str
    version: int
    folds: int
    task: str
    metrics: dict[str, tuple[float, float]]  # metric -> (mean, std)
    per_fold: list[dict[str, float]] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)  # the hyper-parameters used
    run_id: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    _repr_html_ = html_view  # the view the front end registered


def recorded_config(store: Store, info: VersionInfo) -> tuple[TrainConfig, list[str]]:
    """The version's training hyper-parameters as a ``TrainConfig`` (defaults for what its run
    did not record, said in the notes)."""
    params = store.client.get_run(info.run_id).data.params if info.run_id else {}
    values: dict[str, Any] = {k: cast(params[k]) for k, cast in _CASTS.items() if k in params}
    values.update({k: cast(params.get(k, "none")) for k, cast in _PREPROCESS_CASTS.items()})
    notes = []
    missing = [k for k in _CASTS if k not in params]
    if missing:
        notes.append(f"not recorded for v{info.version}, defaults used: {', '.join(missing)}")
    loss = params.get("loss")
    if loss is not None and loss not in LOSS_TASKS:
        raise InvalidInput(
            f"{info.name} v{info.version} was trained with the custom loss {loss!r}, which cannot "
            "be recovered: pass config=TrainConfig(loss=...) to api.evaluate"
        )
    task = params.get("task") or info.task
    values.update(loss=loss, task=task if task in TASKS else None)
    return TrainConfig(**values), notes


def cross_validate(
    store: Store,
    target: str,
    X: Any,
    y: Any,
    model: Callable[[], torch.nn.Module] | torch.nn.Module,
    folds: int,
    *,
    config: TrainConfig | None = None,
) -> CVResult:
    """K-fold cross-validation of version ``target``'s recipe with models from ``model`` (a
    factory, or a module copied afresh for each fold)."""
    import numpy as np

    from kernel_magics.training.data import prepare_data
    from kernel_magics.training.fit import fit
    from kernel_magics.training.scaling import scale_data

    if isinstance(folds, bool) or not isinstance(folds, int) or not MIN_FOLDS <= folds <= MAX_FOLDS:
        raise InvalidInput(f"folds must be a whole number from {MIN_FOLDS} to {MAX_FOLDS}")
    factory = _factory(model)
    started = time.perf_counter()
    name, ref = parse_ref(target)
    info = store.resolve(name, ref)
    notes: list[str] = []
    if config is None:
        config, notes = recorded_config(store, info)
    data = prepare_data(
        X, y, task=config.target_task, val_split=0.0, seed=config.seed, encode=config.encode
    )
    if len(data.X_train) < folds:
        raise InvalidInput(f"{folds} folds need at least {folds} rows; X has {len(data.X_train)}")
    per_fold = []
    for i, (train, test) in enumerate(_splits(data, folds, config.seed, notes)):
        fold = dataclasses.replace(
            data,
            X_train=data.X_train[train],
            y_train=data.y_train[train],
            X_val=data.X_train[test],
            y_val=data.y_train[test],
            metrics_on="validation",
        )
        fold = scale_data(fold, config)  # fitted on this fold's training rows only
        fitted = fit(_fresh(factory, config.seed + i), fold, config)
        per_fold.append(dict(fitted.final_metrics))
    keys = [k for k in per_fold[0] if all(k in f for f in per_fold)]
    summary = {
        k: (float(np.mean([f[k] for f in per_fold])), float(np.std([f[k] for f in per_fold])))
        for k in keys
    }
    result = CVResult(
        info.name, info.version, folds, data.task, summary, per_fold, config.params(data.task)
    )
    result.notes = notes
    result.run_id = _log(store, result)
    result.seconds = time.perf_counter() - started
    return result


def _factory(model: Any) -> Callable[[], torch.nn.Module]:
    import copy

    import torch

    if isinstance(model, torch.nn.Module):
        return lambda: copy.deepcopy(model)
    if not callable(model):
        raise InvalidInput(
            f"model must be an nn.Module or a function returning one, got {type(model).__name__}"
        )
    return model


def _fresh(factory: Callable[[], Any], seed: int) -> torch.nn.Module:
    """A new model, initialized under a fixed seed (without touching the caller's stream)."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = factory()
    if not isinstance(module, torch.nn.Module):
        raise InvalidInput(f"the model factory returned a {type(module).__name__}, not a Module")
    return module


def _splits(data: Any, folds: int, seed: int, notes: list[str]) -> list[tuple[Any, Any]]:
    import numpy as np
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(data.X_train)
    labels = data.y_train.numpy().reshape(n, -1)[:, 0] if data.task == "classification" else None
    if labels is not None and np.bincount(labels).min(initial=n) >= folds:
        splitter: Any = StratifiedKFold(folds, shuffle=True, random_state=seed)
    else:
        if labels is not None:
            notes.append(f"a class has fewer than {folds} rows: folds are not stratified")
        splitter = KFold(folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(n), labels))


def _log(store: Store, result: CVResult) -> str:
    means = {f"cv_{k}_mean": mean for k, (mean, _) in result.metrics.items()}
    stds = {f"cv_{k}_std": std for k, (_, std) in result.metrics.items()}
    headline = {k: v for k, v in result.metrics.items() if k in HEADLINE.get(result.task, ())}
    tags = {f"km.cv.{k}": f"{mean:.6g}" for k, (mean, _) in headline.items()}
    tags.update({f"km.cv.{k}_std": f"{std:.6g}" for k, (_, std) in headline.items()})
    tags["km.cv.folds"] = str(result.folds)
    return log_to_version(
        store,
        result.name,
        result.version,
        kind="cv",
        metrics={**means, **stds},
        params={"folds": result.folds, **result.recipe},
        document={"folds": result.per_fold, "recipe": result.recipe, "notes": result.notes},
        version_tags=tags,
        steps=[{f"fold_{k}": v for k, v in f.items()} for f in result.per_fold],
    )
