"""One model version in a worker: loaded from its local MLflow folder (never through mlflow: a
2 s import a worker does not need), warmed, then checking and forwarding requests' arrays.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kernel_magics.errors import DeployFailed, InvalidInput
from kernel_magics.formats.loaders import loader_for
from kernel_magics.formats.model_files import (
    Signature,
    read_example,
    read_pyfunc,
    read_signature,
)
from kernel_magics.preprocess import TableEncoder, read_encoder
from kernel_magics.quality.log_writer import RowShape, Sampler
from kernel_magics.serving.request.bodies import describe_error
from kernel_magics.serving.request.inflight import InFlight
from kernel_magics.serving.request.inputs import check_rows

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    name: str
    version: int
    path: str
    sha256: str
    task: str | None
    max_batch_size: int
    max_wait_ms: float
    format: str | None = None  # the version's km.format tag; None: recognised by its files
    fmt: str = ""  # the format it was loaded as
    signature: Signature | None = None
    fn: Callable[[torch.Tensor], Any] | None = None
    fast_path: bool = False
    fixed_batch: int | None = None
    example: np.ndarray | None = None
    encoder: TableEncoder | None = None  # the version's declared one-hot step (preprocess.py)
    classes: tuple | None = None  # a classifier's labels in output order (km.classes)
    pyfunc: str | None = None  # MLflow's loader module for the folder (/invocations answers so)
    loaded_at: str = ""
    load_ms: float = 0.0
    warm_ms: float = 0.0
    stats: Any = None  # metrics children, set by the worker
    batcher: Any = None  # set by the worker
    response_headers: bytes = b""
    inflight: InFlight = field(default_factory=InFlight)
    generator: Any = None  # a generative model (generative/loader.py): it answers /v1/completions
    # which requests the inference log keeps (kernel_magics/quality/log_writer.py)
    sampler: Sampler = field(default_factory=lambda: Sampler(0.0))
    _row_shapes: tuple[RowShape, RowShape] | None = None

    def row_shape(self, labelled: bool) -> RowShape:
        """How the inference log writes this version's rows (answered as labels or not)."""
        shapes = self._row_shapes
        if shapes is None:
            sig, encoder = self.signature, self.encoder
            # table rows are logged as the client sent them: by the encoder's own columns
            columns = [c.name for c in encoder.columns] if encoder is not None else None
            if columns is None and sig is not None:
                columns = sig.columns
            classifier = self.task == "classification"
            shapes = self._row_shapes = (
                RowShape(columns, self.classes, classifier, False),
                RowShape(columns, self.classes, classifier, True),
            )
        return shapes[labelled]

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        started = time.perf_counter()
        folder = Path(self.path)
        if not (folder / "MLmodel").is_file():
            raise DeployFailed(f"{self.name} v{self.version}: no MLmodel file in {folder}")
        try:
            loader = loader_for(folder, self.format)
        except DeployFailed as err:
            raise DeployFailed(f"{self.name} v{self.version}: {err}") from None
        if loader.takes_tensors:
            self.example = read_example(folder)
            self.signature = read_signature(folder, self.example)
            self.encoder = read_encoder(folder)
            self.pyfunc = read_pyfunc(folder)
        self.fmt = loader.format
        try:
            graph = loader.load(folder / loader.file)
        except Exception as err:
            raise DeployFailed(
                f"{self.name} v{self.version}: loading {self.fmt} model failed: "
                f"{describe_error(err)}"
            ) from err
        self.fn, self.fixed_batch = graph.fn, graph.fixed_batch
        if graph.generator is not None:
            self.generator = graph.generator
            self.generator.engine.name = f"{self.name} v{self.version}"
        if graph.direct is not None:
            self._adopt_if_same(graph.direct)
        self.load_ms = (time.perf_counter() - started) * 1000
        self.loaded_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        self.response_headers = b"x-model-name: %s\r\nx-model-version: %d\r\n" % (
            self.name.encode(),
            self.version,
        )

    def _adopt_if_same(self, direct: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Call the graph directly from now on if it answers the input example exactly as the
        loaded module does (the fast path)."""
        assert self.fn is not None
        example = self._example_batch(self.fixed_batch or 2)
        if example is None:
            return
        try:
            with torch.inference_mode():
                x = torch.from_numpy(example)
                same = torch.equal(direct(x), self.fn(x))
        except Exception as err:  # the wrapper does something the bare graph does not
            log.info("%s v%s: direct graph call unusable (%s)", self.name, self.version, err)
            return
        if same:
            self.fn, self.fast_path = direct, True

    def _example_batch(self, rows: int) -> np.ndarray | None:
        sig = self.signature
        ex = self.example
        if ex is None or sig is None or ex.ndim != len(sig.shape) or ex.shape[0] == 0:
            return None
        ex = ex.astype(sig.dtype)
        reps = -(-rows // ex.shape[0])
        return np.ascontiguousarray(np.concatenate([ex] * reps)[:rows])

    def warm(self) -> None:
        """Forward the input example at batch 1 and at the largest batch; a failure here fails
        the deploy rather than the first request."""
        started = time.perf_counter()
        if self.generator is not None:
            try:
                self.warm_ms = self.generator.warm()
            except Exception as err:
                raise DeployFailed(f"{self.name} v{self.version}: {describe_error(err)}") from err
            return
        for rows in sorted({1, self.fixed_batch or self.max_batch_size}):
            batch = self._example_batch(rows)
            if batch is None:
                return
            try:
                out = self.forward(batch)
            except Exception as err:
                raise DeployFailed(
                    f"{self.name} v{self.version}: warm-up forward on the input example "
                    f"({rows} rows) failed: {describe_error(err)}"
                ) from err
            if out.shape[:1] != (rows,):
                raise DeployFailed(
                    f"{self.name} v{self.version}: model returned {out.shape[0] if out.ndim else 0}"
                    f" rows for {rows} input rows"
                )
        self.warm_ms = (time.perf_counter() - started) * 1000

    # -- serving ---------------------------------------------------------------------------
    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Runs in the worker's inference thread (torch releases the GIL inside ops)."""
        fn = self.fn
        assert fn is not None
        step = self.fixed_batch
        with torch.inference_mode():
            if step is None or batch.shape[0] == step:
                return _as_numpy(fn(torch.from_numpy(batch)))
            parts = []
            for start in range(0, batch.shape[0], step):
                chunk = batch[start : start + step]
                rows = chunk.shape[0]
                if rows < step:  # the graph takes exactly `step` rows: pad, keep the real ones
                    padding = np.zeros((step - rows, *chunk.shape[1:]), dtype=chunk.dtype)
                    chunk = np.concatenate([chunk, padding])
                parts.append(_as_numpy(fn(torch.from_numpy(chunk)))[:rows])
            return np.concatenate(parts)

    def check(self, array: np.ndarray, max_rows: int, *, table_rows: bool = True) -> np.ndarray:
        """The request's array as this model takes it; InvalidInput naming what is wrong
        (see ``inputs.py``). Runs on the loop before the request is queued. A version with a
        declared encoding step takes table rows (records or lists of values) and encodes them
        first; ``table_rows=False`` (the v2 tensor protocol, which has no strings) takes the
        encoded matrix the graph takes."""
        if self.generator is not None:
            raise InvalidInput(
                f"{self.name} v{self.version} is a generative model: "
                "POST /v1/completions or /v1/chat/completions"
            )
        assert self.signature is not None
        if self.encoder is not None and table_rows:
            array = self.encoder.encode(array)
        return check_rows(array, self.signature, max_rows)

    def check_labels(self) -> tuple:
        """The labels for ``?labels=true``: a classifier answering (rows, classes) only."""
        sig = self.signature
        out = sig.output_shape if sig is not None else None
        if not self.classes or self.task != "classification":
            raise InvalidInput(f"{self.name} v{self.version} has no class labels to answer")
        if out is not None and (len(out) != 2 or out[1] not in (-1, len(self.classes))):
            raise InvalidInput(
                f"{self.name} v{self.version} answers shape {out}, not one score per class"
            )
        return self.classes

    def describe(self) -> dict:
        sig = self.signature.describe() if self.signature else {}
        return (
            {
                "name": self.name,
                "version": self.version,
                "state": "live",
                "loaded_at": self.loaded_at,
                "task": self.task,
                # the labels a client turns scores into (api.predict, without a store lookup)
                "classes": list(self.classes or ()),  # [] none (a regressor)
                "format": self.fmt,
                "fast_path": self.fast_path,
                "fixed_batch": self.fixed_batch,
                "max_batch_size": self.max_batch_size,
                "max_wait_ms": self.max_wait_ms,
                "log_sample": self.sampler.rate,
                "load_ms": round(self.load_ms, 2),
                "warm_ms": round(self.warm_ms, 2),
                **sig,
            }
            | ({"preprocess": json.loads(self.encoder.to_json())} if self.encoder else {})
            | (self.generator.describe() if self.generator is not None else {})
        )

    def refresh_gauges(self) -> None:
        """A language model's running/queued/KV-cache gauges, read from its engine now (the
        engine keeps plain counters; a gauge per step would cost the decode loop)."""
        if self.generator is not None and self.stats is not None:
            self.stats.set_generation(self.generator.engine.describe())

    def close(self) -> None:
        """Release what outlives the last reference (a generative model's engine thread)."""
        if self.generator is not None:
            self.generator.close()
            if self.stats is not None:  # its engine is gone: no sequences, no cache held
                self.stats.clear_generation()


def _as_numpy(out: Any) -> np.ndarray:
    if isinstance(out, (tuple, list)) and len(out) == 1:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model returned {type(out).__name__}, expected one tensor")
    return out.detach().numpy()
