"""The inference log's writer: a background thread in each worker that appends sampled requests
to the log file (``log_store.py``), so the request path only puts one tuple on a bounded queue.

What the request path pays: for a sampled request one ``deque.append`` (no lock, no wake-up:
the writer wakes on its own every quarter second); for the others one counter step
(``Sampler``). The answer is always written before the sample is
queued. When the queue is full (a slow disk) or a write fails (a full disk, an unwritable file),
the samples are dropped and counted (``km_inference_log_dropped_total`` in ``/metrics``, and
``%serve status``): a request is never slowed or failed by its log.

Turning arrays into JSON rows happens here, on the writer's thread. Rows beyond ``max_rows`` per
model are evicted oldest first after each write.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from math import ceil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from kernel_magics.quality.log_store import connect

log = logging.getLogger(__name__)
_BATCH = 512  # samples taken off the queue per write (one transaction)
_INTERVAL_S = 0.25  # the writer wakes this often (or at a flush) and writes what gathered
_WARN_EVERY_S = 60.0  # a failing disk is reported in the process log at most this often


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Sampler:
    """Which requests of one served version are logged: a share ``rate`` of them, spread
    evenly and deterministically (at 0.25 every 4th request, the first one included, so a
    fresh deploy shows up at once): request n is logged when ceil(n * rate) steps up."""

    __slots__ = ("rate", "count")

    def __init__(self, rate: float):
        self.rate = rate
        self.count = 0

    def take(self) -> bool:
        rate = self.rate
        if not rate:
            return False
        n = self.count = self.count + 1
        return ceil(n * rate) != ceil((n - 1) * rate)


class Sample:
    """One logged request, as the request path hands it over (no copies, no encoding)."""

    __slots__ = (
        "time",
        "model",
        "version",
        "request_id",
        "inputs",
        "outputs",
        "latency_ms",
        "shape",
    )

    def __init__(
        self,
        model: str,
        version: int,
        request_id: str,
        inputs: Any,
        outputs: Any,
        latency_ms: float,
        shape: RowShape,
    ):
        self.time = time.time()
        self.model, self.version, self.request_id = model, version, request_id
        self.inputs, self.outputs, self.latency_ms, self.shape = inputs, outputs, latency_ms, shape


class RowShape:
    """How a version's rows are written: input column names for table rows, the classes and
    whether the answer was the label, for ``output`` and ``predicted``."""

    __slots__ = ("columns", "classes", "classifier", "labelled")

    def __init__(
        self,
        columns: Sequence[str] | None,
        classes: Sequence[Any] | None,
        classifier: bool,
        labelled: bool = False,
    ):
        self.columns = list(columns) if columns else None
        self.classes = list(classes) if classes else None
        self.classifier = classifier
        self.labelled = labelled


class InferenceLog:
    """The writer of one worker. ``add`` never blocks and never raises.

    The request path appends to a deque (no lock, no wake-up); the writer thread wakes every
    ``interval_s`` and writes what has gathered in one transaction per ``_BATCH`` samples. A
    writer woken per sample would contend for the GIL with the event loop at every request
    (measured: a 1-row load lost about 40 % of its requests per second at any share)."""

    def __init__(
        self,
        home: Path,
        max_rows: int,
        queue_size: int,
        dropped: Counter | None = None,
        written: Counter | None = None,
        interval_s: float = _INTERVAL_S,
    ):
        self.home = home
        self.max_rows = max_rows
        self.capacity = max(1, queue_size)
        self.interval_s = interval_s
        self.dropped = dropped
        self.written = written
        self.samples: collections.deque[Sample] = collections.deque()
        self.added = 0  # samples handed to add(), kept or not (the event loop thread only)
        self.done = 0  # samples written or dropped (flush() waits for added)
        self.dropped_count = 0
        self.written_count = 0
        self._progress = threading.Condition()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_warning = 0.0

    def add(self, sample: Sample) -> None:
        """Queue ``sample`` for writing, or drop and count it when the queue is full."""
        if self._thread is None:
            self._start()
        self.added += 1
        if len(self.samples) >= self.capacity:
            self._finished(0, 1)
        else:
            self.samples.append(sample)

    def flush(self, timeout: float = 2.0) -> bool:
        """Write what was queued so far now (or count it dropped); False on timeout."""
        target = self.added
        deadline = time.monotonic() + timeout
        self._wake.set()
        with self._progress:
            while self.done < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._progress.wait(left)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (within ``timeout``) and stop the thread."""
        if self._thread is None:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    # -- the writer thread -------------------------------------------------------------------
    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def _finished(self, written: int, dropped: int) -> None:
        if dropped:
            self.dropped_count += dropped
            if self.dropped is not None:
                self.dropped.inc(dropped)
        if written:
            self.written_count += written
            if self.written is not None:
                self.written.inc(written)
        with self._progress:
            self.done += written + dropped
            self._progress.notify_all()

    def _run(self) -> None:
        con = None
        while not self._stopping:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            con = self._drain(con)
        con = self._drain(con)
        if con is not None:
            con.close()

    def _drain(self, con: Any) -> Any:
        """Write every queued sample; the connection to use next (None after a failure)."""
        samples = self.samples
        while samples:
            batch: list[Sample] = []
            while samples and len(batch) < _BATCH:
                batch.append(samples.popleft())
            try:
                if con is None:
                    con = connect(self.home)
                write(con, batch, self.max_rows)
            except Exception as err:  # a full disk, an unwritable file, a corrupt database
                self._warn(err, len(batch))
                if con is not None:
                    con.close()
                con = None
                self._finished(0, len(batch))
                continue
            self._finished(len(batch), 0)
        return con

    def _warn(self, err: Exception, count: int) -> None:
        now = time.monotonic()
        if now - self._last_warning >= _WARN_EVERY_S:
            self._last_warning = now
            log.warning("inference log: %d sample(s) dropped: %s", count, err)


def write(con: Any, batch: list[Sample], max_rows: int) -> None:
    """Append ``batch`` (one row per request row) in one transaction, then evict each model's
    oldest rows beyond ``max_rows``."""
    rows = []
    for sample in batch:
        rows.extend(_rows(sample))
    with con:
        con.executemany(
            "INSERT INTO log (time, model, version, request_id, row, input, output, predicted,"
            " classifier, latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        for model in {sample.model for sample in batch}:
            cut = con.execute(
                "SELECT id FROM log WHERE model = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
                (model, max_rows),
            ).fetchone()
            if cut is not None:
                con.execute("DELETE FROM log WHERE model = ? AND id <= ?", (model, cut[0]))


_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_NUMBERS = frozenset("fiub")  # dtypes orjson writes straight from an array


def _rows(sample: Sample) -> list[tuple]:
    shape = sample.shape
    inputs = np.asarray(sample.inputs)
    outputs = np.asarray(sample.outputs)
    if (
        shape.columns is None
        and inputs.dtype.kind in _NUMBERS
        and inputs.ndim >= 2
        and outputs.dtype.kind in _NUMBERS
        and outputs.ndim == 2
        and outputs.shape[1] > 1
        and shape.classifier
        and not shape.labelled
    ):
        return _score_rows(sample, inputs, outputs)  # the common case, without Python lists
    columns = shape.columns
    out = []
    for index in range(inputs.shape[0]):
        row = inputs[index]
        value = row.tolist() if hasattr(row, "tolist") else row  # a dict stays a dict
        if columns is not None and isinstance(value, list) and len(value) == len(columns):
            value = dict(zip(columns, value, strict=True))
        answer, predicted = _answer(outputs[index] if index < len(outputs) else None, shape)
        out.append(
            (
                sample.time,
                sample.model,
                sample.version,
                sample.request_id,
                index,
                orjson.dumps(value, option=_NUMPY),
                orjson.dumps(answer, option=_NUMPY),
                orjson.dumps(predicted, option=_NUMPY),
                int(shape.classifier),
                sample.latency_ms,
            )
        )
    return out


def _score_rows(sample: Sample, inputs: np.ndarray, outputs: np.ndarray) -> list[tuple]:
    """A classifier's scores for numeric rows: orjson writes each row from the array itself
    (about 3 times faster than through ``tolist``)."""
    inputs = np.ascontiguousarray(inputs)
    outputs = np.ascontiguousarray(outputs)
    classes = sample.shape.classes
    winners = outputs.argmax(axis=1).tolist()
    dumps = orjson.dumps
    return [
        (
            sample.time,
            sample.model,
            sample.version,
            sample.request_id,
            index,
            dumps(inputs[index], option=_NUMPY),
            dumps(outputs[index], option=_NUMPY),
            dumps(classes[win] if classes is not None and win < len(classes) else win),
            1,
            sample.latency_ms,
        )
        for index, win in enumerate(winners)
    ]


def _answer(output: Any, shape: RowShape) -> tuple[Any, Any]:
    """(what was answered for a row, the label or value it stands for)."""
    if output is None:
        return None, None
    values = np.asarray(output)
    if shape.classifier and values.ndim == 1 and values.size > 1:
        index = int(values.argmax())
        classes = shape.classes
        label = classes[index] if classes is not None and index < len(classes) else index
        return (label if shape.labelled else values.tolist()), label
    if values.size == 1:
        value = values.reshape(()).item()
        return value, value
    return values.tolist(), None
