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
"""

from __future__ import annotations

import zlib

from kernel_magics.serving.request.model import LoadedModel
from kernel_magics.serving.request.protocol import REQUEST_ID, Request


class Split:
    __slots__ = ("model", "percent", "count")

    def __init__(self, model: LoadedModel, percent: int):
        self.model = model
        self.percent = percent
        self.count = 0  # requests without an id seen by this worker since the split began

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
