"""The MLflow store behind kernel-magics: runs, registered versions, the live alias, history.

MLflow is the source of truth. A version is "live" when the registry alias ``production`` points
at it; every deploy, rollback and undeploy is also appended to a deployment history kept as runs
of the experiment ``kernel-magics-deployments`` (one run per event, tagged ``km.*``), so the
MLflow UI shows it next to the training runs. Nothing here talks to the inference process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel_magics.config import (
    DEPLOYMENTS_EXPERIMENT_NAME,
    EXPERIMENT_NAME,
    LIVE_ALIAS,
    Settings,
)
from kernel_magics.deploy_events import event_from_tags, event_run_name, event_tags
from kernel_magics.errors import InvalidInput, NotFound, StoreError, clip
from kernel_magics.naming import is_version_text, not_found, parse_version, validate_name
from kernel_magics.serving.deploy_options import DEPLOY_OPTIONS
from kernel_magics.serving.files import PRIVATE_FILE, create_private, private_home

if TYPE_CHECKING:
    from mlflow import MlflowClient

# Tags written on a model version at registration (kernel_magics.registration): the content
# hash and format always; task and class labels when known; where it came from when said.
TAG_SHA256 = "km.sha256"
TAG_TASK = "km.task"
TAG_CLASSES = "km.classes"
TAG_FORMAT = "km.format"
TAG_PARENT = "km.parent"  # "NAME@VERSION" the version was derived from (fine-tuned, distilled)
TAG_RECIPE = "km.recipe"  # how it was made, in the author's words
# ... and that event's reason on the version it promoted or rolled back, for listings of versions.
TAG_CANARY_VERDICT = "km.canary.verdict"
# Serving options a deploy asked for, kept on the version so that a rollback to it and a
# restarted process serve it the same way (explicit options on a later deploy replace them).
TAG_SERVE_PREFIX = "km.serve."
SERVE_OPTIONS = DEPLOY_OPTIONS


# MLflow's SQL stores cap the values of one IN (...) filter; stay well below every backend's.
RUN_ID_BATCH = 100


def parse_ref(text: str) -> tuple[str, str | None]:
    """``digits`` → (digits, None); ``digits@2`` → (digits, "2"); ``digits@production``."""
    name, _, ref = text.partition("@")
    validate_name(name)
    if "@" in text and not ref:
        raise InvalidInput(f"{clip(text)!r}: nothing after '@' (use NAME@VERSION or NAME@ALIAS)")
    if ref and is_version_text(ref):
        ref = str(parse_version(ref))
    return name, ref or None


def hash_model_dir(path: str | os.PathLike[str]) -> str:
    """SHA-256 over every file of a model folder (relative path and bytes, in sorted order)."""
    root = Path(path)
    if not root.is_dir():
        raise NotFound(f"model folder {root} does not exist")
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(file.relative_to(root).as_posix().encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: int
    run_id: str | None
    source: str
    created: float  # seconds since the epoch
    tags: dict[str, str]
    aliases: tuple[str, ...]

    @property
    def task(self) -> str | None:
        return self.tags.get(TAG_TASK)

    @property
    def classes(self) -> list | None:
        raw = self.tags.get(TAG_CLASSES)
        return json.loads(raw) if raw else None

    @property
    def sha256(self) -> str | None:
        return self.tags.get(TAG_SHA256)

    @property
    def parent(self) -> str | None:
        return self.tags.get(TAG_PARENT)

    @property
    def recipe(self) -> str | None:
        return self.tags.get(TAG_RECIPE)

    @property
    def serve_options(self) -> dict[str, float]:
        """The serving options the last deploy of this version asked for (may be empty)."""
        out: dict[str, float] = {}
        for key in SERVE_OPTIONS:
            raw = self.tags.get(TAG_SERVE_PREFIX + key)
            if raw:
                out[key] = float(raw)
        return out


class Store:
    """A thin, typed facade over ``MlflowClient`` for one tracking URI."""

    def __init__(self, settings: Settings, *, sweep: bool = True):
        self.settings = settings
        # on first opening, mark runs whose process was killed KILLED (orphans.py); the doctor
        # opens without it, to report what it finds
        self._sweep = sweep
        self._client: MlflowClient | None = None
        self._experiment_ids: dict[str, str] = {}
        self._lock: Any = None

    # -- plumbing ------------------------------------------------------------------------------
    @property
    def uri(self) -> str:
        return self.settings.store_uri

    @property
    def is_embedded(self) -> bool:
        return not self.settings.tracking_uri

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            # "Creating initial MLflow database tables..." is noise in a notebook cell, and its
            # tracebacks of database errors (hundreds of lines on a full disk) repeat what the
            # caller reports as one StoreError line.
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

            private_home(self.settings.home)
            if self.is_embedded:
                create_private(self.settings.home / "mlflow.db")
            with self.write_lock():
                self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            if self._sweep:  # runs a killed process left: once per store URI and process
                from kernel_magics.orphans import sweep_once

                sweep_once(self)
        return self._client

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Serialize writes to an embedded SQLite store across processes.

        SQLite allows one writer; parallel papermill runs or two kernels otherwise surface
        "database is locked". A file lock in the home folder queues them instead.
        """
        if not self.uri.startswith("sqlite:"):
            yield
            return
        if self._lock is None:
            from filelock import FileLock

            self.settings.lock_dir.mkdir(parents=True, exist_ok=True)
            # One instance per Store: FileLock counts nested acquisitions of the same object,
            # so a locked method may call another locked method.
            self._lock = FileLock(
                str(self.settings.lock_dir / "store.lock"), timeout=120, mode=PRIVATE_FILE
            )
        with self._lock:
            yield

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        """Point MLflow's fluent API (start_run, log_model) at this store, then restore."""
        import mlflow

        previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        previous_registry = os.environ.get("MLFLOW_REGISTRY_URI")
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(previous or "")
            mlflow.set_registry_uri(previous_registry or "")

    def experiment_id(self, name: str = EXPERIMENT_NAME) -> str:
        if name not in self._experiment_ids:
            with self.write_lock():
                exp = self.client.get_experiment_by_name(name)
                if exp is None:
                    location = None
                    if self.is_embedded:
                        location = (self.settings.artifact_root / name).as_uri()
                    try:
                        exp_id = self.client.create_experiment(name, artifact_location=location)
                    except Exception:  # a parallel process created it first
                        exp = self.client.get_experiment_by_name(name)
                        if exp is None:
                            raise
                        exp_id = exp.experiment_id
                else:
                    exp_id = exp.experiment_id
            self._experiment_ids[name] = exp_id
        return self._experiment_ids[name]

    # -- versions ------------------------------------------------------------------------------
    def _info(self, mv: Any) -> VersionInfo:
        return VersionInfo(
            name=mv.name,
            version=int(mv.version),
            run_id=mv.run_id,
            source=mv.source,
            created=(mv.creation_timestamp or 0) / 1000.0,
            tags=dict(mv.tags or {}),
            aliases=tuple(getattr(mv, "aliases", None) or ()),
        )

    def model_exists(self, name: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
            return True
        except MlflowException:
            return False

    def versions(self, name: str) -> list[VersionInfo]:
        validate_name(name)
        found = self.client.search_model_versions(f"name = '{name}'")
        return sorted((self._info(mv) for mv in found), key=lambda v: v.version)

    def resolve(self, name: str, ref: str | int | None = None) -> VersionInfo:
        """A version by number, by alias, or (ref None) the newest one."""
        from mlflow.exceptions import MlflowException

        validate_name(name)
        if not self.model_exists(name):
            raise NotFound(not_found(name, self.model_names()))
        try:
            if ref is None or ref == "latest":
                versions = self.versions(name)
                if not versions:
                    raise NotFound(f"model {name!r} has no versions")
                return versions[-1]
            if isinstance(ref, int) or is_version_text(ref):
                version = parse_version(ref)
                return self._info(self.client.get_model_version(name, str(version)))
            return self._info(self.client.get_model_version_by_alias(name, str(ref)))
        except MlflowException:
            numbered = isinstance(ref, int) or is_version_text(str(ref))
            what = f"version {ref}" if numbered else f"alias {clip(ref)!r}"
            have = ", ".join(str(v.version) for v in self.versions(name))
            raise NotFound(f"model {name!r} has no {what} (versions: {have})") from None

    def model_names(self) -> list[str]:
        return sorted(self.live_by_model())

    def live_by_model(self) -> dict[str, int | None]:
        """Every registered model and its live version (None: nothing live), in one search."""
        live: dict[str, int | None] = {}
        for rm in self._registered_models():
            aliases = getattr(rm, "aliases", None) or {}
            live[rm.name] = int(aliases[LIVE_ALIAS]) if LIVE_ALIAS in aliases else None
        return live

    def _registered_models(self) -> list[Any]:
        """Every registered model, page by page (MLflow answers 100 per page by default)."""
        found: list[Any] = []
        token = None
        while True:
            page = self.client.search_registered_models(max_results=1000, page_token=token)
            found.extend(page)
            token = getattr(page, "token", None)
            if not token:
                return found

    def local_path(self, info: VersionInfo) -> str:
        """A local folder holding the version's MLflow model (downloaded when remote)."""
        import mlflow

        dest = None
        if not self.is_embedded:
            dest = self.settings.cache_dir / info.name / str(info.version)
            if dest.is_dir() and any(dest.iterdir()):
                return str(next(dest.iterdir()) if len(list(dest.iterdir())) == 1 else dest)
            dest.mkdir(parents=True, exist_ok=True)
        with self.tracking():
            return mlflow.artifacts.download_artifacts(
                artifact_uri=info.source, dst_path=str(dest) if dest else None
            )

    # -- live alias and deployment history ------------------------------------------------------
    def live_version(self, name: str) -> int | None:
        from mlflow.exceptions import MlflowException

        try:
            return int(self.client.get_model_version_by_alias(name, LIVE_ALIAS).version)
        except MlflowException:
            return None

    def live_models(self) -> dict[str, int]:
        return {name: v for name, v in self.live_by_model().items() if v is not None}

    def set_live(self, name: str, version: int | None) -> None:
        """Point the live alias at ``version`` (``None`` removes it), under the write lock."""
        with self.write_lock():
            if version is None:
                with contextlib.suppress(Exception):
                    self.client.delete_registered_model_alias(name, LIVE_ALIAS)
            else:
                self.client.set_registered_model_alias(name, LIVE_ALIAS, str(version))

    def set_serve_options(self, name: str, version: int, options: dict[str, object]) -> None:
        """Record the serving options a deploy asked for on the version (see ``serve_options``)."""
        with self.write_lock():
            for key, value in options.items():
                self.client.set_model_version_tag(
                    name, str(version), TAG_SERVE_PREFIX + key, str(value)
                )

    def append_event(self, name: str, event: dict) -> None:
        """Append one deployment event (as ``transition_event`` builds it) to the history: a
        finished run in the deployments experiment, so the MLflow UI lists it too."""
        exp_id = self.experiment_id(DEPLOYMENTS_EXPERIMENT_NAME)
        with self.write_lock():
            run = self.client.create_run(
                exp_id, run_name=event_run_name(name, event), tags=event_tags(name, event)
            )
            self.client.set_terminated(run.info.run_id, "FINISHED")

    def history(self, name: str) -> list[dict]:
        """Deployment events of one model, oldest first."""
        exp_id = self.experiment_id(DEPLOYMENTS_EXPERIMENT_NAME)
        runs = self.client.search_runs(
            [exp_id], filter_string=f"tags.`km.model` = '{name}'", max_results=5000
        )
        return sorted((event_from_tags(run.data.tags) for run in runs), key=lambda e: e["time"])

    def run_metrics(self, run_ids: list[str]) -> dict[str, dict[str, float]]:
        """Latest metrics of each run: only those runs are read (``run_id IN (...)``, a batch of
        ``RUN_ID_BATCH`` per query), not the whole experiment. ``%train`` runs are in the
        kernel-magics experiment; runs not found there (a pipeline's, another experiment's)
        are looked for in every experiment."""
        wanted = sorted({run_id for run_id in run_ids if run_id.isalnum()})  # hex ids only
        out = self._search_run_metrics([self.experiment_id()], wanted)
        missing = [run_id for run_id in wanted if run_id not in out]
        if missing:
            out.update(self._search_run_metrics(self._all_experiments(), missing))
        return out

    def _search_run_metrics(
        self, experiments: list[str], run_ids: list[str]
    ) -> dict[str, dict[str, float]]:
        from mlflow.entities import ViewType

        out: dict[str, dict[str, float]] = {}
        for start in range(0, len(run_ids), RUN_ID_BATCH):
            batch = run_ids[start : start + RUN_ID_BATCH]
            quoted = ", ".join(f"'{run_id}'" for run_id in batch)
            runs = self.client.search_runs(
                experiments,
                filter_string=f"attributes.run_id IN ({quoted})",
                run_view_type=ViewType.ALL,
                max_results=len(batch),
            )
            for run in runs:
                out[run.info.run_id] = dict(run.data.metrics)
        return out

    def _all_experiments(self) -> list[str]:
        from mlflow.entities import ViewType

        found = self.client.search_experiments(view_type=ViewType.ALL, max_results=1000)
        return [e.experiment_id for e in found]


def retry_locked(fn: Any, *args: Any, attempts: int = 8, **kwargs: Any) -> Any:
    """Call ``fn``; retry with backoff while SQLite reports a lock held by another process."""
    delay = 0.05
    for attempt in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # MlflowException wraps sqlalchemy's OperationalError
            if "database is locked" not in str(err) or attempt == attempts - 1:
                if "database is locked" in str(err):
                    raise StoreError("the model store stayed locked by another process") from err
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")
