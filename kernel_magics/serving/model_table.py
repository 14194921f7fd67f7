"""Loading one model version into a worker, and the table of what each worker serves.

Models load from the local MLflow model folder, never through mlflow (a 2 s import a worker does
not need): ``MLmodel`` gives the signature, ``data/model.pt2`` loads with ``torch.export.load``
and ``data/model.pth`` (MLflow's pickle format, for models torch.export cannot trace) with
``torch.load``. Pickle is acceptable there only because the supervisor hands us folders from the
store after their content hash was checked; request bodies are never unpickled.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kernel_magics.errors import DeployFailed, InvalidInput
from kernel_magics.serving.codecs import PayloadTooLarge
from kernel_magics.serving.model_files import (
    Signature,
    fmt_shape,
    graph_call,
    read_example,
    read_signature,
    static_batch,
)

log = logging.getLogger(__name__)


class InFlight:
    """Requests a model version accepted and has not answered yet (loop thread only). A swap
    waits for the old version's count to reach 0 before it answers, so once a deploy or
    rollback returns, the old version has no response left to send."""

    __slots__ = ("count", "_idle")

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Future | None = None

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def drained(self, timeout: float) -> bool:
        """Wait until nothing is in flight; False if ``timeout`` passed first."""
        if self.count == 0:
            return True
        if self._idle is None or self._idle.done():
            self._idle = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), timeout)
        except TimeoutError:
            return False
        return True


@dataclass
class LoadedModel:
    name: str
    version: int
    path: str
    sha256: str
    task: str | None
    max_batch_size: int
    max_wait_ms: float
    fmt: str = ""
    signature: Signature | None = None
    fn: Any = None
    fast_path: bool = False
    fixed_batch: int | None = None
    example: np.ndarray | None = None
    loaded_at: str = ""
    load_ms: float = 0.0
    warm_ms: float = 0.0
    stats: Any = None  # metrics children, set by the worker
    batcher: Any = None  # set by the worker
    response_headers: bytes = b""
    inflight: InFlight = field(default_factory=InFlight)
    extra: dict = field(default_factory=dict)

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        started = time.perf_counter()
        folder = Path(self.path)
        if not (folder / "MLmodel").is_file():
            raise DeployFailed(f"{self.name} v{self.version}: no MLmodel file in {folder}")
        self.example = read_example(folder)
        self.signature = read_signature(folder, self.example)
        pt2, pth = folder / "data" / "model.pt2", folder / "data" / "model.pth"
        try:
            if pt2.is_file():
                self.fmt = "pt2"
                self._load_pt2(pt2)
            elif pth.is_file():
                self.fmt = "pickle"
                model = torch.load(pth, map_location="cpu", weights_only=False)
                if hasattr(model, "eval"):
                    model.eval()
                self.fn = model
            else:
                raise DeployFailed(f"{self.name} v{self.version}: no data/model.pt2 or model.pth")
        except DeployFailed:
            raise
        except Exception as err:
            raise DeployFailed(
                f"{self.name} v{self.version}: loading {self.fmt} model failed: "
                f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
            ) from err
        self.load_ms = (time.perf_counter() - started) * 1000
        self.loaded_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        self.response_headers = b"x-model-name: %s\r\nx-model-version: %d\r\n" % (
            self.name.encode(),
            self.version,
        )

    def _load_pt2(self, path: Path) -> None:
        ep = torch.export.load(str(path))
        module = ep.module()
        self.fixed_batch = static_batch(ep)
        self.fn = module
        direct = graph_call(ep)
        example = self._example_batch(self.fixed_batch or 2)
        if direct is None or example is None:
            return
        call, _ = direct
        try:
            with torch.inference_mode():
                x = torch.from_numpy(example)
                same = torch.equal(call(x), module(x))
        except Exception as err:  # the wrapper does something the bare graph does not
            log.info("%s v%s: direct graph call unusable (%s)", self.name, self.version, err)
            return
        if same:
            self.fn, self.fast_path = call, True

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
        for rows in sorted({1, self.fixed_batch or self.max_batch_size}):
            batch = self._example_batch(rows)
            if batch is None:
                return
            try:
                out = self.forward(batch)
            except Exception as err:
                raise DeployFailed(
                    f"{self.name} v{self.version}: warm-up forward on the input example "
                    f"({rows} rows) failed: {type(err).__name__}: {str(err)[:300]}"
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
        step = self.fixed_batch
        with torch.inference_mode():
            if step is None or batch.shape[0] == step:
                out = self.fn(torch.from_numpy(batch))
                return _as_numpy(out)
            parts = [
                _as_numpy(self.fn(torch.from_numpy(batch[i : i + step])))
                for i in range(0, batch.shape[0], step)
            ]
            return np.concatenate(parts)

    def check(self, array: np.ndarray, max_rows: int) -> np.ndarray:
        """Cast to the signature dtype and check the shape; one line naming what is wrong."""
        sig = self.signature
        assert sig is not None
        shape = sig.shape
        if array.ndim != len(shape):
            if array.ndim == len(shape) - 1 and array.shape == tuple(shape[1:]):
                raise InvalidInput(
                    f"expected a list of rows (a {len(shape)}-D array); got a single row — "
                    "wrap it in another list"
                )
            raise InvalidInput(
                f"expected a {len(shape)}-D array of rows shaped {fmt_shape(shape)}, "
                f"got shape {array.shape}"
            )
        rows = array.shape[0]
        if rows == 0:
            raise InvalidInput("empty batch: send at least one row")
        if rows > max_rows:
            raise PayloadTooLarge(f"{rows} rows is over the limit of {max_rows} rows per request")
        for want, got in zip(shape[1:], array.shape[1:], strict=True):
            if want != -1 and want != got:
                if len(shape) == 2:
                    raise InvalidInput(f"expected rows of {want} features, got {got}")
                raise InvalidInput(
                    f"expected rows shaped {fmt_shape(shape)}, got {array.shape[1:]}"
                )
        if array.dtype != sig.dtype:
            array = array.astype(sig.dtype)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidInput("input contains NaN or infinity")
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        return array

    def describe(self) -> dict:
        sig = self.signature.describe() if self.signature else {}
        return {
            "name": self.name,
            "version": self.version,
            "state": "live",
            "loaded_at": self.loaded_at,
            "task": self.task,
            "format": self.fmt,
            "fast_path": self.fast_path,
            "fixed_batch": self.fixed_batch,
            "max_batch_size": self.max_batch_size,
            "max_wait_ms": self.max_wait_ms,
            "load_ms": round(self.load_ms, 2),
            "warm_ms": round(self.warm_ms, 2),
            **sig,
        }


def _as_numpy(out: Any) -> np.ndarray:
    if isinstance(out, (tuple, list)) and len(out) == 1:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"model returned {type(out).__name__}, expected one tensor")
    return out.detach().numpy()


def model_from_spec(spec: dict, default_batch: int, default_wait_ms: float) -> LoadedModel:
    try:
        name, version, path = str(spec["name"]), int(spec["version"]), str(spec["path"])
    except (KeyError, TypeError, ValueError) as err:
        raise InvalidInput(f"model spec needs name, version and path: {err}") from None
    batch = spec.get("max_batch_size")
    wait = spec.get("max_wait_ms")
    return LoadedModel(
        name=name,
        version=version,
        path=path,
        sha256=str(spec.get("sha256") or ""),
        task=spec.get("task"),
        max_batch_size=int(batch) if batch else default_batch,
        max_wait_ms=float(wait) if wait is not None else default_wait_ms,
    )


class ModelTable:
    """What one worker serves. Only the event loop thread mutates it, so a swap is one dict
    assignment: a request looks its model up once, and finishes on that version."""

    def __init__(self) -> None:
        self.live: dict[str, LoadedModel] = {}
        self.staged: dict[tuple[str, int], LoadedModel] = {}
        # The version each model served before its live one, still loaded and warm: a rollback
        # to it (the common one) is a dict swap with no load. One per model bounds the memory.
        self.standby: dict[str, LoadedModel] = {}
        self.history: dict[str, list] = {}

    def stage(self, model: LoadedModel) -> None:
        self.staged[(model.name, model.version)] = model

    def activate(
        self, name: str, version: int, history: list | None
    ) -> tuple[LoadedModel, LoadedModel | None]:
        """Make the staged ``version`` live: (the new live model, the one it replaced)."""
        model = self.staged.pop((name, version), None)
        if model is None:
            current = self.live.get(name)
            if current is None or current.version != version:
                raise KeyError(f"{name} v{version} is not staged in this worker")
            model = current
        previous = self.live.get(name)
        self.live[name] = model
        if previous is not None and previous is not model:
            self.standby[name] = previous
        elif self.standby.get(name) is model:
            del self.standby[name]
        if history is not None:
            self.history[name] = history
        return model, previous

    def discard(self, name: str, version: int | None = None) -> int:
        keys = [k for k in self.staged if k[0] == name and (version is None or k[1] == version)]
        for key in keys:
            del self.staged[key]
        return len(keys)

    def unload(self, name: str, history: list | None) -> LoadedModel | None:
        """Stop serving ``name``: the model that was live, if any."""
        model = self.live.pop(name, None)
        self.standby.pop(name, None)
        if history is not None:
            self.history[name] = history
        return model

    def reusable(self, spec: dict, batch: int, wait_ms: float) -> LoadedModel | None:
        """A loaded model that is exactly what ``spec`` asks for: the live one (a deploy of the
        version already serving) or the standby one (a rollback), else None."""
        name = str(spec.get("name"))
        wanted = model_from_spec(spec, batch, wait_ms)
        for current in (self.live.get(name), self.standby.get(name)):
            if current is not None and (
                current.version == wanted.version
                and current.sha256 == wanted.sha256
                and current.path == wanted.path
                and current.max_batch_size == wanted.max_batch_size
                and current.max_wait_ms == wanted.max_wait_ms
            ):
                return current
        return None

    def describe(self, name: str) -> dict:
        return {**self.live[name].describe(), "history": self.history.get(name, [])}
