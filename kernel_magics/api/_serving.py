"""Deploying, predicting, what exists and the serving target itself (start, stop, tokens)."""

from __future__ import annotations

import contextlib
import functools
from typing import TYPE_CHECKING, Any

from kernel_magics import catalog
from kernel_magics.api._context import _settings, _store, _target, _version_info
from kernel_magics.api._request_rows import request_rows
from kernel_magics.catalog import ModelSummary
from kernel_magics.config import Settings
from kernel_magics.errors import InvalidInput, KernelMagicsError, NotFound, ServiceUnavailable
from kernel_magics.naming import parse_version, validate_name
from kernel_magics.quality.canary_judge import check_rule
from kernel_magics.records import CanaryRule, HistoryEvent, ServerStatus, TransitionResult
from kernel_magics.serving import tokens
from kernel_magics.store import parse_ref

if TYPE_CHECKING:
    import numpy as np


# -- deployment ---------------------------------------------------------------------------------
def deploy(
    target: str,
    version: int | str | None = None,
    *,
    max_batch_size: int | None = None,
    max_wait_ms: float | None = None,
    canary: int | None = None,
    analyze: CanaryRule | bool | None = None,
    log_sample: float | None = None,
    settings: Settings | None = None,
) -> TransitionResult:
    """Make ``NAME`` (newest version), ``NAME@VERSION`` or ``NAME@ALIAS`` live.

    ``log_sample`` (0–1): the share of this version's requests the inference log keeps
    (default: the ``log_sample`` setting; remembered by the version like the batching options).

    Starts the serving target if needed. The new version is loaded and warmed before it takes
    traffic; if it fails, the live version keeps serving and ``DeployFailed`` says why.

    ``canary=P`` (1–99) instead loads the version beside the live one and sends it P% of the
    model's requests; the live alias stays. The split is deterministic: a request with an
    ``X-Request-ID`` header goes by a hash of it, others by a per-worker counter (exactly
    every (100/P)th request). ``promote(name)`` makes the canary live; ``rollback(name)``
    drops it.

    ``analyze=CanaryRule(...)`` (or ``True`` for the default rule) has the inference process
    judge that canary by itself: once both versions answered the rule's ``min_requests`` within
    its window, it compares them on the rule's metrics and promotes the canary, or rolls it back
    if it is worse by more than the ``canary_*`` settings allow; the history event says why.
    """
    rule = CanaryRule() if analyze is True else analyze or None
    if rule is not None:
        if canary is None:
            raise InvalidInput("analyze judges a canary: give canary (a percent) too")
        check_rule(rule)
    name, ref = parse_ref(target)
    ref = str(version) if version is not None else ref
    s = _settings(settings)
    serving = _target(s)
    serving.ensure_running(check=lambda: _store(s).resolve(name, ref))
    options: dict[str, Any] = {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms}
    if canary is not None:  # only then: a target without canaries keeps working without it
        options["canary"] = canary
    if rule is not None:
        options["analyze"] = rule
    if log_sample is not None:  # likewise: the ray target keeps no inference log
        options["log_sample"] = log_sample
    return serving.deploy(name, ref, **options)


def promote(name: str, *, settings: Settings | None = None) -> TransitionResult:
    """Make the running canary of ``name`` live (a normal hot swap; history event "promote")."""
    validate_name(name)
    serving = _target(_settings(settings))
    serving.ensure_running()
    return serving.promote(name)


def rollback(
    name: str, to: int | None = None, *, settings: Settings | None = None
) -> TransitionResult:
    """Make the previously live version (or version ``to``) live again, same hot swap."""
    validate_name(name)
    s = _settings(settings)
    serving = _target(s)
    to = parse_version(to) if to is not None else None
    check = (lambda: _store(s).resolve(name, to)) if to is not None else None
    serving.ensure_running(check=check)
    return serving.rollback(name, to)


def undeploy(name: str, *, settings: Settings | None = None) -> TransitionResult:
    """Stop serving ``name`` and clear its live alias (recorded in the history)."""
    validate_name(name)
    serving = _target(_settings(settings))
    serving.ensure_running()
    return serving.undeploy(name)


def history(name: str, *, settings: Settings | None = None) -> list[HistoryEvent]:
    """Deployment events of ``name``, oldest first (``NotFound`` for a model nobody registered)."""
    validate_name(name)
    s = _settings(settings)
    events = _target(s).history(name)
    if not events:
        _store(s).resolve(name)  # an unknown name is an error that lists the known ones
    return events


# -- inference ----------------------------------------------------------------------------------
def predict(
    name: str, X: Any, *, raw: bool = False, settings: Settings | None = None
) -> np.ndarray:
    """Predictions of the live version of ``name``, through its HTTP endpoint. ``X`` holds rows
    of any shape (N, ...) in the model's dtype (floats, integer token ids, booleans).

    Classification models answer class labels unless ``raw`` (then the model's outputs).
    """
    import numpy as np

    validate_name(name)
    s = _settings(settings)
    try:
        outputs, version = _target(s).predict(name, request_rows(X))
    except NotFound as err:
        raise NotFound(f"{err}{_registered_hint(s, name)}") from None
    if raw:
        return outputs
    task, classes = _labels(s, name, version)
    if task == "classification" and outputs.ndim == 2:
        index = outputs.argmax(axis=1)
        return (
            np.asarray(classes, dtype=object)[index].astype(type(classes[0])) if classes else index
        )
    return outputs


@functools.lru_cache(maxsize=256)
def _labels(settings: Settings, name: str, version: int) -> tuple[str | None, tuple | None]:
    """The task and class labels of the version that answered. The serving target has them
    loaded, so a terminal's `kernel-magics predict` never imports MLflow; the store answers
    only when the target now serves another version (a swap or a canary in between).
    Versions never change once registered, hence the cache."""
    with contextlib.suppress(KernelMagicsError):
        served = _target(settings).model(name)
        said = served.classes is not None or served.task != "classification"
        if served.version == version and said:
            return served.task, served.classes or None
    info = _version_info(settings, name, version)
    return info.task, info.classes


def _registered_hint(settings: Settings, name: str) -> str:
    """The next step when a model is registered but not deployed (only then is the store read:
    a prediction itself needs no MLflow)."""
    try:
        _store(settings).resolve(name)
    except KernelMagicsError:
        return ""
    return f"; it is registered: %deploy {name} (kernel-magics deploy {name} in a terminal)"


# -- what exists --------------------------------------------------------------------------------
def models(*, settings: Settings | None = None) -> list[ModelSummary]:
    """Every registered model with its versions, final metrics, and what is live and served."""
    s = _settings(settings)
    try:
        status = _target(s).status()
    except ServiceUnavailable:
        status = None
    db = s.sqlite_file
    if not s.tracking_uri and db.is_file():
        # the embedded store is read without importing MLflow (≈ 2 s of a terminal command)
        import sqlite3

        from kernel_magics.serving.files import private_home
        from kernel_magics.store_sqlite import SqliteCatalog

        private_home(s.home)  # as a store does when it opens: a listing must not skip it
        with contextlib.suppress(sqlite3.Error):  # a schema it does not know: MLflow reads it
            return catalog.summaries(SqliteCatalog(db), status)
    return catalog.summaries(_store(s), status)


# -- the serving target -------------------------------------------------------------------------
def server_status(*, settings: Settings | None = None) -> ServerStatus | None:
    """A snapshot of the running serving target (what it serves, usage per token), or None."""
    return _target(_settings(settings)).status()


def server_start(
    *,
    workers: int | None = None,
    host: str | None = None,
    port: int | None = None,
    allow_remote: bool | None = None,
    settings: Settings | None = None,
) -> ServerStatus | None:
    """Start the serving target (if not running) and return its status. A host other than
    loopback needs ``allow_remote=True`` (and then every request needs a token)."""
    changes = {"host": host, "port": port, "allow_remote": allow_remote}
    s = _settings(settings).replace(**{k: v for k, v in changes.items() if v is not None})
    s.check_bind()
    serving = _target(s)
    if workers is None:
        serving.ensure_running()
    else:
        serving.start(workers=workers)
    return serving.status()


def server_stop(*, settings: Settings | None = None) -> bool:
    """Stop the serving target this home folder started; False if none was running."""
    return _target(_settings(settings)).stop()


def server_logs(lines: int = 50, *, settings: Settings | None = None) -> str:
    return _target(_settings(settings)).logs(lines)


def server_token(*, settings: Settings | None = None) -> str:
    """The bearer token scripts and ``curl`` need for the HTTP API."""
    return _target(_settings(settings)).token()


def token_create(name: str, *, scope: str | None = None, settings: Settings | None = None) -> str:
    """A new named bearer token (shown once; its usage is metered under ``name``). ``scope``
    ``"predict"`` (the default, ``None``) may predict and read ``/metrics`` and ``/v1/status``;
    ``"manage"`` may also deploy, roll back, promote and undeploy over HTTP."""
    return tokens.create_token(_settings(settings), name, scope or tokens.PREDICT)


def token_revoke(name: str, *, settings: Settings | None = None) -> None:
    """Revoke a named token; a running process refuses it within a second."""
    tokens.revoke_token(_settings(settings), name)


def token_list(*, settings: Settings | None = None) -> list[dict]:
    """Named tokens: ``[{"name", "scope", "created"}]`` (never the tokens themselves)."""
    return tokens.list_tokens(_settings(settings))
