"""Ray Serve replicas of the ``ray`` serving target: one application per model, behind the
gateway (``ray_gateway.py``).

The kernel side (``targets/ray.py``) plans every transition against the store (the same
``Lifecycle`` and hash check as the built-in process) and hands the result to Ray as the model
deployment's ``user_config``: ``{"live": spec, "canary": spec | None, "percent": P}``. Ray calls
``ModelServer.reconfigure`` on the running replicas in place (no restart); the replica loads and
warms a new version beside the live one and then swaps it in with one assignment, so requests
keep being answered by the old version until the new one is ready.

A model application has no HTTP route of its own: the gateway parses the routes and calls it
through its handle (``handle`` for predictions, ``complete`` for a language model's OpenAI
routes, whose answer streams back piece by piece through ``generative/stream.py``).

Canaries follow the worker's split rule (``request/canary.py``); Ray's proxy gives every request
an ``X-Request-ID`` (the client's, else a random one), so here the split always goes by its hash:
exact for a client that sends ids, P% on average for one that does not.

Request bodies go through the same codecs, input checks, ``/invocations`` parser and canary rule
as the built-in worker (``serving/request/``). Imports torch and Ray, never mlflow or IPython.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from ray import serve

from kernel_magics.errors import InvalidInput, KernelMagicsError, NotFound, ServiceUnavailable
from kernel_magics.generative import stream
from kernel_magics.generative.openai_requests import generative
from kernel_magics.records import ModelSpec
from kernel_magics.serving.request import invocations, metrics
from kernel_magics.serving.request.bodies import describe_error, dumps, error_body
from kernel_magics.serving.request.canary import REQUEST_ID, Split
from kernel_magics.serving.request.codecs import (
    NPY,
    labelled_json,
    npy_encode,
    predictions_json,
    wants_labels,
)
from kernel_magics.serving.request.model import LoadedModel
from kernel_magics.serving.request.model_table import model_from_spec
from kernel_magics.serving.request.predict_request import decode_invocations, decode_predict
from kernel_magics.serving.request.protocol import Request
from kernel_magics.serving.request.status import collect

log = logging.getLogger(__name__)
# ':' is not allowed in model names (naming.py), so no model's application can be the gateway's.
MODEL_APP_PREFIX = "kernel-magics:"
JSON = "application/json"

# (status, body, content type, extra headers): what a model replica answers the gateway
Answer = tuple[int, bytes, str, dict[str, str]]


def app_name(model: str) -> str:
    return MODEL_APP_PREFIX + model


def _rows(items: list[tuple[LoadedModel, np.ndarray]]) -> int:
    return sum(array.shape[0] for _, array in items)


def _error(err: KernelMagicsError, headers: dict[str, str] | None = None) -> Answer:
    return err.http_status, error_body(str(err)), JSON, headers or {}


@serve.deployment(max_ongoing_requests=256)
class ModelServer:
    """One model: its live version, a canary beside it while one runs, and the version the
    last swap replaced (kept loaded, so rolling back to it loads nothing)."""

    def __init__(
        self, max_rows: int, max_batch_size: int, max_wait_ms: float, torch_threads: int
    ) -> None:
        import torch

        torch.set_num_threads(torch_threads)  # as in a built-in worker (architecture.md)
        self.max_rows = max_rows
        self.defaults = (max_batch_size, max_wait_ms)
        self.live: LoadedModel | None = None
        self.split: Split | None = None
        self.standby: LoadedModel | None = None
        self.failed: dict[str, Any] | None = None  # the last configuration that did not load
        # One inference thread, as in the built-in worker: the event loop stays free to take
        # requests (and form the next batch) while a forward runs.
        self.engine = ThreadPoolExecutor(1, thread_name_prefix="inference")

    # -- configuration (Ray's in-place update) ---------------------------------------------
    async def reconfigure(self, config: dict[str, Any]) -> None:
        """Load what ``config`` names beside what is served, then switch. A version that fails
        to load or warm leaves the replica serving what it served; the kernel side reads the
        failure from ``state()`` and restores the previous configuration."""
        try:
            live = await self._loaded(config["live"])
            canary = await self._loaded(config["canary"]) if config.get("canary") else None
        except Exception as err:
            log.error("configuration %s not loaded: %s", config, err)
            self.failed = {"config": config, "error": describe_error(err, 600)}
            return
        before = self._models()
        if self.live is not None and self.live is not live:
            self.standby = self.live
        batch = live.max_batch_size
        batcher: Any = self._batched  # serve.batch's wrapper (its setters are not typed)
        batcher.set_max_batch_size(batch)
        batcher.set_batch_wait_timeout_s(live.max_wait_ms / 1000)
        self.live = live  # the swap: every request from here on picks the new version
        percent = int(config.get("percent") or 0)
        split = self.split
        # Ray may hand a replica the same configuration again: keep the split's count then, or
        # the share would restart mid-stream.
        if split is None or (split.model, split.percent) != (canary, percent):
            self.split = Split(canary, percent) if canary else None
        self.failed = None
        kept = [id(m) for m in self._models()]
        for model in before:
            if model is not None and id(model) not in kept:
                asyncio.get_running_loop().create_task(_release(model))

    async def _loaded(self, wire: dict[str, Any]) -> LoadedModel:
        spec = ModelSpec.from_wire(wire)
        for model in self._models():
            if model is not None and (model.version, model.sha256) == (spec.version, spec.sha256):
                return model
        batch, wait = self.defaults
        model = model_from_spec(spec, batch, wait)
        model.stats = metrics.ModelStats(model.name, model.version)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, model.load)
        await loop.run_in_executor(self.engine, model.warm)
        return model

    def _models(self) -> tuple[LoadedModel | None, ...]:
        return (self.live, self.split.model if self.split else None, self.standby)

    def state(self) -> dict[str, Any]:
        """What this replica serves (the kernel side checks a transition with it)."""
        return {
            "live": self.live.version if self.live else None,
            "canary": self.split.describe() if self.split else None,
            "loaded": [m.version for m in self._models() if m is not None],
            "failed": self.failed,
        }

    def describe(self) -> dict[str, Any]:
        """The model as ``GET /v1/models/NAME`` of the built-in process describes it."""
        if self.live is None:
            return {}
        doc = self.live.describe()
        if self.split is not None:
            doc["canary"] = self.split.describe()
        self._refresh_gauges()
        stats, *_ = collect()
        live = (self.live.name, self.live.version)
        doc["stats"] = next((v.to_wire() for v in stats if (v.model, v.version) == live), None)
        return doc

    def metric_families(self) -> list[Any]:
        """This replica's Prometheus families (the gateway's ``/metrics`` merges them)."""
        self._refresh_gauges()
        return metrics.families()

    def _refresh_gauges(self) -> None:
        for model in self._models():
            if model is not None:
                model.refresh_gauges()

    # -- requests ---------------------------------------------------------------------------
    def _pick(self, headers: dict[str, str]) -> LoadedModel:
        live = self.live
        if live is None:
            raise InvalidInput("no version of this model is loaded yet")
        split = self.split
        if split is None:
            return live
        req = Request()  # the canary rule reads the request id the way a worker's parser stores it
        rid = headers.get(REQUEST_ID.decode())
        if rid is not None:
            req.headers[REQUEST_ID] = rid.encode("latin-1")
        return split.pick(live, req)

    async def handle(
        self, route: str, body: bytes, headers: dict[str, str], query: bytes = b""
    ) -> Answer:
        """One request the gateway relays: ``predict``, ``invocations`` or ``describe``."""
        if route == "describe":
            return 200, dumps(self.describe()), JSON, {}
        try:
            model = self._pick(headers)
        except InvalidInput as err:
            return 503, error_body(str(err)), JSON, {}
        tags = {"x-model-name": model.name, "x-model-version": str(model.version)}
        t0 = time.perf_counter()
        try:
            if route == "invocations":
                answer = await self._invocations(model, body, headers, tags)
            else:
                answer = await self._predict(model, body, headers, tags, wants_labels(query))
        except KernelMagicsError as err:  # refused before a forward, as a worker counts it
            model.stats.errors.inc()
            return _error(err, tags)
        _count(model, answer[0], t0)
        return answer

    async def complete(
        self, doc: dict, version: int | None, headers: dict[str, str], chat: bool
    ) -> AsyncIterator[stream.Head | bytes]:
        """``/v1/completions`` (``/v1/chat/completions`` when ``chat``) as ``stream`` answers
        it: the head, then the body piece by piece (Ray streams them to the gateway). ``doc``
        is the body the gateway decoded, ``version`` the one ``NAME@V`` pins (else None)."""
        t0 = time.perf_counter()
        try:
            if self.live is None:
                raise ServiceUnavailable("no version of this model is loaded yet")
            model = generative(self._pick(headers) if version is None else self._pinned(version))
        except KernelMagicsError as err:
            pieces = stream.failure(err)
        else:
            pieces = stream.completion(model, doc, chat, t0)
        async for piece in pieces:
            yield piece

    def _pinned(self, version: int) -> LoadedModel:
        """``NAME@V``: a version this replica serves (live, canary or the standby)."""
        for model in self._models():
            if model is not None and model.version == version:
                return model
        served = ", ".join(f"v{m.version}" for m in self._models() if m is not None)
        name = self.live.name if self.live is not None else "this model"
        raise NotFound(f"{name} v{version} is not served (served: {served})")

    async def _predict(
        self,
        model: LoadedModel,
        body: bytes,
        headers: dict[str, str],
        tags: dict[str, str],
        labels: bool = False,
    ) -> Answer:
        decoded = decode_predict(
            model,
            body,
            headers.get("content-type", "").encode("latin-1"),
            headers.get("accept", "").encode("latin-1"),
            labels,
            self.max_rows,
        )
        array, classes = decoded.array, decoded.classes
        if array.shape[0] > model.max_batch_size:  # @serve.batch refuses an item over its limit
            out = await self._forward(model, array)
        else:
            out = await self._batched((model, array))
        if isinstance(out, BaseException):
            return 400, error_body(_model_error(out)), JSON, tags
        if decoded.npy_out:
            return 200, npy_encode(out), NPY.decode(), tags
        if classes is not None:
            return 200, labelled_json(out, classes), JSON, tags
        return 200, predictions_json(out), JSON, tags

    async def _invocations(
        self, model: LoadedModel, body: bytes, headers: dict[str, str], tags: dict[str, str]
    ) -> Answer:
        ctype = headers.get("content-type")
        parsed = decode_invocations(
            model, body, ctype.encode("latin-1") if ctype else None, self.max_rows
        )
        # alone and exactly as given: the MLflow-compatible answer depends on the request
        out = await self._forward(model, parsed.array)
        if isinstance(out, BaseException):
            return 400, error_body(_model_error(out)), JSON, tags
        return 200, invocations.answer(out, parsed), JSON, tags

    async def _forward(self, model: LoadedModel, array: np.ndarray) -> np.ndarray | BaseException:
        model.stats.batch.observe(array.shape[0])
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.engine, model.forward, array
            )
        except Exception as err:
            return err

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.001, batch_size_fn=_rows)
    async def _batched(
        self, items: list[tuple[LoadedModel, np.ndarray]]
    ) -> list[np.ndarray | BaseException]:
        """One forward per (version, row shape, dtype) group of the batch (live and canary
        requests can meet here); each request gets its rows back, or its group's error."""
        groups: dict[tuple[int, tuple[int, ...], str], list[int]] = {}
        for i, (model, array) in enumerate(items):
            groups.setdefault((id(model), array.shape[1:], array.dtype.str), []).append(i)
        results: list[np.ndarray | BaseException] = [np.empty(0)] * len(items)
        for members in groups.values():
            model = items[members[0]][0]
            arrays = [items[i][1] for i in members]
            out = await self._forward(
                model, np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
            )
            start = 0
            for i, array in zip(members, arrays, strict=True):
                rows = array.shape[0]
                results[i] = out if isinstance(out, BaseException) else out[start : start + rows]
                start += rows
        return results


def _count(model: LoadedModel, status: int, t0: float) -> None:
    """A prediction answered, into its version's metrics as a worker counts it."""
    stats = model.stats
    if status >= 400:
        stats.model_errors.inc()
        if status >= 500:
            stats.server_errors.inc()
    stats.requests.inc()
    stats.latency.observe(time.perf_counter() - t0)


def _model_error(err: BaseException) -> str:
    return f"the model failed on this input: {describe_error(err)}"


async def _release(model: LoadedModel, timeout: float = 600) -> None:
    """A version no longer served: closed once its last answer is out (a language model's
    engine thread and cache go with it)."""
    await model.inflight.drained(timeout)
    model.close()
