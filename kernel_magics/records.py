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
    "CanaryRule",
    "TransitionResult",
    "ModelState",
    "TokenUsage",
    "VersionStats",
    "GenerationState",
    "RecentError",
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


def _classes(value: Any) -> tuple | None:
    """A classifier's labels: a JSON list, or the tuple ``to_wire`` keeps where the record
    travels pickled, not as JSON (Ray hands a replica its ``user_config`` that way)."""
    return tuple(value) if isinstance(value, (list, tuple)) else None


def _mapping(doc: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise InvalidInput(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


class _Wire:
    """``to_wire``: the record as JSON-encodable values (nested records too; tuples stay
    tuples, so a ``from_wire`` takes a list or a tuple where a record holds a sequence)."""

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
    classes: tuple | None = None  # km.classes: a classifier's labels in output order
    log_sample: float | None = None  # the inference log's share; None: the worker's setting

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
            classes=_classes(doc.get("classes")),
            log_sample=_float_or_none(doc.get("log_sample"), "log_sample"),
        )


@dataclass(frozen=True)
class HistoryEvent(_Wire):
    """One deploy / rollback / undeploy of a model; ``time`` is ISO 8601 in UTC.

    A transition the inference process made by itself (a canary it judged) says why: ``reason``
    is one human line, ``evidence`` the figures and the rule behind it. Both are None for a
    transition someone asked for, and readers that predate them ignore them."""

    time: str
    action: str
    from_version: int | None
    to_version: int | None
    reason: str | None = None
    evidence: dict[str, Any] | None = None

    @classmethod
    def from_wire(cls, doc: Any) -> HistoryEvent:
        doc = _mapping(doc, "a history event")
        evidence = doc.get("evidence")
        if evidence is not None:
            evidence = dict(_mapping(evidence, "a history event's evidence"))
        reason = doc.get("reason")
        return cls(
            time=str(doc.get("time") or ""),
            action=str(doc.get("action") or ""),
            from_version=_int_or_none(doc.get("from_version"), "from_version"),
            to_version=_int_or_none(doc.get("to_version"), "to_version"),
            reason=str(reason) if reason is not None else None,
            evidence=evidence,
        )


# What a canary is judged on when the deploy names no metric (``quality/canary_judge.py`` holds
# the metrics themselves).
DEFAULT_CANARY_METRICS = ("error_rate", "p99")


@dataclass(frozen=True)
class CanaryRule(_Wire):
    """How the inference process judges a canary by itself (``%deploy NAME@V --canary P
    --analyze``): it compares ``metrics`` between the canary's requests and the live version's
    over the last ``window_s`` seconds and, once each has ``min_requests``, promotes the canary
    or rolls it back. None leaves a figure to the process's settings (``canary_window_s``,
    ``canary_min_requests``); the process records the rule with every figure filled in."""

    metrics: tuple[str, ...] = DEFAULT_CANARY_METRICS
    window_s: float | None = None
    min_requests: int | None = None

    @classmethod
    def from_wire(cls, doc: Any) -> CanaryRule:
        doc = _mapping(doc, "a canary rule")
        unknown = set(doc) - {"metrics", "window_s", "min_requests"}
        if unknown:
            raise InvalidInput(f"unknown canary rule field(s): {', '.join(sorted(unknown))}")
        metrics = doc.get("metrics")
        if metrics is None:
            metrics = DEFAULT_CANARY_METRICS
        if (
            isinstance(metrics, str)
            or not isinstance(metrics, list | tuple)
            or not metrics
            or not all(isinstance(m, str) for m in metrics)
        ):
            raise InvalidInput("metrics must be a non-empty list of metric names")
        window = _float_or_none(doc.get("window_s"), "window_s")
        if window is not None and not 0 < window <= 7 * 86400:
            raise InvalidInput(f"window_s must be between 0 and one week, got {window}")
        least = _int_or_none(doc.get("min_requests"), "min_requests")
        if least is not None and not 1 <= least <= 10**9:
            raise InvalidInput(f"min_requests must be a whole number of at least 1, got {least}")
        # one metric named twice is judged once
        return cls(tuple(dict.fromkeys(metrics)), window, least)


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
    # action "canary": the share of requests (percent) ``version`` answers beside the live one
    canary: int | None = None
    # the version asked for was already live as asked: nothing changed, nothing was recorded
    unchanged: bool = False
    # action "canary" with analysis: the rule the process judges it by (every figure filled in)
    analyze: CanaryRule | None = None

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
            canary=_int_or_none(doc.get("canary"), "canary"),
            unchanged=bool(doc.get("unchanged", False)),
            analyze=CanaryRule.from_wire(doc["analyze"]) if doc.get("analyze") else None,
        )

    def with_url(self, url: str | None) -> TransitionResult:
        return dataclasses.replace(self, url=url)


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

    @property
    def kv_cache_use(self) -> float | None:
        """The share of the KV-cache budget reserved by running sequences."""
        return self.kv_cache_reserved / self.kv_cache_tokens if self.kv_cache_tokens else None

    @classmethod
    def from_wire(cls, doc: Any) -> GenerationState:
        doc = _mapping(doc, "a generation state")
        return cls(**{f.name: _count(doc.get(f.name), f.name) for f in dataclasses.fields(cls)})

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


def _count(value: Any, what: str) -> int:
    return _int_or_none(value, what) or 0


Buckets = tuple[tuple[float, int], ...]  # Prometheus's cumulative (upper bound s, count)


def bucket_quantile_ms(buckets: Buckets, q: float) -> float | None:
    """The ``q`` quantile in ms of a cumulative histogram, interpolated inside its bucket as
    Prometheus's ``histogram_quantile`` does; None without observations."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):  # beyond the last finite bucket: its bound
                return lower_bound * 1000
            inside = (rank - lower_count) / (count - lower_count) if count > lower_count else 1
            return (lower_bound + (bound - lower_bound) * inside) * 1000
        lower_bound, lower_count = bound, count
    return lower_bound * 1000


def _buckets_since(now: Buckets, earlier: Buckets) -> Buckets:
    before = dict(earlier)
    return tuple((bound, max(0, count - before.get(bound, 0))) for bound, count in now)


def _buckets_from_wire(raw: Any) -> Buckets:
    buckets = []
    for pair in raw or ():
        bound, count = _float_or_none(pair[0], "bucket bound"), _count(pair[1], "bucket")
        buckets.append((float("inf") if bound is None else bound, count))
    return tuple(buckets)


def _buckets_to_wire(buckets: Buckets) -> list[list[Any]]:
    # JSON has no infinity: the last bucket's bound travels as null
    return [[None if bound == float("inf") else bound, count] for bound, count in buckets]


@dataclass(frozen=True)
class VersionStats(_Wire):
    """Counters of one served version since its process started, summed over workers.

    ``latency_buckets`` are Prometheus's cumulative histogram buckets (upper bound in seconds,
    count), so two snapshots subtract into the figures of the time between them (``since``).
    """

    model: str
    version: int
    requests: int = 0
    errors: int = 0  # answered with an error: 4xx (the request's fault) and 5xx
    server_errors: int = 0  # the 5xx among them (the service's fault)
    rows: int = 0  # rows through forward passes
    batches: int = 0  # forward passes
    queue: int = 0  # requests waiting for a forward pass now
    latency_count: int = 0
    latency_sum_s: float = 0.0
    latency_buckets: Buckets = ()
    # a language model: completion tokens generated, time to first token and between tokens
    tokens: int = 0
    ttft_buckets: Buckets = ()
    inter_token_buckets: Buckets = ()

    @property
    def mean_batch_size(self) -> float | None:
        return self.rows / self.batches if self.batches else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def client_errors(self) -> int:
        return max(0, self.errors - self.server_errors)

    @property
    def client_error_rate(self) -> float | None:
        return self.client_errors / self.requests if self.requests else None

    @property
    def server_error_rate(self) -> float | None:
        return self.server_errors / self.requests if self.requests else None

    @property
    def p50_ms(self) -> float | None:
        return self.quantile_ms(0.5)

    @property
    def p99_ms(self) -> float | None:
        return self.quantile_ms(0.99)

    def quantile_ms(self, q: float) -> float | None:
        """The ``q`` quantile of the latency in ms (``bucket_quantile_ms``)."""
        return bucket_quantile_ms(self.latency_buckets, q)

    @property
    def ttft_p50_ms(self) -> float | None:
        return bucket_quantile_ms(self.ttft_buckets, 0.5)

    @property
    def ttft_p99_ms(self) -> float | None:
        return bucket_quantile_ms(self.ttft_buckets, 0.99)

    @property
    def inter_token_p99_ms(self) -> float | None:
        return bucket_quantile_ms(self.inter_token_buckets, 0.99)

    def since(self, earlier: VersionStats | None) -> VersionStats:
        """What happened between ``earlier`` (a previous snapshot) and this one; the whole
        count when there is no earlier one or the counters restarted (a process restart)."""
        if earlier is None or earlier.requests > self.requests:
            return self
        return dataclasses.replace(
            self,
            requests=self.requests - earlier.requests,
            errors=max(0, self.errors - earlier.errors),
            server_errors=max(0, self.server_errors - earlier.server_errors),
            rows=max(0, self.rows - earlier.rows),
            batches=max(0, self.batches - earlier.batches),
            latency_count=max(0, self.latency_count - earlier.latency_count),
            latency_sum_s=max(0.0, self.latency_sum_s - earlier.latency_sum_s),
            latency_buckets=_buckets_since(self.latency_buckets, earlier.latency_buckets),
            tokens=max(0, self.tokens - earlier.tokens),
            ttft_buckets=_buckets_since(self.ttft_buckets, earlier.ttft_buckets),
            inter_token_buckets=_buckets_since(
                self.inter_token_buckets, earlier.inter_token_buckets
            ),
        )

    @classmethod
    def from_wire(cls, doc: Any) -> VersionStats:
        doc = _mapping(doc, "version stats")
        version = _int_or_none(doc.get("version"), "version")
        if version is None:
            raise InvalidInput("version stats need a version")
        return cls(
            model=str(doc.get("model") or ""),
            version=version,
            requests=_count(doc.get("requests"), "requests"),
            errors=_count(doc.get("errors"), "errors"),
            server_errors=_count(doc.get("server_errors"), "server_errors"),
            rows=_count(doc.get("rows"), "rows"),
            batches=_count(doc.get("batches"), "batches"),
            queue=_count(doc.get("queue"), "queue"),
            latency_count=_count(doc.get("latency_count"), "latency_count"),
            latency_sum_s=_float_or_none(doc.get("latency_sum_s"), "latency_sum_s") or 0.0,
            latency_buckets=_buckets_from_wire(doc.get("latency_buckets")),
            tokens=_count(doc.get("tokens"), "tokens"),
            ttft_buckets=_buckets_from_wire(doc.get("ttft_buckets")),
            inter_token_buckets=_buckets_from_wire(doc.get("inter_token_buckets")),
        )

    def to_wire(self) -> dict[str, Any]:
        doc = super().to_wire()
        for key in ("latency_buckets", "ttft_buckets", "inter_token_buckets"):
            doc[key] = _buckets_to_wire(getattr(self, key))
        doc.update(mean_batch_size=self.mean_batch_size, p50_ms=self.p50_ms, p99_ms=self.p99_ms)
        doc.update(
            ttft_p50_ms=self.ttft_p50_ms,
            ttft_p99_ms=self.ttft_p99_ms,
            inter_token_p99_ms=self.inter_token_p99_ms,
        )
        return doc


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

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def to_wire(self) -> dict[str, Any]:
        doc = super().to_wire()
        # nested records with their own wire form (infinite bucket bounds, derived figures)
        doc["versions"] = [v.to_wire() for v in self.versions]
        doc["models"] = {name: m.to_wire() for name, m in self.models.items()}
        return doc
