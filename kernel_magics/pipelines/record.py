"""The MLflow side of a pipeline run: open it, close it, read it back.

One pipeline execution is one run of the experiment ``kernel-magics-pipelines``:

- params: the notebook's parameters (as text, for the MLflow UI); the exact values (JSON, types
  kept) are the artifact ``input/parameters.json``, next to the input notebook itself
  (``input/<notebook>.ipynb``), so a rerun needs neither the file nor its old content;
- tags: ``km.pipeline.notebook`` (the source path), ``km.pipeline.notebook_sha256`` (of the
  notebook executed), ``km.pipeline.rerun_of``, ``km.pipeline.error`` (the failing cell, one
  line), ``km.pipeline.versions`` (``NAME@V,...``) and the provenance (``provenance.py``);
- metrics: what the notebook logged with ``kernel_magics.pipelines.log_metric``;
- artifacts: ``executed/<notebook>.ipynb``, outputs and the error cell included.

Runs created inside the pipeline (training, registration, evaluation) carry
``km.pipeline_run``; ``read_record`` finds them and the versions they registered.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_magics.errors import InvalidInput, NotFound
from kernel_magics.evaluation import html_view
from kernel_magics.orphans import owner_tags
from kernel_magics.pipelines import EXPERIMENT, TAG_PIPELINE_RUN, pipeline_tags, provenance
from kernel_magics.store import Store, retry_locked

TAG_NOTEBOOK = "km.pipeline.notebook"
TAG_NOTEBOOK_SHA = "km.pipeline.notebook_sha256"
TAG_RERUN_OF = "km.pipeline.rerun_of"
TAG_EXECUTED_FROM = "km.pipeline.executed_from"  # "file" or "stored copy" (a rerun's default)
TAG_ERROR = "km.pipeline.error"
TAG_VERSIONS = "km.pipeline.versions"
TAG_SECONDS = "km.pipeline.seconds"
INPUT_DIR, EXECUTED_DIR, PARAMETERS_FILE = "input", "executed", "parameters.json"
MAX_PARAM_CHARS = 6000  # MLflow's limit for a param value; the JSON artifact keeps everything


@dataclass
class LinkedVersion:
    """A version a pipeline registered, with the metrics of the run that registered it."""

    name: str
    version: int
    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class PipelineRecord:
    """One pipeline run as the store has it (``r = %pipeline ...``)."""

    run_id: str
    run_name: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED
    notebook: str  # the source path it was run from
    parameters: dict[str, Any]
    metrics: dict[str, float]
    provenance: dict[str, str]
    versions: list[LinkedVersion] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)  # every run created inside it
    input_notebook: str | None = None  # the stored copy of the notebook that was executed
    executed_notebook: str | None = None
    error: str | None = None
    rerun_of: str | None = None
    executed_from: str = "file"
    seconds: float | None = None

    _repr_html_ = html_view  # the view the front end registered

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, doc: dict[str, Any]) -> PipelineRecord:
        versions = [LinkedVersion(**v) for v in doc.get("versions", [])]
        return cls(**{**doc, "versions": versions})


@dataclass
class RunSpec:
    """What to run: a notebook file with parameters, or (``rerun_of``) a recorded run again."""

    cwd: str
    notebook: str | None = None  # required unless rerun_of (then: run this file, not the copy)
    parameters: dict[str, Any] | None = None  # a rerun's default: the recorded ones
    run_name: str | None = None
    rerun_of: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Started:
    """An opened run: what to execute, with which parameters."""

    run_id: str
    input_path: str
    notebook: str
    parameters: dict[str, Any]


# -- open -----------------------------------------------------------------------------------------
def open_run(store: Store, spec: RunSpec, scratch: Path) -> Started:
    """Create the run (tags, params, provenance, the input notebook and parameters stored) and
    say what to execute. ``scratch``: a folder for a rerun's copy of the stored notebook."""
    from mlflow.entities import Param, RunTag

    executed_from = "file"
    if spec.rerun_of:
        original = read_record(store, spec.rerun_of)
        parameters = dict(original.parameters)
        parameters.update(spec.parameters or {})
        notebook = spec.notebook or original.notebook
        if spec.notebook is None:
            input_path = _download(store, spec.rerun_of, original.input_notebook, scratch)
            executed_from = "stored copy"
        elif not Path(notebook).is_file():
            raise NotFound(f"{notebook} no longer exists: rerun from the stored copy instead")
        else:
            input_path = Path(notebook)
    else:
        if spec.notebook is None:
            raise InvalidInput("no notebook to run")
        notebook, parameters, input_path = spec.notebook, dict(spec.parameters or {}), None
    source = Path(input_path or notebook)
    tags = {
        "mlflow.runName": spec.run_name or Path(notebook).stem,
        "mlflow.source.name": notebook,
        TAG_NOTEBOOK: notebook,
        TAG_NOTEBOOK_SHA: provenance.file_sha256(source),
        TAG_EXECUTED_FROM: executed_from,
        **provenance.collect(Path(notebook), parameters, Path(spec.cwd)),
    }
    if spec.rerun_of:
        tags[TAG_RERUN_OF] = spec.rerun_of
    tags.update(pipeline_tags())  # a pipeline started inside another one is linked to it
    tags.update(owner_tags())  # a sweep marks the run KILLED if this process dies with it open
    params = [Param(k, _param_text(v)) for k, v in parameters.items()]
    experiment_id = store.experiment_id(EXPERIMENT)
    client = store.client
    with store.write_lock():
        run = retry_locked(client.create_run, experiment_id, run_name=tags["mlflow.runName"])
        run_id = run.info.run_id
        retry_locked(
            client.log_batch,
            run_id,
            params=params,
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
    document = scratch / PARAMETERS_FILE
    document.write_text(json.dumps(parameters, indent=1, default=str))
    client.log_artifact(run_id, str(document), INPUT_DIR)
    client.log_artifact(run_id, str(source), INPUT_DIR)
    return Started(run_id, str(source), notebook, parameters)


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:MAX_PARAM_CHARS]


def _download(store: Store, run_id: str, stored: str | None, scratch: Path) -> Path:
    if not stored:
        raise NotFound(f"pipeline run {run_id} has no stored input notebook")
    name = f"{INPUT_DIR}/{Path(stored).name}"
    return Path(store.client.download_artifacts(run_id, name, str(scratch)))


# -- close ----------------------------------------------------------------------------------------
def close_run(
    store: Store,
    run_id: str,
    status: str,
    *,
    executed: Path | None,
    error: str | None,
    seconds: float | None,
) -> PipelineRecord:
    """Store the executed notebook, link what the notebook registered, end the run."""
    from mlflow.entities import RunTag

    client = store.client
    if executed is not None and executed.is_file():
        client.log_artifact(run_id, str(executed), EXECUTED_DIR)
    record = read_record(store, run_id)
    record.status, record.error, record.seconds = status, error, seconds
    tags = {TAG_VERSIONS: ",".join(f"{v.name}@{v.version}" for v in record.versions)}
    if error:
        tags[TAG_ERROR] = error[:5000]
    if seconds is not None:
        tags[TAG_SECONDS] = f"{seconds:.3f}"
    with store.write_lock():
        retry_locked(client.log_batch, run_id, tags=[RunTag(k, v) for k, v in tags.items() if v])
        retry_locked(client.set_terminated, run_id, status)
    return record


# -- read -----------------------------------------------------------------------------------------
def read_record(store: Store, run_id: str) -> PipelineRecord:
    """A pipeline run, its parameters (exact types), metrics and linked versions."""
    from mlflow.exceptions import MlflowException

    try:
        run = store.client.get_run(run_id)
    except MlflowException:
        raise NotFound(f"no run with id {run_id!r} in the store at {store.uri}") from None
    tags = run.data.tags
    if TAG_NOTEBOOK not in tags:
        raise NotFound(f"run {run_id} is not a pipeline run (no {TAG_NOTEBOOK} tag)")
    stored = _artifact_files(store, run_id, INPUT_DIR)
    executed = _artifact_files(store, run_id, EXECUTED_DIR)
    notebook_copy = next((p for p in stored if p.endswith(".ipynb")), None)
    base = _local(run.info.artifact_uri)
    seconds = tags.get(TAG_SECONDS)
    linked = linked_runs(store, run_id)
    return PipelineRecord(
        run_id=run_id,
        run_name=run.info.run_name or "",
        status=run.info.status,
        notebook=tags[TAG_NOTEBOOK],
        parameters=_parameters(store, run_id, stored, base),
        metrics=dict(run.data.metrics),
        provenance=provenance.strip(tags),
        versions=_versions(store, linked),
        runs=[r.info.run_id for r in linked],
        input_notebook=f"{base}/{notebook_copy}" if notebook_copy else None,
        executed_notebook=f"{base}/{executed[0]}" if executed else None,
        error=tags.get(TAG_ERROR),
        rerun_of=tags.get(TAG_RERUN_OF),
        executed_from=tags.get(TAG_EXECUTED_FROM, "file"),
        seconds=float(seconds) if seconds else None,
    )


def linked_runs(store: Store, run_id: str) -> list[Any]:
    """Runs created inside the pipeline, oldest first, in every experiment."""
    client = store.client
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        ids, filter_string=f"tags.`{TAG_PIPELINE_RUN}` = '{run_id}'", max_results=5000
    )
    return sorted(runs, key=lambda r: r.info.start_time or 0)


def _versions(store: Store, runs: list[Any]) -> list[LinkedVersion]:
    found = []
    for run in runs:
        rid = run.info.run_id
        for mv in store.client.search_model_versions(f"run_id = '{rid}'"):
            found.append(LinkedVersion(mv.name, int(mv.version), rid, dict(run.data.metrics)))
    return sorted(found, key=lambda v: (v.name, v.version))


def _artifact_files(store: Store, run_id: str, folder: str) -> list[str]:
    return [f.path for f in store.client.list_artifacts(run_id, folder) if not f.is_dir]


def _parameters(store: Store, run_id: str, stored: list[str], base: str) -> dict[str, Any]:
    name = f"{INPUT_DIR}/{PARAMETERS_FILE}"
    if name not in stored:
        return {}
    local = Path(f"{base}/{name}")
    if not local.is_file():  # a remote artifact store
        local = Path(store.client.download_artifacts(run_id, name))
    return json.loads(local.read_text())


def _local(uri: str) -> str:
    """A ``file:`` artifact URI as a path; other URIs as they are."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("", "file"):
        return urllib.request.url2pathname(parsed.path)
    return uri
