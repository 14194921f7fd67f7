"""Every record of ``kernel_magics/records/`` survives its trip through JSON: ``to_wire``
gives strict JSON (no NaN or infinity, which neither orjson nor a browser reads back) and
``from_wire`` rebuilds an equal record, for records hypothesis draws over each field's range."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_magics.errors import InvalidInput
from kernel_magics.records import (
    CanaryRule,
    DriftSummary,
    HistoryEvent,
    ModelSpec,
    ModelState,
    RecentError,
    ServerStatus,
    TokenUsage,
    TransitionResult,
    VersionStats,
)

names = st.text(min_size=1, max_size=20)
texts = st.text(max_size=30)
versions = st.integers(min_value=1, max_value=10**6)
counts = st.integers(min_value=0, max_value=10**9)
seconds = st.floats(min_value=0, max_value=1e10, allow_nan=False, allow_infinity=False)
optional_versions = st.none() | versions
optional_floats = st.none() | seconds
# What a JSON document holds (the input / output descriptions of a model).
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(texts, json_values, max_size=4)


# Enough draws to reach every field's edge (None, 0, +Inf, empty text) in the fast tier.
DRAWS = settings(max_examples=40, deadline=None)


def through_json(doc: dict[str, Any]) -> Any:
    """What the other side of a process boundary reads: strict JSON both ways."""
    return json.loads(json.dumps(doc, allow_nan=False))


history_events = st.builds(
    HistoryEvent,
    time=texts,
    action=texts,
    from_version=optional_versions,
    to_version=optional_versions,
    reason=st.none() | texts,
    evidence=st.none() | json_objects,
)
canary_rules = st.builds(
    CanaryRule,
    metrics=st.lists(names, min_size=1, max_size=4, unique=True).map(tuple),
    window_s=st.none() | st.floats(min_value=0.001, max_value=7 * 86400),
    min_requests=st.none() | st.integers(min_value=1, max_value=10**9),
)


@st.composite
def latency_buckets(draw: st.DrawFn) -> tuple[tuple[float, int], ...]:
    """Prometheus's cumulative buckets: rising bounds ending at +Inf, counts that never fall."""
    bounds = sorted(set(draw(st.lists(seconds, max_size=6))))
    increments = draw(st.lists(counts, min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    total, buckets = 0, []
    for bound, step in zip([*bounds, float("inf")], increments, strict=True):
        total += step
        buckets.append((bound, total))
    return tuple(buckets) if draw(st.booleans()) else ()


version_stats = st.builds(
    VersionStats,
    model=names,
    version=versions,
    requests=counts,
    errors=counts,
    rows=counts,
    batches=counts,
    queue=counts,
    latency_count=counts,
    latency_sum_s=seconds,
    latency_buckets=latency_buckets(),
)
canaries = st.none() | st.fixed_dictionaries(
    {"version": versions, "percent": st.integers(min_value=1, max_value=99)}
)
model_states = st.builds(
    ModelState,
    name=names,
    version=versions,
    state=names,
    format=st.none() | names,
    task=st.none() | names,
    loaded_at=st.none() | texts,
    max_batch_size=optional_versions,
    max_wait_ms=optional_floats,
    fast_path=st.booleans(),
    fixed_batch=optional_versions,
    load_ms=optional_floats,
    warm_ms=optional_floats,
    input=st.none() | json_objects,
    output=st.none() | json_objects,
    history=st.lists(history_events, max_size=3).map(tuple),
    stats=st.none() | version_stats,
    canary=canaries,
)
model_specs = st.builds(
    ModelSpec,
    name=names,
    version=versions,
    path=texts,
    sha256=texts,
    task=st.none() | names,
    format=st.none() | names,
    max_batch_size=optional_versions,
    max_wait_ms=optional_floats,
    classes=st.none() | st.lists(st.integers() | texts, max_size=5).map(tuple),
)
transition_results = st.builds(
    TransitionResult,
    name=texts,
    action=texts,
    version=optional_versions,
    previous_version=optional_versions,
    load_ms=optional_floats,
    ready_at=optional_floats,
    reused=st.booleans(),
    url=st.none() | texts,
    history=st.lists(history_events, max_size=3).map(tuple),
    canary=st.none() | st.integers(min_value=1, max_value=99),
    analyze=st.none() | canary_rules,
)
recent_errors = st.builds(
    RecentError,
    time=seconds,
    status=st.integers(min_value=400, max_value=599),
    message=texts,
    model=texts,
    version=optional_versions,
)
drift_summaries = st.builds(
    DriftSummary,
    model=names,
    version=versions,
    time=seconds,
    rows=counts,
    flagged=st.lists(names, max_size=4, unique=True).map(tuple),
    psi=st.dictionaries(names, seconds, max_size=4),
)

ROUND_TRIPS = [
    (HistoryEvent, history_events),
    (CanaryRule, canary_rules),
    (ModelSpec, model_specs),
    (TransitionResult, transition_results),
    (VersionStats, version_stats),
    (ModelState, model_states),
    (RecentError, recent_errors),
    (DriftSummary, drift_summaries),
]


@pytest.mark.parametrize(
    ("record", "strategy"), ROUND_TRIPS, ids=[record.__name__ for record, _ in ROUND_TRIPS]
)
def test_a_record_comes_back_equal_from_its_wire_form(record: type, strategy: Any) -> None:
    @DRAWS
    @given(strategy)
    def round_trip(value: Any) -> None:
        assert record.from_wire(through_json(value.to_wire())) == value

    round_trip()


@pytest.mark.parametrize(
    ("record", "strategy"), ROUND_TRIPS, ids=[record.__name__ for record, _ in ROUND_TRIPS]
)
def test_a_record_comes_back_equal_from_its_wire_form_unencoded(
    record: type, strategy: Any
) -> None:
    """Ray hands a replica its configuration (model specs) pickled, not through JSON: the
    wire form's tuples arrive as tuples and must read back as JSON's lists do."""

    @DRAWS
    @given(strategy)
    def round_trip(value: Any) -> None:
        assert record.from_wire(value.to_wire()) == value

    round_trip()


@DRAWS
@given(
    st.builds(
        ServerStatus,
        url=st.none() | texts,
        pid=optional_versions,
        status=names,
        target=names,
        port=optional_versions,
        workers=st.lists(versions, max_size=4).map(tuple),
        started_at=st.none() | texts,
        models=st.dictionaries(names, model_states, max_size=3),
        usage=st.dictionaries(names, st.builds(TokenUsage, counts, counts), max_size=3),
        snapshot_at=optional_floats,
        versions=st.lists(version_stats, max_size=3).map(tuple),
        errors=st.lists(recent_errors, max_size=3).map(tuple),
        log=st.lists(texts, max_size=3).map(tuple),
        unknown_model_errors=counts,
        drift=st.lists(drift_summaries, max_size=3).map(tuple),
    )
)
def test_a_server_status_is_strict_json_whose_parts_read_back(status: ServerStatus) -> None:
    """``%serve status --json`` and the panel's status route print ``to_wire``; what it holds
    reads back with each part's own ``from_wire``."""
    doc = through_json(status.to_wire())
    assert {name: ModelState.from_wire(m) for name, m in doc["models"].items()} == status.models
    assert tuple(VersionStats.from_wire(v) for v in doc["versions"]) == status.versions
    assert tuple(RecentError.from_wire(e) for e in doc["errors"]) == status.errors
    assert tuple(DriftSummary.from_wire(d) for d in doc["drift"]) == status.drift
    assert {name: TokenUsage(**u) for name, u in doc["usage"].items()} == status.usage
    assert (doc["url"], doc["pid"], doc["status"], doc["port"]) == (
        status.url,
        status.pid,
        status.status,
        status.port,
    )
    assert tuple(doc["workers"]) == status.workers
    assert tuple(doc["log"]) == status.log


@DRAWS
@given(version_stats)
def test_version_stats_send_their_derived_figures_too(stats: VersionStats) -> None:
    doc = through_json(stats.to_wire())
    assert doc["mean_batch_size"] == stats.mean_batch_size
    assert doc["p50_ms"] == stats.p50_ms
    assert doc["p99_ms"] == stats.p99_ms


@pytest.mark.parametrize(
    ("record", "doc", "field"),
    [
        (ModelSpec, {"name": "m", "path": "/x"}, "version"),
        (ModelSpec, {"name": "m", "version": "two", "path": "/x"}, "version"),
        (HistoryEvent, {"from_version": True}, "from_version"),
        (TransitionResult, {"load_ms": "fast"}, "load_ms"),
        (ModelState, {"name": "m"}, "version"),
        (ModelState, {"version": 1, "canary": {"version": "x", "percent": 5}}, "canary"),
        (VersionStats, {"model": "m", "version": 1, "requests": [1]}, "requests"),
        (RecentError, {"status": "teapot"}, "status"),
        (DriftSummary, {"model": "m", "time": 1}, "version"),
        (DriftSummary, {"version": 1, "flagged": "b"}, "flagged"),
        (DriftSummary, {"version": 1, "psi": {"b": "high"}}, "psi of b"),
        (HistoryEvent, ["not", "an", "object"], "JSON object"),
        (HistoryEvent, {"evidence": [1, 2]}, "evidence"),
        (CanaryRule, {"metrics": "p99"}, "metrics"),
        (CanaryRule, {"metrics": []}, "metrics"),
        (CanaryRule, {"window_s": 0}, "window_s"),
        (CanaryRule, {"min_requests": 0}, "min_requests"),
        (CanaryRule, {"min_requests": 10, "windows": 5}, "windows"),
    ],
)
def test_a_malformed_record_fails_where_it_arrives_naming_the_field(
    record: type, doc: Any, field: str
) -> None:
    with pytest.raises(InvalidInput, match=field):
        record.from_wire(doc)


def test_a_history_event_without_a_reason_reads_as_one_someone_asked_for() -> None:
    """Events written before ``reason``/``evidence`` existed (and every deploy a person asks
    for) read back with both None; a judged canary's event keeps its figures."""
    old = {"time": "2026-01-01T00:00:00+00:00", "action": "deploy", "from_version": 1,
           "to_version": 2}  # fmt: skip
    assert HistoryEvent.from_wire(old).reason is None
    assert HistoryEvent.from_wire(old).evidence is None
    judged = {**old, "action": "canary-drop", "reason": "auto-rollback: …",
              "evidence": {"requests": {"live": 200, "canary": 210}}}  # fmt: skip
    event = HistoryEvent.from_wire(through_json(judged))
    assert event.reason == "auto-rollback: …"
    assert event.evidence == {"requests": {"live": 200, "canary": 210}}


def test_a_drift_summary_sends_its_largest_psi_and_old_snapshots_read_without_one() -> None:
    summary = DriftSummary("shop", 1, 5.0, 800, ("b", "d"), {"a": 0.01, "b": 0.42, "d": 0.3})
    assert through_json(summary.to_wire())["max_psi"] == 0.42
    assert DriftSummary("shop", 1, 5.0, 0).max_psi is None
    from kernel_magics.targets.local import status_from_snapshot

    old = status_from_snapshot({"time": 1.0}, {"url": "http://x"}, "ready", "local")
    assert old.drift == ()
    assert old.drift_of("shop", 1) is None
    new = status_from_snapshot({"drift": [summary.to_wire()]}, {}, "ready", "local")
    assert new.drift_of("shop", 1) == summary
    assert new.drift_of("shop", 2) is None
