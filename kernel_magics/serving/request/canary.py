"""Canary traffic splits in a worker: a second version of a model that answers ``percent`` of
its requests while the live version answers the rest.

The split is deterministic, so a test (or an operator) can state exactly what it will be:

- a request with an ``X-Request-ID`` header goes to the canary when ``crc32(id) % 100 <
  percent``: the same id always gets the same version (a client retrying keeps its answer);
- any other request is counted per worker, and after ``n`` such requests exactly
  ``floor(n * percent / 100)`` went to the canary (at 10%: every 10th request). Over ``W``
  workers the total is therefore exact to within ±1 per worker.

A worker without any canary pays one truthiness test of an empty dict per request
(``ModelTable.canary``); a model without one, one dict lookup.

A canary the process judges by itself (``--analyze``) also records, per arm, each answer's time,
latency and whether the model failed it, for the supervisor to collect
(``control/canary_watch.py``). The recording rides on the metrics objects the request path
already calls (``arm_stats`` copies replace both versions' ``stats`` while the split runs), so the
request path has no new branch: a worker without a judged canary pays nothing for it.
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from copy import copy as shallow_copy
from typing import Any

from kernel_magics.serving.request.model import LoadedModel
from kernel_magics.serving.request.protocol import Request
from kernel_magics.serving.request.request_ids import REQUEST_ID

# Answers one arm keeps between two collections by the supervisor (every few seconds); past it
# the oldest are dropped, which bounds a worker's memory whatever the traffic.
ARM_BUFFER = 100_000


class Arm:
    """One arm's answers since the supervisor last took them: (wall time, latency ms, failed)."""

    __slots__ = ("answers", "failing")

    def __init__(self) -> None:
        self.answers: deque[tuple[float, float, bool]] = deque(maxlen=ARM_BUFFER)
        # set by a model failure, read by the latency observation that ends the same answer
        # (app.py's ``done`` calls ``model_errors.inc`` before ``latency.observe``)
        self.failing = False

    def answered(self, seconds: float) -> None:
        self.answers.append((time.time(), seconds * 1000, self.failing))
        self.failing = False

    def take(self) -> dict[str, list]:
        answers, self.answers = self.answers, deque(maxlen=ARM_BUFFER)
        return {
            "times": [round(a[0], 4) for a in answers],
            "latencies_ms": [round(a[1], 3) for a in answers],
            "failed": [int(a[2]) for a in answers],
        }


class _ArmLatency:
    """A latency histogram child that also tells the arm."""

    __slots__ = ("child", "arm")

    def __init__(self, child: Any, arm: Arm):
        self.child, self.arm = child, arm

    def observe(self, seconds: float) -> None:
        self.child.observe(seconds)
        self.arm.answered(seconds)


class _ArmFailures:
    """The model-failure counter child that also marks the answer under way as failed."""

    __slots__ = ("child", "arm")

    def __init__(self, child: Any, arm: Arm):
        self.child, self.arm = child, arm

    def inc(self, amount: float = 1) -> None:
        self.child.inc(amount)
        self.arm.failing = True


def arm_stats(stats: Any, arm: Arm) -> Any:
    """A copy of a version's ``metrics.ModelStats`` whose latency and model failures are also
    recorded for ``arm`` (the Prometheus series are the same)."""
    copy = shallow_copy(stats)
    copy.latency = _ArmLatency(stats.latency, arm)
    copy.model_errors = _ArmFailures(stats.model_errors, arm)
    return copy


class Split:
    __slots__ = ("model", "percent", "count", "arms", "_restore")

    def __init__(self, model: LoadedModel, percent: int):
        self.model = model
        self.percent = percent
        self.count = 0  # requests without an id seen by this worker since the split began
        self.arms: tuple[Arm, Arm] | None = None  # (live, canary) while the canary is judged
        self._restore: list[tuple[LoadedModel, Any]] = []

    def record(self, live: LoadedModel) -> None:
        """Record both arms' answers from now until ``end``."""
        self.arms = (Arm(), Arm())
        for model, arm in ((live, self.arms[0]), (self.model, self.arms[1])):
            if model.stats is not None:
                self._restore.append((model, model.stats))
                model.stats = arm_stats(model.stats, arm)

    def end(self) -> None:
        """The split is over: both versions' metrics objects are their own again."""
        for model, stats in self._restore:
            model.stats = stats
        self._restore.clear()
        self.arms = None

    def pick(self, live: LoadedModel, req: Request) -> LoadedModel:
        """The version that answers ``req``: the canary or ``live``."""
        rid = req.headers.get(REQUEST_ID)
        if rid is not None:
            return self.model if zlib.crc32(rid) % 100 < self.percent else live
        n = self.count = self.count + 1
        p = self.percent
        # Bresenham: the canary's share after n requests is floor(n * p / 100), never off by more
        return self.model if (n * p) // 100 != ((n - 1) * p) // 100 else live

    def describe(self) -> dict:
        return {"version": self.model.version, "percent": self.percent}
