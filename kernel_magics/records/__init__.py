"""Typed records that cross process boundaries and reach the front ends.

The supervisor, the workers, the kernel-side targets and every front end (magics, CLI, widgets,
the JupyterLab panel) exchange these instead of loose dicts. Each record turns into JSON with
``to_wire()`` and back with ``from_wire()``; ``from_wire`` validates what it reads, so a record
that arrives malformed fails where it arrives, with a message naming the field.

No torch, numpy or mlflow here: the supervisor and the kernel side import this package.
``lifecycle`` (specs, events, rules, transitions), ``stats`` (a version's counters) and
``status`` (a running target's snapshot); every name is imported from here.
"""

from kernel_magics.records.lifecycle import (
    DEFAULT_CANARY_METRICS,
    CanaryRule,
    HistoryEvent,
    ModelSpec,
    TransitionResult,
)
from kernel_magics.records.stats import Buckets, VersionStats, bucket_quantile_ms
from kernel_magics.records.status import (
    DriftSummary,
    GenerationState,
    ModelState,
    RecentError,
    ServerStatus,
    TokenUsage,
)

__all__ = [
    "DEFAULT_CANARY_METRICS",
    "Buckets",
    "CanaryRule",
    "DriftSummary",
    "GenerationState",
    "HistoryEvent",
    "ModelSpec",
    "ModelState",
    "RecentError",
    "ServerStatus",
    "TokenUsage",
    "TransitionResult",
    "VersionStats",
    "bucket_quantile_ms",
]
