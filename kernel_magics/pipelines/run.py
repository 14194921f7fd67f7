"""Run a notebook as a recorded pipeline: ``%pipeline NOTEBOOK -p NAME VALUE`` and
``kernel-magics pipeline run``.

The run is opened (``recorder``) while papermill loads and the kernel starts; the notebook
executes in that fresh kernel of this environment, which has our settings (``KERNEL_MAGICS_*``)
and, before its first cell, its run id (``KERNEL_MAGICS_PIPELINE_RUN``) in its environment;
the run is closed with the executed notebook and
links to what the notebook registered. A failing cell marks the run FAILED and raises
``PipelineFailed`` with that cell's error on one line; the executed notebook is stored anyway.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kernel_magics.config import Settings
from kernel_magics.errors import InvalidInput, KernelMagicsError, did_you_mean
from kernel_magics.pipelines import ENV_RUN, PipelineFailed
from kernel_magics.pipelines.record import PipelineRecord, RunSpec
from kernel_magics.pipelines.recorder import make_recorder

PARAMETER_TYPES = (str, int, float, bool, type(None), list, dict)


def run_pipeline(
    notebook: str | os.PathLike[str],
    parameters: Mapping[str, Any] | None = None,
    *,
    settings: Settings,
    run_name: str | None = None,
    output: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    progress: str = "bar",
    allow_extra_params: bool = False,
) -> PipelineRecord:
    """Execute ``notebook`` with ``parameters`` as one recorded MLflow run; see the module.
    Every parameter name must be one the notebook's parameters cell sets, unless
    ``allow_extra_params``: a typo would otherwise run with the default and record the typo."""
    path = Path(notebook).expanduser()
    if path.suffix != ".ipynb" or not path.is_file():
        raise InvalidInput(f"{notebook}: no such notebook (.ipynb file)")
    if not allow_extra_params:
        check_declared(path, parameters or {})
    spec = RunSpec(
        cwd=str(Path(cwd or Path.cwd()).resolve()),
        notebook=str(path.resolve()),
        parameters=check_parameters(parameters or {}),
        run_name=run_name,
    )
    record, _ = execute_recorded(spec, settings, progress=progress, output=output)
    return record


def execute_recorded(
    spec: RunSpec,
    settings: Settings,
    *,
    progress: str = "bar",
    output: str | os.PathLike[str] | None = None,
) -> tuple[PipelineRecord, PipelineRecord | None]:
    """Open the run, execute, close it: (the run's record, the original's for a rerun).

    A new run's kernel starts while the run is being opened and learns its run id just before
    the first cell (``execute``'s prelude); a rerun first needs the recorded parameters."""
    from kernel_magics.pipelines.execute import execute

    recorder = make_recorder(settings)
    recorder.begin(spec)
    if spec.rerun_of is None and spec.notebook is not None:
        notebook, parameters = spec.notebook, spec.parameters or {}
    else:
        started = recorder.started()
        notebook, parameters = started.input_path, started.parameters

    def prelude() -> str:
        run_id = recorder.started().run_id
        return f"__import__('os').environ[{ENV_RUN!r}] = {run_id!r}"

    folder = Path(tempfile.mkdtemp(prefix="km-pipeline-out-"))
    executed = folder / Path(spec.notebook or notebook).name
    status, error, began = "FINISHED", None, time.perf_counter()
    try:
        execute(
            Path(notebook),
            executed,
            parameters,
            env=child_env(settings),
            cwd=Path(spec.cwd),
            progress=progress,
            kernel_log=settings.home / "logs" / "pipeline-kernel.log",
            prelude=prelude,
        )
    except PipelineFailed as err:
        status, error = "FAILED", str(err)
    except BaseException:
        with contextlib.suppress(KernelMagicsError):  # no run to close if it never opened
            elapsed = time.perf_counter() - began
            recorder.finish("KILLED", _existing(executed), "interrupted", elapsed)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    try:
        seconds = time.perf_counter() - began
        record, original = recorder.finish(status, _existing(executed), error, seconds)
        if output is not None and executed.is_file():
            Path(output).expanduser().parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(executed, Path(output).expanduser())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if status == "FAILED":
        where = record.executed_notebook or "not written"
        raise PipelineFailed(
            f"pipeline run {record.run_id} failed at {error} (executed notebook: {where})",
            run_id=record.run_id,
            record=record,
        )
    return record, original


def child_env(settings: Settings) -> dict[str, str]:
    """The kernel's environment: ours and our settings (the run id comes in the prelude); text
    progress unless the caller chose (a widget's state means nothing in a stored notebook)."""
    env = {**os.environ, **settings.as_env()}
    env.pop(ENV_RUN, None)  # an enclosing pipeline's run is not this one
    env.setdefault("KERNEL_MAGICS_PROGRESS", "text")
    return env


def check_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Names papermill can assign and values it can write as Python literals."""
    for name, value in parameters.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise InvalidInput(f"parameter name {name!r} is not a Python identifier")
        if not isinstance(value, PARAMETER_TYPES):
            raise InvalidInput(
                f"parameter {name!r}: {type(value).__name__} values cannot be passed to a "
                "notebook (use numbers, strings, booleans, None, lists or dicts)"
            )
    return dict(parameters)


def check_declared(notebook: Path, parameters: Mapping[str, Any]) -> None:
    """Refuse a parameter the notebook's cell tagged ``parameters`` does not set (papermill
    would inject it, the notebook would ignore it, the run would record it)."""
    if not parameters:
        return
    import papermill

    declared = list(papermill.inspect_notebook(str(notebook)))
    unknown = [name for name in parameters if name not in declared]
    if not unknown:
        return
    hint = "; --allow-extra-params passes it anyway"
    if not declared:
        raise InvalidInput(
            f"unknown parameter {unknown[0]!r}: {notebook.name} has no cell tagged "
            f"'parameters'{hint}"
        )
    raise InvalidInput(
        f"unknown parameter {unknown[0]!r}{did_you_mean(unknown[0], declared)}: "
        f"{notebook.name}'s parameters cell sets {', '.join(declared)}{hint}"
    )


def parse_value(text: str) -> Any:
    """A ``-p NAME VALUE`` value as papermill's command line reads it: True/False/None, an
    integer, a float, else the text itself."""
    constants = {"True": True, "False": False, "None": None}
    if text in constants:
        return constants[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None
