"""Records of a running serving target: one served model, usage per API token, recent errors,
drift checks, and the whole status snapshot."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from kernel_magics.errors import InvalidInput
from kernel_magics.records._wire import (
    _classes,
    _count,
    _float_or_none,
    _int_or_none,
    _mapping,
    _Wire,
)
from kernel_magics.records.lifecycle import (
    HistoryEvent,
    _history,
)
from kernel_magics.records.stats import VersionStats


@dataclass(frozen=True)
class GenerationState(_Wire):
    """A served language model's engine now (``generative/engine.py``): sequences in the
    running batch and waiting, and the KV-cache tokens reserved out of its budget."""

    running: int = 0
    queued: int = 0
    max_running: int = 0
    kv_cache_tokens: int = 0  # the budget (setting gen_kv_cache_tokens)
    kv_cache_reserved: int = 0
    generated_tokens: int = 0  # since the version was loaded
    cancelled: int = 0  # sequences dropped because their client went away
    shared_prompts: int = 0  # prompts prefilled by another request's identical prompt
    prefix_hits: int = 0  # prompts that took their start from the prefix cache
    prefix_tokens_reused: int = 0  # prompt tokens taken from it instead of computed
    prefix_cache_tokens: int = 0  # prompt tokens it holds now
    dtype: str = ""  # the precision the weights are served in (setting gen_dtype)
    threads: int = 0  # intra-op threads of its engine thread (setting gen_threads)

    @property
    def kv_cache_use(self) -> float | None:
        """The share of the KV-cache budget reserved by running sequences."""
        return self.kv_cache_reserved / self.kv_cache_tokens if self.kv_cache_tokens else None

    @classmethod
    def from_wire(cls, doc: Any) -> GenerationState:
        doc = _mapping(doc, "a generation state")
        counts = {
            f.name: _count(doc.get(f.name), f.name)
            for f in dataclasses.fields(cls)
            if f.name != "dtype"
        }
        return cls(**counts, dtype=str(doc.get("dtype") or ""))

    def to_wire(self) -> dict[str, Any]:
        return super().to_wire() | {"kv_cache_use": self.kv_cache_use}


@dataclass(frozen=True)
class ModelState(_Wire):
    """What a serving target reports for one deployed model: always this shape."""

    name: str
    version: int
    state: str = "live"
    format: str | None = None
    task: str | None = None
    # A classifier's labels in output order (km.classes); () none; None: the target did not say
    classes: tuple | None = None
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
    # Serving figures of this (live) version, from the status snapshot; None when the target
    # answered without them (``/v1/models``).
    stats: VersionStats | None = None
    # A canary beside the live version: ``{"version": V, "percent": P}``; None when none runs.
    canary: dict[str, int] | None = None
    # A language model's engine (running, queued, KV cache); None for every other model.
    generation: GenerationState | None = None

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
            classes=_classes(doc.get("classes")),
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
            stats=VersionStats.from_wire(doc["stats"]) if doc.get("stats") else None,
            canary=_canary(doc.get("canary")),
            generation=(
                GenerationState.from_wire(doc["generation"]) if doc.get("generation") else None
            ),
        )

    def to_wire(self) -> dict[str, Any]:
        doc = super().to_wire()
        # the stats' own wire form: JSON has no infinity for the last latency bucket
        doc["stats"] = self.stats.to_wire() if self.stats else None
        doc["generation"] = self.generation.to_wire() if self.generation else None
        return doc


def _canary(raw: Any) -> dict[str, int] | None:
    if not raw:
        return None
    doc = _mapping(raw, "a canary")
    version = _int_or_none(doc.get("version"), "canary version")
    percent = _int_or_none(doc.get("percent"), "canary percent")
    return {"version": version, "percent": percent} if version and percent else None


@dataclass(frozen=True)
class TokenUsage(_Wire):
    requests: int = 0
    rows: int = 0
    prompt_tokens: int = 0  # generative models (0 for the others)
    completion_tokens: int = 0


@dataclass(frozen=True)
class RecentError(_Wire):
    """One request a worker answered with an error (newest last in a snapshot)."""

    time: float
    status: int
    message: str
    model: str = ""
    version: int | None = None

    @classmethod
    def from_wire(cls, doc: Any) -> RecentError:
        doc = _mapping(doc, "a recent error")
        return cls(
            time=_float_or_none(doc.get("time"), "time") or 0.0,
            status=_count(doc.get("status"), "status"),
            message=str(doc.get("message") or ""),
            model=str(doc.get("model") or ""),
            version=_int_or_none(doc.get("version"), "version"),
        )


@dataclass(frozen=True)
class DriftSummary(_Wire):
    """The inference process's latest drift check of one served version
    (``serving/request/drift_monitor.py``): when, over how many logged rows, the PSI per
    feature (``prediction`` for the predictions) and the flagged features. No histograms:
    a dashboard polls this every second; ``%drift`` has the whole report."""

    model: str
    version: int
    time: float
    rows: int
    flagged: tuple[str, ...] = ()
    psi: dict[str, float] = field(default_factory=dict)

    @property
    def max_psi(self) -> float | None:
        return max(self.psi.values()) if self.psi else None

    @classmethod
    def from_wire(cls, doc: Any) -> DriftSummary:
        doc = _mapping(doc, "a drift summary")
        version = _int_or_none(doc.get("version"), "version")
        if version is None:
            raise InvalidInput("a drift summary needs a version")
        flagged = doc.get("flagged") or ()
        if not isinstance(flagged, (list, tuple)):
            raise InvalidInput(f"flagged must be a list of features, got {flagged!r}")
        psi = _mapping(doc.get("psi") or {}, "psi")
        return cls(
            model=str(doc.get("model") or ""),
            version=version,
            time=_float_or_none(doc.get("time"), "time") or 0.0,
            rows=_count(doc.get("rows"), "rows"),
            flagged=tuple(str(f) for f in flagged),
            psi={str(k): _float_or_none(v, f"psi of {k}") or 0.0 for k, v in psi.items()},
        )

    def to_wire(self) -> dict[str, Any]:
        doc = super().to_wire()
        doc["flagged"] = list(self.flagged)
        doc["max_psi"] = self.max_psi
        return doc


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
    # From the status snapshot (one request, ``GET /v1/status``): when it was taken (wall
    # clock), every loaded version's counters (live and standby), the latest error answers,
    # the process log's last lines, and errors for names that are not deployed.
    snapshot_at: float | None = None
    versions: tuple[VersionStats, ...] = ()
    errors: tuple[RecentError, ...] = ()
    log: tuple[str, ...] = ()
    unknown_model_errors: int = 0
    # The inference log's samples, all workers together: {"written": N, "dropped": N}
    inference_log: dict[str, int] = field(default_factory=dict)
    # The latest drift check of each served version with a reference profile (absent from
    # the snapshots of processes older than the field: then empty)
    drift: tuple[DriftSummary, ...] = ()

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def to_wire(self) -> dict[str, Any]:
        doc = super().to_wire()
        # nested records with their own wire form (infinite bucket bounds, derived figures)
        doc["versions"] = [v.to_wire() for v in self.versions]
        doc["models"] = {name: m.to_wire() for name, m in self.models.items()}
        doc["drift"] = [d.to_wire() for d in self.drift]
        return doc

    def drift_of(self, name: str, version: int | None) -> DriftSummary | None:
        return next((d for d in self.drift if (d.model, d.version) == (name, version)), None)
