"""Whether a candidate version should replace the live one, on one metric and a margin.

Used by ``notebooks/pipelines/promote.ipynb``: deploy the candidate only if it beats the live
version by at least ``margin`` on ``metric`` (in the metric's own direction: higher accuracy,
lower MSE); otherwise keep the live version, and say why either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kernel_magics.errors import InvalidInput
from kernel_magics.metric_names import direction


@dataclass(frozen=True)
class Decision:
    deploy: bool
    reason: str
    metric: str
    candidate: int
    candidate_value: float
    live: int | None = None
    live_value: float | None = None


def decide(
    metric: str,
    candidate: int,
    candidate_value: float,
    live: int | None = None,
    live_value: float | None = None,
    *,
    margin: float = 0.0,
) -> Decision:
    """Deploy ``candidate`` if nothing is live, or if it beats ``live`` by ``margin``."""
    if not isinstance(margin, int | float) or not math.isfinite(margin) or margin < 0:
        raise InvalidInput(f"margin must be a number >= 0, got {margin!r}")
    value = f"{metric} {candidate_value:.4g}"
    if live is None or live_value is None:
        reason = f"nothing is live: deploying v{candidate} ({value})"
        return Decision(True, reason, metric, candidate, candidate_value)
    if live == candidate:
        reason = f"v{candidate} is already live ({value})"
        return Decision(False, reason, metric, candidate, candidate_value, live, live_value)
    sign = -1.0 if direction(metric) == "lower" else 1.0
    gain = sign * (candidate_value - live_value)
    versus = f"v{candidate} {value} vs live v{live} {live_value:.4g}"
    if gain >= margin:
        reason = f"deploying v{candidate}: {versus}, better by {gain:.4g} (margin {margin:g})"
        return Decision(True, reason, metric, candidate, candidate_value, live, live_value)
    reason = f"keeping v{live}: {versus}, {gain:+.4g} is short of the margin {margin:g}"
    return Decision(False, reason, metric, candidate, candidate_value, live, live_value)
