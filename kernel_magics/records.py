"""Typed records that cross process boundaries and reach the front ends.

The supervisor, the workers, the kernel-side targets and every front end (magics, CLI, widgets,
the JupyterLab panel) exchange these instead of loose dicts. Each record turns into JSON with
``to_wire()`` and back with ``from_wire()``; ``from_wire`` validates what it reads, so a record
that arrives malformed fails where it arrives, with a message naming the field.

No torch, numpy or mlflow here: the supervisor and the kernel side import this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kernel_magics.errors import InvalidInput

__all__ = [
    "ModelSpec",
    "HistoryEvent",
    "TransitionResult",
    "ModelState",
    "TokenUsage",
    "ServerStatus",
]

R = TypeVar("R")


def _int_or_none(value: Any, what: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidInput(f"{what} must be a whole number, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be a whole number, got {value!r}") from None


def _float_or_none(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidInput(f"{what} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be a number, got {value!r}") from None


def _mapping(doc: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise InvalidInput(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


class _Wire:
    """``to_wire``: the record as plain JSON values (nested records too)."""

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]


@dataclass(frozen=True)
class ModelSpec(_Wire):
    """Everything a worker needs to load one version; built from the store after the version's
    content hash was checked. ``format`` picks the worker's loader (``km.format``)."""

    name: str
    version: int
    path: str
    sha256: str
    task: str | None = None
    format: str | None = None
    max_batch_size: int | None = None
    max_wait_ms: float | None = None

    @classmethod
    def from_wire(cls, doc: Any) -> ModelSpec:
        doc = _mapping(doc, "a model spec")
        try:
            name, path = str(doc["name"]), str(doc["path"])
            version = _int_or_none(doc["version"], "version")
        except KeyError as err:
            raise InvalidInput(f"model spec needs name, version and path: missing {err}") from None
        if version is None:
            raise InvalidInput("model spec needs a version")
        batch = _int_or_none(doc.get("max_batch_size"), "max_batch_size")
        return cls(
            name=name,
            version=version,
            path=path,
            sha256=str(doc.get("sha256") or ""),
            task=doc.get("task"),
            format=doc.get("format"),
            max_batch_size=batch or None,
            max_wait_ms=_float_or_none(doc.get("max_wait_ms"), "max_wait_ms"),
        )


@dataclass(frozen=True)
class HistoryEvent(_Wire):
    """One deploy / rollback / undeploy of a model; ``time`` is ISO 8601 in UTC."""

    time: str
    action: str
    from_version: int | None
    to_version: int | None

    @classmethod
    def from_wire(cls, doc: Any) -> HistoryEvent:
        doc = _mapping(doc, "a history event")
        return cls(
            time=str(doc.get("time") or ""),
            action=str(doc.get("action") or ""),
            from_version=_int_or_none(doc.get("from_version"), "from_version"),
            to_version=_int_or_none(doc.get("to_version"), "to_version"),
        )


def _history(raw: Any) -> tuple[HistoryEvent, ...]:
    return tuple(HistoryEvent.from_wire(e) for e in (raw or ()))


@dataclass(frozen=True)
class TransitionResult(_Wire):
    """The answer to a deploy, rollback or undeploy. ``version`` is None after an undeploy;
    ``reused`` when the version was already loaded (a rollback to the standby loads nothing)."""

    name: str
    action: str
    version: int | None
    previous_version: int | None
    load_ms: float | None = None
    ready_at: float | None = None
    reused: bool = False
    url: str | None = None
    history: tuple[HistoryEvent, ...] = ()

    @classmethod
    def from_wire(cls, doc: Any) -> TransitionResult:
        doc = _mapping(doc, "a transition result")
        return cls(
            name=str(doc.get("name") or ""),
            action=str(doc.get("action") or ""),
            version=_int_or_none(doc.get("version"), "version"),
            previous_version=_int_or_none(doc.get("previous_version"), "previous_version"),
            load_ms=_float_or_none(doc.get("load_ms"), "load_ms"),
            ready_at=_float_or_none(doc.get("ready_at"), "ready_at"),
            reused=bool(doc.get("reused", False)),
            url=doc.get("url"),
            history=_history(doc.get("history")),
        )

    def with_url(self, url: str | None) -> TransitionResult:
        return dataclasses.replace(self, url=url)


@dataclass(frozen=True)
class ModelState(_Wire):
    """What a serving target reports for one deployed model: always this shape."""

    name: str
    version: int
    state: str = "live"
    format: str | None = None
    task: str | None = None
    loaded_at: str | None = None
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    fast_path: bool = False
    fixed_batch: int | None = None
    load_ms: float | None = None
    warm_ms: float | None = None
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    history: tuple[HistoryEvent, ...] = ()

    @classmethod
    def from_wire(cls, doc: Any) -> ModelState:
        doc = _mapping(doc, "a model state")
        version = _int_or_none(doc.get("version"), "version")
        if version is None:
            raise InvalidInput("a model state needs a version")
        return cls(
            name=str(doc.get("name") or ""),
            version=version,
            state=str(doc.get("state") or "live"),
            format=doc.get("format"),
            task=doc.get("task"),
            loaded_at=doc.get("loaded_at"),
            max_batch_size=_int_or_none(doc.get("max_batch_size"), "max_batch_size"),
            max_wait_ms=_float_or_none(doc.get("max_wait_ms"), "max_wait_ms"),
            fast_path=bool(doc.get("fast_path", False)),
            fixed_batch=_int_or_none(doc.get("fixed_batch"), "fixed_batch"),
            load_ms=_float_or_none(doc.get("load_ms"), "load_ms"),
            warm_ms=_float_or_none(doc.get("warm_ms"), "warm_ms"),
            input=doc.get("input"),
            output=doc.get("output"),
            history=_history(doc.get("history")),
        )


@dataclass(frozen=True)
class TokenUsage(_Wire):
    requests: int = 0
    rows: int = 0


@dataclass(frozen=True)
class ServerStatus(_Wire):
    """A running serving target: where it answers, its processes, what it serves, usage."""

    url: str | None
    pid: int | None
    status: str
    target: str = "local"
    port: int | None = None
    workers: tuple[int, ...] = ()
    started_at: str | None = None
    models: dict[str, ModelState] = field(default_factory=dict)
    usage: dict[str, TokenUsage] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        return self.status == "ready"
