"""Making versions: training, registering a model trained anywhere, optimizing one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel_magics.api._context import _settings, _store
from kernel_magics.config import Settings
from kernel_magics.errors import InvalidInput
from kernel_magics.naming import validate_name
from kernel_magics.registration import RegisterResult, register_version
from kernel_magics.tracking import TrainResult, run_training
from kernel_magics.training.config import TrainConfig

if TYPE_CHECKING:
    import torch

    from kernel_magics.optimize import OptimizeResult
    from kernel_magics.orphans import Orphan


# -- training and registration ------------------------------------------------------------------
def train(
    model: Any,
    X: Any = None,
    y: Any = None,
    *,
    name: str,
    text: Any = None,
    tokenizer: Any = None,
    block_size: int = 128,
    config: TrainConfig | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    optimizer: str | None = None,
    weight_decay: float | None = None,
    val_split: float | None = None,
    seed: int | None = None,
    task: str | None = None,
    loss: str | Callable[[Any, Any], Any] | None = None,
    scale: str | None = None,
    encode: str | None = None,
    nproc: int | None = None,
    nnodes: int | None = None,
    rdzv_endpoint: str | None = None,
    progress: Any = "auto",
    reference: Any = None,
    settings: Settings | None = None,
) -> TrainResult:
    """Train ``model`` on (X, y), log the run to MLflow and register a new version of ``name``.

    How to train is ``config`` (a ``TrainConfig``; its defaults without one); the keyword
    arguments given override its fields. ``X`` holds rows of any shape (N, ...); ``y`` may be
    the name of a column of a DataFrame ``X``. ``loss`` is "cross_entropy", "mse", "l1",
    "huber", "bce" or a callable ``(outputs, targets) -> scalar tensor``. ``scale``
    ("standard", the default, "minmax" or "none") scales float features, and regression
    targets for mse/l1/huber, with statistics of the training split; ``encode="onehot"``
    one-hot encodes string columns of a DataFrame. Both become part of the registered
    version, which takes raw rows and answers in raw units (``result.model``,
    ``result.predict``). ``progress`` is "auto", "widget", "text", "none" or a ``Progress``
    object. A kernel interrupt raises ``TrainingInterrupted`` after recording the run as
    KILLED; nothing is registered.
    ``nproc`` > 1 (or ``nnodes`` > 1 with ``rdzv_endpoint``) trains with PyTorch DDP under
    torchrun (``training.distributed``); the kernel still logs the run and registers once.
    A scikit-learn estimator (``MLPClassifier((32,))``, a ``Pipeline``) is fitted with its
    own ``fit`` on the training split instead (``frameworks.sklearn_training``; val_split,
    seed and task apply) and registered like ``register`` registers one. A compiled Keras
    model is fitted with its own ``model.fit`` (``frameworks.keras_training``; epochs,
    batch_size, val_split, seed and task apply) and registered the same way.

    A language model: ``text`` (the corpus, or the path of a UTF-8 file) instead of X, with
    the ``tokenizer``; ``model`` is a transformers causal LM trained on blocks of
    ``block_size`` tokens (perplexity and next-token accuracy per epoch on held-out blocks)
    and registered with its tokenizer as a generative version (``training.text``).

    The version's reference profile for drift (``drift``) is captured on the training split,
    or on ``reference`` (raw rows, as clients send them) when given.
    """
    from kernel_magics.frameworks import is_sklearn
    from kernel_magics.frameworks.keras_models import is_keras
    from kernel_magics.registration import check_model
    from kernel_magics.training.data import prepare_data
    from kernel_magics.training.fit import fit
    from kernel_magics.training.progress import make_progress
    from kernel_magics.training.scaling import scale_data

    validate_name(name)
    if text is None and not is_sklearn(model) and not is_keras(model):
        check_model(model)
    given = {
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "weight_decay": weight_decay,
        "val_split": val_split,
        "seed": seed,
        "task": task,
        "loss": loss,
        "scale": scale,  # preprocessing registered with the model (preprocess.py)
        "encode": encode,
        "nproc": nproc,  # distributed training (training/distributed.py)
        "nnodes": nnodes,
        "rdzv_endpoint": rdzv_endpoint,
    }
    config = (config or TrainConfig()).replace(**{k: v for k, v in given.items() if v is not None})
    if text is not None:
        from kernel_magics.training.text import train_text

        if X is not None or y is not None:
            raise InvalidInput("give either X (and y) or text, not both")
        return train_text(
            _store(_settings(settings)),
            model,
            tokenizer,
            text,
            name=name,
            block_size=block_size,
            config=config,
            progress=make_progress(progress) if isinstance(progress, str) else progress,
        )
    if X is None:
        raise InvalidInput("train needs X (and y), or text with a tokenizer")
    if is_keras(model):  # a torch module under the torch backend, but fitted by Keras itself
        from kernel_magics.frameworks.keras_training import train_keras

        return train_keras(
            _store(_settings(settings)), model, X, y, name=name, config=config, reference=reference
        )
    if is_sklearn(model):  # its own fit: the split, run, metrics and record of a torch training
        from kernel_magics.frameworks.sklearn_training import train_estimator

        return train_estimator(
            _store(_settings(settings)), model, X, y, name=name, config=config, reference=reference
        )
    data = prepare_data(
        X,
        y,
        task=config.target_task,
        val_split=config.val_split,
        seed=config.seed,
        encode=config.encode,
    )
    data = scale_data(data, config)  # fitted on the training split; registered with the model
    reporter = make_progress(progress) if isinstance(progress, str) else progress

    def fit_fn(on_epoch: Any) -> Any:
        from kernel_magics.training.distributed import fit_distributed, is_distributed

        if is_distributed(config):  # the same run and registration; the fit runs in torchrun
            return fit_distributed(model, data, config, on_epoch=on_epoch, progress=reporter)
        return fit(model, data, config, on_epoch=on_epoch, progress=reporter)

    return run_training(
        _store(_settings(settings)), name, model, data, config, fit_fn, reference=reference
    )


def register(
    model: Any,
    example: Any = None,
    *,
    name: str,
    tokenizer: Any = None,
    task: str | None = None,
    classes: list | None = None,
    metrics: dict[str, float] | None = None,
    params: dict[str, Any] | None = None,
    parent: str | None = None,
    recipe: str | None = None,
    sample: Any = None,
    reference: Any = None,
    settings: Settings | None = None,
) -> RegisterResult:
    """Register a model trained anywhere (your own loop, a library) as the next version of
    ``name``, ready to deploy like a ``train`` result.

    ``example``: a few input rows of the model (array, tensor or DataFrame of shape (N, ...),
    in the dtype the model takes). One MLflow run records ``metrics`` and ``params``; the model
    is exported (pt2, or MLflow's pickle format with the reason in ``notes``) in eval mode.
    ``task``: "classification" (outputs are class scores; ``classes`` names them),
    "regression" or "other". ``parent`` ("NAME@VERSION", which must exist) and ``recipe`` (how
    it was made) are kept on the version and shown by ``models()``.

    ``model`` may also be a fitted scikit-learn estimator or Pipeline (converted to ONNX and
    checked against its own outputs on ``example`` and ``sample`` rows; served by the
    estimator itself, with the reason in ``notes``, where conversion fails or changes the
    answers), an ``onnx.ModelProto``, or the path of a ``.onnx``, ``.joblib`` or ``.pkl``
    file (unpickling runs the file's code: a warning says so). Task and classes then come
    from the model.

    ``reference``: rows as clients will send them (the training data, typically); their
    profile and the model's predictions on them are saved with the version, inside its hash,
    for ``drift``.

    A language model: a transformers causal LM with its ``tokenizer``, or ``model`` the path of
    a ``save_pretrained`` folder holding both (no ``example``); stored as safetensors, config
    and tokenizer files and served by ``/v1/completions`` (``kernel_magics.generative``).
    """
    if tokenizer is not None or is_generative(model):
        from kernel_magics.generative.register import register_generative

        return register_generative(
            _store(_settings(settings)),
            model,
            tokenizer,
            name=name,
            metrics=metrics,
            params=params,
            recipe=recipe,
        )
    return register_version(
        _store(_settings(settings)),
        model,
        example,
        name=name,
        task=task,
        classes=classes,
        metrics=metrics,
        params=params,
        parent=parent,
        recipe=recipe,
        sample=sample,
        reference=reference,
    )


def is_generative(model: Any) -> bool:
    """A transformers model object, or a ``save_pretrained`` folder (a folder with the model's
    ``config.json``); transformers is not imported to ask. Files (``.onnx``, ``.joblib``) and
    MLflow model folders go to ``register_version``."""
    if isinstance(model, (str, os.PathLike)):
        folder = Path(model).expanduser()
        return (folder / "config.json").is_file() and not (folder / "MLmodel").is_file()
    return type(model).__module__.startswith("transformers.")


# -- optimization (kernel_magics.optimize; its libraries load only when it runs) --------------
def optimize(
    ref: str,
    *,
    quantize: str | None = None,
    calibration: Any = None,
    prune: float | None = None,
    structured: bool = False,
    finetune_epochs: int = 0,
    distill: bool = False,
    student: torch.nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.5,
    epochs: int = 20,
    export: str | None = None,
    X: Any = None,
    y: Any = None,
    name: str | None = None,
    seed: int = 0,
    progress: Any = "auto",
    settings: Settings | None = None,
) -> OptimizeResult:
    """A new version of ``ref`` ("NAME", "NAME@VERSION", "NAME@ALIAS") made by one method,
    tagged ``km.parent``/``km.recipe``, measured beside its parent; returns an
    ``optimize.OptimizeResult`` (size, parameters, p50 latency at batch 1 and 64 on one thread,
    accuracy/F1 or MSE on the held-out 20% of ``X, y``).

    ``quantize="dynamic"|"static"`` (int8 ONNX served by onnxruntime; static calibrates on
    ``calibration`` rows or X), ``prune=AMOUNT`` (``structured=True`` drops Linear neurons;
    ``finetune_epochs`` on X, y), ``distill=True`` with ``student`` (trained on the parent's
    softened outputs, ``temperature``, ``alpha``, ``epochs``; compared with the same student
    trained on labels only), ``export="onnx"`` (fp32, or int8 with ``quantize``).
    """
    from kernel_magics.optimize import optimize as run_optimize

    return run_optimize(
        _store(_settings(settings)),
        ref,
        quantize=quantize,
        calibration=calibration,
        prune=prune,
        structured=structured,
        finetune_epochs=finetune_epochs,
        distill=distill,
        student=student,
        temperature=temperature,
        alpha=alpha,
        epochs=epochs,
        export=export,
        X=X,
        y=y,
        name=name,
        seed=seed,
        progress=progress,
    )


def store_doctor(settings: Settings | None = None) -> list[Orphan]:
    """Mark runs left RUNNING by a process that is gone (a killed kernel, ``pipeline run`` or
    its notebook's kernel) KILLED; the runs it marked. The store also does this once per
    process when it opens; this is the same sweep on demand, reporting what it found."""
    from kernel_magics.orphans import sweep
    from kernel_magics.store import Store

    return sweep(Store(_settings(settings), sweep=False))
