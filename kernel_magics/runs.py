"""Writing to the MLflow store for a training or a registration: the run, the logged model, the
new version. ``registration`` and ``tracking`` compose these; nothing else writes runs.

Every write holds the store's write lock (one SQLite writer across processes), and I/O or
database failures become one ``StoreError`` line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel_magics.errors import KernelMagicsError, StoreError, TrainingInterrupted, first_line
from kernel_magics.store import Store, retry_locked

if TYPE_CHECKING:
    import numpy as np
    import torch
    from mlflow import ActiveRun

log = logging.getLogger(__name__)
# torch.export warns that an RNN's ``_flat_weights`` are "tensor attributes assigned during
# export" that "must be registered as buffers": they are views of the module's registered
# parameters, so the exported program is right. Only that case is silenced; the same warning
# about another attribute (a tensor the user's forward assigns) still shows.
HARMLESS_EXPORT_WARNING = (
    r"The tensor attributes (self(\.\w+)*\._flat_weights\[\d+\](, )?)+ were assigned during export"
)

FORMATS = ("pt2", "pickle")


@contextlib.contextmanager
def mlflow_run(store: Store, run_name: str, *, run_id: str | None = None) -> Iterator[ActiveRun]:
    """The run to log into: the active one (its owner ends it), or run ``run_id``, or a new
    run of the kernel-magics experiment. A run opened here ends FINISHED, KILLED on an
    interrupt, FAILED on any other error. Call inside ``store.tracking()``."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and run_id in (None, active.info.run_id):
        yield active
        return
    with store_errors(f"cannot open the model store at {store.uri}"):
        experiment_id = store.experiment_id()
    with store.write_lock(), store_errors("cannot start a run in the model store"):
        if run_id is None:
            from kernel_magics.orphans import owner_tags
            from kernel_magics.pipelines import pipeline_tags  # inside a pipeline: link to it

            # the owner: a later sweep marks the run KILLED if this process dies with it open
            tags = {**pipeline_tags(), **owner_tags()}
            run = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
        else:
            run = mlflow.start_run(run_id=run_id)
    try:
        yield run
    except (TrainingInterrupted, KeyboardInterrupt):
        _end_run("KILLED", store)
        raise
    except BaseException:
        _end_run("FAILED", store)
        raise
    with store.write_lock():
        mlflow.end_run("FINISHED")


@contextlib.contextmanager
def store_errors(what: str) -> Iterator[None]:
    """Turn I/O and database failures (disk full, store gone) into one clear line."""
    try:
        yield
    except KernelMagicsError:
        raise
    except Exception as err:
        detail = first_line(err, limit=200) if str(err).strip() else ""
        raise StoreError(f"{what}: {type(err).__name__}: {detail}") from err


def _end_run(status: str, store: Store) -> None:
    import mlflow

    try:
        with store.write_lock():
            mlflow.end_run(status)
    except Exception as err:  # the store may be what failed; the original error matters more
        log.warning("could not mark the run %s: %s", status, err)


@contextlib.contextmanager
def removed_on_failure(store: Store, run: ActiveRun) -> Iterator[None]:
    """Model folders that a failed log leaves in a local artifact folder are removed: after a
    full disk, a half-written model would keep it full (and the run could not even be marked
    FAILED). Callers hold the store's write lock, so every new folder is this log's."""
    from urllib.parse import unquote, urlparse

    location = store.client.get_experiment(run.info.experiment_id).artifact_location or ""
    if not location.startswith("file:"):  # a server's artifacts: not ours to clean up here
        yield
        return
    root = Path(unquote(urlparse(location).path)) / "models"
    before = set(os.listdir(root)) if root.is_dir() else set()
    try:
        yield
    except BaseException:
        for entry in (set(os.listdir(root)) if root.is_dir() else set()) - before:
            shutil.rmtree(root / entry, ignore_errors=True)
        raise


def _storage_failure(err: BaseException) -> bool:
    """A failure to write (disk full, file too large, database full), not to export: such an
    error must not be retried with another format."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) or "database or disk is full" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def log_model(
    model: torch.nn.Module,
    example: np.ndarray,
    serialization: str = "pt2",
    extra_files: list[str] | None = None,
) -> tuple[Any, str, list[str]]:
    """Log the model into the active run: pt2 (no pickled code), falling back to MLflow's
    pickle format for models torch.export cannot trace (data-dependent control flow), and say
    so; ``serialization="pickle"`` asks for pickle outright. ``extra_files`` land in the
    model folder's ``extra_files/`` (and in its hash). Returns (model info, format, notes)."""
    import mlflow.pytorch

    from kernel_magics.formats.sequence import sequence_signature

    note = None
    if serialization == "pt2":
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=HARMLESS_EXPORT_WARNING)
                # MLflow keeps dynamic the axes its signature marks -1; inferred from the
                # example, that is the batch only: a sequence model's says its length too
                sequence = sequence_signature(model, example)
                info = mlflow.pytorch.log_model(
                    model,
                    name="model",
                    input_example=example,
                    signature=sequence.signature if sequence else None,
                    pip_requirements=_pip_requirements(),
                    extra_files=extra_files or None,
                )
            return info, "pt2", [sequence.note] if sequence else []
        except Exception as err:  # torch.export failures come in many exception types
            if _storage_failure(err):
                raise
            reason = first_line(err, limit=200)
            log.warning("torch.export failed (%s); saving with the pickle format", reason)
            note = (
                f"torch.export could not trace the model ({reason}); "
                "saved in MLflow's pickle format"
            )
    info = mlflow.pytorch.log_model(
        model,
        name="model",
        input_example=example,
        pip_requirements=_pip_requirements() + ["cloudpickle"],
        serialization_format="pickle",
        extra_files=extra_files or None,
    )
    return info, "pickle", [note] if note else []


def _pip_requirements() -> list[str]:
    # Explicit requirements: letting MLflow infer them costs ~7 s per log_model.
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}"]


def create_version(store: Store, name: str, info: Any, run_id: str, tags: dict[str, str]) -> int:
    """One call creates the version with all its tags (the hash among them): no version ever
    exists without them."""
    from mlflow.exceptions import MlflowException

    if not store.model_exists(name):
        with contextlib.suppress(MlflowException):  # a parallel process registered it first
            store.client.create_registered_model(name)
    version = retry_locked(
        store.client.create_model_version,
        name=name,
        source=info.model_uri,
        run_id=run_id,
        tags=tags,
        model_id=getattr(info, "model_id", None),
    )
    return int(version.version)
