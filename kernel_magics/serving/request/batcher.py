"""Dynamic batching: requests queue per model version; one inference thread per worker runs one
forward per batch, off the event loop.

The loop thread only appends to a queue (under a condition) and later receives results through
``loop.call_soon_threadsafe``, one wake-up per batch. The inference thread takes up to
``max_batch_size`` rows, waiting at most ``max_wait_ms`` after the first queued request for more
to arrive (0: never wait, but take everything already queued). Requests that queued while the
previous forward ran are already "old", so under load batches fill without any waiting, and an
idle model answers a lone request at once plus at most ``max_wait_ms``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# done(outputs_or_None, error_or_None)
Done = Callable[[np.ndarray | None, BaseException | None], None]


class Item:
    __slots__ = ("array", "rows", "done", "t0", "raw")

    def __init__(self, array: np.ndarray, done: Done, raw: bool = False):
        self.array = array
        self.rows = array.shape[0]
        self.done = done
        self.t0 = time.monotonic()
        self.raw = raw  # run alone, exactly as given (no concatenation): MLflow parity route


class Batcher:
    """The queue of one model version. ``model.forward(np.ndarray) -> np.ndarray``."""

    __slots__ = ("model", "pending", "rows", "queued", "max_batch", "max_wait", "stats")

    def __init__(self, model: Any, max_batch: int, max_wait_ms: float, stats: Any = None):
        self.model = model
        self.pending: deque[Item] = deque()
        self.rows = 0
        self.queued = False
        self.max_batch = max(1, int(max_batch))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.stats = stats


class InferenceThread:
    def __init__(self, loop: asyncio.AbstractEventLoop, name: str = "inference"):
        self.loop = loop
        self.cond = threading.Condition(threading.Lock())
        self.ready: deque[Batcher] = deque()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, batcher: Batcher, item: Item) -> None:
        """Loop thread. Never blocks beyond the condition's lock."""
        with self.cond:
            batcher.pending.append(item)
            batcher.rows += item.rows
            if not batcher.queued:
                batcher.queued = True
                self.ready.append(batcher)
            self.cond.notify()
        if batcher.stats is not None:
            batcher.stats.queue.inc()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()

    # -- inference thread ---------------------------------------------------------------------
    def _take(self) -> tuple[Batcher, list[Item]] | None:
        with self.cond:
            while not self.ready and not self.stopping:
                self.cond.wait()
            if self.stopping:
                return None
            b = self.ready[0]
            head = b.pending[0]
            if b.max_wait > 0 and not head.raw:
                deadline = head.t0 + b.max_wait
                while b.rows < b.max_batch:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self.cond.wait(remaining)
            first = b.pending.popleft()
            items, rows = [first], first.rows
            if not first.raw:
                # Concatenated along dim 0 only: a request whose trailing shape differs (a
                # signature with a free non-batch dimension) starts the next batch instead.
                trailing = first.array.shape[1:]
                while b.pending and not b.pending[0].raw:
                    nxt = b.pending[0]
                    if rows + nxt.rows > b.max_batch or nxt.array.shape[1:] != trailing:
                        break
                    items.append(b.pending.popleft())
                    rows += nxt.rows
            b.rows -= rows
            if b.pending:
                self.ready.rotate(-1)  # other models get their turn before this one again
            else:
                self.ready.popleft()
                b.queued = False
            return b, items

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            batcher, items = taken
            try:
                self._forward(batcher, items)
            except BaseException as err:  # never let the thread die
                log.exception("inference thread error")
                self.loop.call_soon_threadsafe(_deliver_error, items, err)

    def _forward(self, batcher: Batcher | _Solo, items: list[Item]) -> None:
        model = batcher.model
        stats = batcher.stats
        if stats is not None:
            stats.queue.dec(len(items))
        batch = items[0].array if len(items) == 1 else np.concatenate([it.array for it in items])
        try:
            out = model.forward(batch)
            if out.shape[:1] != batch.shape[:1]:
                raise ValueError(f"model returned {len(out)} rows for {len(batch)} input rows")
        except Exception as err:
            if len(items) == 1:
                self.loop.call_soon_threadsafe(_deliver_error, items, err)
                return
            # One bad request must not fail its batch-mates: run each alone.
            for item in items:
                self._forward(_Solo(batcher), [item])
            return
        if stats is not None:
            stats.batch.observe(batch.shape[0])
        self.loop.call_soon_threadsafe(_deliver, items, out)


class _Solo:
    """Re-run one item of a failed batch without counting it twice in the metrics."""

    __slots__ = ("model", "stats")

    def __init__(self, batcher: Batcher | _Solo):
        self.model: Any = batcher.model
        self.stats: Any = None


def _deliver(items: list[Item], out: np.ndarray) -> None:
    if len(items) == 1:
        items[0].done(out, None)
        return
    start = 0
    for item in items:
        end = start + item.rows
        try:
            item.done(out[start:end], None)
        except Exception:
            log.exception("delivering a result failed")
        start = end


def _deliver_error(items: list[Item], err: BaseException) -> None:
    for item in items:
        try:
            item.done(None, err)
        except Exception:
            log.exception("delivering an error failed")
