"""Registering a model as a new version: the one path every model takes into the lifecycle.

``%train`` (through ``tracking.run_training``), ``%register`` / ``api.register`` (a model
trained anywhere), the benchmark and the tests all call ``register_version``. It logs the model
(MLflow's pytorch flavor, pt2 via ``torch.export`` so a class defined in a notebook serves
without the notebook; MLflow's pickle format, with the reason said, when the exporter cannot
trace it), hashes the model folder, and creates the version with every tag in one call under the
store's write lock, so no version ever lacks the hash the inference process checks before
loading it. Everything a caller can get wrong is checked before any run is opened.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel_magics.errors import InvalidInput, first_line
from kernel_magics.frameworks import EXAMPLE_ROWS
from kernel_magics.runs import (
    FORMATS,
    create_version,
    log_model,
    mlflow_run,
    removed_on_failure,
    store_errors,
)
from kernel_magics.store import (
    TAG_CLASSES,
    TAG_FORMAT,
    TAG_PARENT,
    TAG_RECIPE,
    TAG_SHA256,
    TAG_TASK,
    Store,
    hash_model_dir,
    parse_ref,
    retry_locked,
    validate_name,
)
from kernel_magics.views import front_end_view

if TYPE_CHECKING:
    import numpy as np
    import torch

    from kernel_magics.preprocess import TableEncoder
    from kernel_magics.quality.profile import ReferenceProfile

__all__ = [
    "TASKS",
    "LogFn",
    "RegisterResult",
    "register_version",
    "check_model",
    "example_rows",
    "probe",
    "resolve_parent",
]

TASKS = ("classification", "regression", "other")
MAX_RECIPE_CHARS = 100_000  # MLflow's limit for a model version tag value
# ``log_fn(example, extra_files) -> (model_info, km.format, notes)``: logs an artifact made
# elsewhere (an ONNX export by kernel_magics.optimize) in the active run instead of the torch
# model, with ``extra_files`` (paths) in its folder as ``log_model`` puts them.
LogFn = Callable[[Any, list[str]], tuple[Any, str, list[str]]]


@dataclass(frozen=True)
class RegisterResult:
    """A registered version (``r = %register ...``)."""

    name: str
    version: int
    run_id: str
    format: str  # km.format: "pt2", "pickle" (or what a log_fn logged: "onnx")
    notes: list[str] = field(default_factory=list)
    parent: str | None = None  # "NAME@VERSION" this version was derived from
    recipe: str | None = None  # how it was made, in the author's words
    sha256: str = ""
    seconds: float = 0.0  # log + hash + register

    def _repr_html_(self) -> str | None:
        return front_end_view(self, "text/html")  # the view %load_ext registered, if any


def register_version(
    store: Store,
    model: Any,
    example: Any,
    *,
    name: str,
    run_id: str | None = None,
    task: str | None = None,
    classes: list | None = None,
    metrics: Mapping[str, float] | None = None,
    params: Mapping[str, Any] | None = None,
    parent: str | None = None,
    recipe: str | None = None,
    serialization: str = "pt2",
    log_fn: LogFn | None = None,
    encoder: TableEncoder | None = None,
    finish: Callable[[Path, str], Mapping[str, str]] | None = None,
    sample: Any = None,
    reference: Any = None,
) -> RegisterResult:
    """Log ``model`` and register it as the next version of ``name``.

    ``example``: a few input rows (array, tensor or DataFrame; the first 5 rows are kept; one
    row is repeated to two, so torch.export keeps the batch size dynamic). The model is
    exported in eval mode. It runs inside the active MLflow run, or run ``run_id``, or a run of
    its own that also records ``metrics`` and ``params``. ``parent`` ("NAME@VERSION" or
    "NAME@ALIAS", which must exist) and ``recipe`` become the version tags ``km.parent`` and
    ``km.recipe``. ``serialization="pickle"`` skips torch.export (for models whose exported
    graph would not do what the Python does, e.g. a sleep). ``log_fn(example, files)`` logs an
    artifact exported elsewhere (optimize's ONNX files; ``model`` then runs that artifact for
    the probe) and returns ``(model_info, format, notes)``. ``encoder`` (a fitted
    ``preprocess.TableEncoder``) is saved in the model folder as the version's declared encoding
    step; ``example`` is then already encoded. A scikit-learn estimator, a Keras 3 model, an
    ONNX model or a model file path (``frameworks.prepare``) is converted and checked on
    ``example`` and ``sample`` (more rows) by its own module; its task and classes come from
    the model.
    ``finish(folder, format)`` runs once the model
    is logged and hashed, before the version exists, and returns more tags for it (optimize's
    measured ``km.opt.*`` figures): the version is created last, in one call with every tag, so
    a process killed at any point leaves no version without them. ``reference`` (raw input
    rows, as clients send them) becomes the version's reference profile for drift
    (``quality.profile``, with the model's predictions on those rows), saved in the model
    folder inside its hash; a ``ReferenceProfile`` is saved as it is (optimize carries its
    parent's). Bad input raises
    ``InvalidInput`` or ``NotFound`` before anything is written.
    """
    import mlflow

    from kernel_magics.training.fit import eval_mode

    validate_name(name)
    checked_task = _check_task(task)
    class_tag = _classes_tag(classes)
    logged_metrics = _check_metrics(metrics)
    logged_params = _check_params(params)
    if serialization not in FORMATS:
        raise InvalidInput(f"serialization must be one of {', '.join(FORMATS)}")
    if recipe is not None and (not isinstance(recipe, str) or len(recipe) > MAX_RECIPE_CHARS):
        raise InvalidInput(f"recipe must be text of at most {MAX_RECIPE_CHARS} characters")
    from kernel_magics.frameworks import prepare

    foreign = None if log_fn else prepare(model, example, sample=sample, task=task, classes=classes)
    if foreign is None:
        model = check_model(model)
        if example is None:
            raise InvalidInput("give an example: a few input rows of the model (--example X[:5])")
        inputs, notes = example_rows(example)
        probe(model, inputs)
    else:  # scikit-learn, a model file: checked and converted, logged by its own log_fn
        inputs, notes, log_fn = foreign.inputs, list(foreign.notes), foreign.log_fn
        encoder = foreign.encoder or encoder  # string columns one-hot encoded before the model
        checked_task, class_tag = foreign.task, _classes_tag(foreign.classes)
    with store_errors(f"cannot open the model store at {store.uri}"):
        parent_ref = resolve_parent(store, parent)
    from kernel_magics.quality.profile import ReferenceProfile

    profile = (
        reference
        if reference is None or isinstance(reference, ReferenceProfile)
        else reference_profile(
            model if foreign is None else None,
            reference,
            task=checked_task,
            classes=json.loads(class_tag) if class_tag else None,
            encoder=encoder,
            dtype=inputs.dtype,
            estimator=model if foreign is not None else None,
        )
    )

    tags = {TAG_TASK: checked_task, TAG_CLASSES: class_tag, TAG_PARENT: parent_ref}
    tags[TAG_RECIPE] = recipe or None
    tags.update(foreign.tags if foreign else {})
    with store.tracking(), mlflow_run(store, f"{name}-register", run_id=run_id) as run:
        with store.write_lock(), store_errors("could not log to the store"):
            if logged_params:
                mlflow.log_params(logged_params)
            if logged_metrics:
                retry_locked(mlflow.log_metrics, logged_metrics)
            mlflow.set_tags({"km.model": name})
        started = time.perf_counter()
        saving = store_errors("could not save the model to the store")
        with store.write_lock(), saving, removed_on_failure(store, run):
            training_mode = eval_mode(model) if foreign is None else contextlib.nullcontext()
            with training_mode, tempfile.TemporaryDirectory() as extra:
                files = [str(encoder.write(Path(extra)))] if encoder is not None else []
                if profile is not None:
                    files.append(str(profile.write(Path(extra))))
                info, fmt, log_notes = (
                    log_fn(inputs, files)
                    if log_fn
                    else log_model(model, inputs, serialization, extra_files=files)
                )
            local = mlflow.artifacts.download_artifacts(info.model_uri)
            sha256 = hash_model_dir(local)
            tags.update({TAG_SHA256: sha256, TAG_FORMAT: fmt})
        if finish is not None:  # outside the write lock: measuring takes seconds
            tags.update(finish(Path(local), fmt))
        with store.write_lock(), store_errors("could not register the version in the store"):
            version = create_version(
                store, name, info, run.info.run_id, {k: v for k, v in tags.items() if v}
            )
    return RegisterResult(
        name=name,
        version=version,
        run_id=run.info.run_id,
        format=fmt,
        notes=notes + log_notes,
        parent=parent_ref,
        recipe=recipe or None,
        sha256=sha256,
        seconds=time.perf_counter() - started,
    )


# -- checks (before anything is written) --------------------------------------------------------
def check_model(model: Any) -> torch.nn.Module:
    import torch

    if not isinstance(model, torch.nn.Module):
        raise InvalidInput(f"the model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def example_rows(example: Any) -> tuple[np.ndarray, list[str]]:
    """The input example as the model takes it (dtype rule of ``training.inputs``), at least
    two rows: torch.export freezes a batch dimension of size 1 into the graph."""
    from kernel_magics.training.inputs import input_rows

    array = input_rows(example, "the example")
    notes = []
    if len(array) == 1:
        array = array.repeat(2, axis=0)
        notes.append(
            "the example had 1 row; it was repeated to 2 so the exported batch size stays dynamic"
        )
    return array[:EXAMPLE_ROWS].copy(), notes


def probe(model: torch.nn.Module, inputs: np.ndarray) -> None:
    """One forward on the example in eval mode: a model that cannot take it fails here, in one
    line, before a run exists."""
    import torch

    from kernel_magics.training.fit import eval_mode, model_device

    with eval_mode(model), torch.no_grad():
        try:
            out = model(torch.from_numpy(inputs).to(model_device(model)))
        except Exception as err:
            raise InvalidInput(
                f"the model failed on the example: {type(err).__name__}: {first_line(err)}"
            ) from err
    if not isinstance(out, torch.Tensor):
        raise InvalidInput(f"the model returned a {type(out).__name__}; it must return one tensor")


def reference_profile(
    model: torch.nn.Module | None,
    reference: Any,
    *,
    task: str | None,
    classes: list | None,
    encoder: TableEncoder | None,
    dtype: Any,
    estimator: Any = None,
) -> ReferenceProfile:
    """The reference profile of ``reference`` rows, with the model's outputs on them: a torch
    ``model`` (raw rows encoded by ``encoder`` first) or a scikit-learn ``estimator``; a model
    file or ONNX graph gets a profile of its inputs only."""
    from kernel_magics.quality.profile import ReferenceProfile, reference_sample
    from kernel_magics.training.inputs import model_input_array

    rows = reference_sample(reference)
    outputs: Any = None  # a model file or an ONNX graph: a profile of the inputs only
    try:
        model_rows = encoder.encode(rows) if encoder else model_input_array(rows, "the reference")
        if model_rows.ndim == 1:
            model_rows = model_rows.reshape(-1, 1)
        model_rows = model_rows.astype(dtype, copy=False)
        if model is not None:
            outputs = _outputs(model, model_rows)
        elif estimator is not None and hasattr(estimator, "predict"):
            scores = getattr(estimator, "predict_proba", None)
            outputs = scores(model_rows) if task == "classification" and scores else None
            outputs = estimator.predict(model_rows) if outputs is None else outputs
    except InvalidInput:
        raise
    except Exception as err:
        raise InvalidInput(
            f"the model failed on the reference rows: {type(err).__name__}: {first_line(err)}"
        ) from err
    return ReferenceProfile.capture(rows, outputs, task=task, classes=classes)


PROFILE_BATCH = 4096  # rows per forward when the reference's predictions are computed


def _outputs(model: torch.nn.Module, rows: np.ndarray) -> np.ndarray:
    import numpy as np
    import torch

    from kernel_magics.training.fit import eval_mode, model_device

    device = model_device(model)
    out = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(rows), PROFILE_BATCH):
            batch = torch.from_numpy(np.ascontiguousarray(rows[start : start + PROFILE_BATCH]))
            out.append(model(batch.to(device)).float().cpu().numpy())
    return np.concatenate(out)


def resolve_parent(store: Store, parent: str | None) -> str | None:
    """``NAME@VERSION`` or ``NAME@ALIAS`` → ``NAME@VERSION`` of an existing version."""
    if parent is None:
        return None
    if not isinstance(parent, str) or "@" not in parent:
        raise InvalidInput(f"parent must be NAME@VERSION, got {parent!r}")
    parent_name, ref = parse_ref(parent)
    return f"{parent_name}@{store.resolve(parent_name, ref).version}"


def _check_task(task: str | None) -> str | None:
    if task is not None and task not in TASKS:
        raise InvalidInput(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    return task


def _classes_tag(classes: Any) -> str | None:
    if classes is None:
        return None
    labels = [_plain(c) for c in classes]
    try:
        return json.dumps(labels)
    except TypeError:
        raise InvalidInput("classes must be numbers or strings") from None


def _check_metrics(metrics: Any) -> dict[str, float]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise InvalidInput(f"metrics must map names to numbers, got {type(metrics).__name__}")
    out = {}
    for key, value in metrics.items():
        value = _plain(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidInput(f"metric {key!r} must be a number, got {value!r}")
        out[str(key)] = float(value)
    return out


def _check_params(params: Any) -> dict[str, str]:
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise InvalidInput(f"params must map names to values, got {type(params).__name__}")
    return {
        str(k): v if isinstance(v, str) else json.dumps(_plain(v), default=str)
        for k, v in params.items()
    }


def _plain(value: Any) -> Any:
    from kernel_magics.training.inputs import plain  # lazily: it imports pandas

    return plain(value)
