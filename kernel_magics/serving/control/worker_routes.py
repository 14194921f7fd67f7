"""A worker's control routes (its unix socket, only the supervisor calls them; never public):
load and warm a version beside the live one, activate it, discard or unload, start serving,
report state. They are the worker side of ``transitions.WorkerPool`` (``process/pool.py``).

A mixin of ``WorkerApp``: the handlers share its loop, model table and loader thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from kernel_magics.config import Settings
from kernel_magics.errors import DeployFailed, InvalidInput, KernelMagicsError
from kernel_magics.exiting import settle_heap
from kernel_magics.quality.log_writer import Sampler
from kernel_magics.records import HistoryEvent, ModelSpec
from kernel_magics.serving.request import metrics
from kernel_magics.serving.request.batcher import Batcher
from kernel_magics.serving.request.bodies import describe_error, dumps, error_body
from kernel_magics.serving.request.model import LoadedModel
from kernel_magics.serving.request.model_table import History, ModelTable, model_from_spec
from kernel_magics.serving.request.protocol import Connection, Request

log = logging.getLogger(__name__)


class ControlRoutes:
    settings: Settings
    loop: asyncio.AbstractEventLoop
    index: int
    table: ModelTable
    loader: ThreadPoolExecutor
    serve_public: Callable[[], Any] | None
    _openapi: bytes | None

    def _body(self, req: Request, conn: Connection) -> dict | None:
        try:
            doc = orjson.loads(req.body) if req.body else {}
        except orjson.JSONDecodeError as err:
            conn.send(400, error_body(f"body is not valid JSON: {err}"), req=req)
            return None
        if not isinstance(doc, dict):
            conn.send(400, error_body("body must be a JSON object"), req=req)
            return None
        return doc

    def c_load(self, req: Request, conn: Connection) -> None:
        doc = self._body(req, conn)
        if doc is None:
            return
        try:
            spec = ModelSpec.from_wire(doc)
        except InvalidInput as err:
            conn.send(400, error_body(str(err)), req=req)
            return
        self.loop.create_task(self._load(spec, req, conn))

    async def _load(self, spec: ModelSpec, req: Request, conn: Connection) -> None:
        s = self.settings
        try:
            reused = self.table.reusable(spec, s.max_batch_size, s.max_wait_ms)
            if reused is not None:
                # the log's share is no load property: a re-deploy only changes it
                sample = spec.log_sample if spec.log_sample is not None else s.log_sample
                if reused.sampler.rate != sample:
                    reused.sampler = Sampler(sample)
                self.table.stage(reused)
                body = {"load_ms": 0.0, "warm_ms": 0.0, "reused": True, "ready_at": time.time()}
                conn.send(200, dumps(body), req=req)
                return
            model = model_from_spec(spec, s.max_batch_size, s.max_wait_ms, s.log_sample)
            await self.loop.run_in_executor(self.loader, _load_and_warm, model)
        except KernelMagicsError as err:
            status = 409 if isinstance(err, DeployFailed) else err.http_status
            conn.send(status, error_body(str(err)), req=req)
            return
        except Exception as err:
            log.exception("loading %s v%s failed", spec.name, spec.version)
            conn.send(409, error_body(f"loading failed: {describe_error(err, 900)}"), req=req)
            return
        model.stats = metrics.ModelStats(model.name, model.version)
        model.batcher = Batcher(model, model.max_batch_size, model.max_wait_ms, model.stats)
        metrics.LOADS.labels(model.name, str(model.version)).inc()
        self.table.stage(model)
        log.info(
            "staged %s v%s (%s%s): load %.0f ms, warm %.0f ms",
            model.name,
            model.version,
            model.fmt,
            ", direct graph call" if model.fast_path else "",
            model.load_ms,
            model.warm_ms,
        )
        body = {
            "load_ms": round(model.load_ms, 2),
            "warm_ms": round(model.warm_ms, 2),
            "reused": False,
            # wall clock (shared by every process on the machine) when it was loaded and warm:
            # the supervisor reports the latest one, so a caller can time the swap after it
            "ready_at": time.time(),
        }
        conn.send(200, dumps(body), req=req)

    def c_activate(self, req: Request, conn: Connection) -> None:
        doc = self._body(req, conn)
        if doc is None:
            return
        try:
            name, version, history = str(doc["name"]), int(doc["version"]), _history(doc)
        except (KeyError, TypeError, ValueError, InvalidInput) as err:
            msg = f"activate needs a name, a version and a history: {err}"
            conn.send(400, error_body(msg), req=req)
            return
        split = self.table.canary.get(name)
        try:
            model, previous = self.table.activate(name, version, history)
        except KeyError as err:  # not staged here
            conn.send(404, error_body(str(err).strip("'\"")), req=req)
            return
        self._openapi = None
        was = f"was v{previous.version}" if previous is not None else "first deploy"
        log.info("activated %s v%s (%s)", name, version, was)
        body = {"name": name, "version": version, "previous_version": previous and previous.version}
        replaced = previous if previous is not model else None  # a redeploy replaces nothing
        dropped = split.model if split is not None and split.model is not model else None
        self.loop.create_task(self._answer_when_drained(replaced, body, req, conn, dropped))

    async def _answer_when_drained(
        self,
        previous: LoadedModel | None,
        body: dict,
        req: Request,
        conn: Connection,
        canary: LoadedModel | None = None,
    ) -> None:
        """Answer a swap once the replaced version (and a canary the swap ended) has sent its
        last response: from then on every response of this worker comes from the new version."""
        drained = True
        for old in (previous, canary):
            if old is None:
                continue
            drained = await old.inflight.drained(self.settings.request_timeout_s) and drained
            if not drained:
                log.warning(
                    "%s v%s: requests still in flight after the swap", body["name"], old.version
                )
        conn.send(200, dumps({**body, "drained": drained}), req=req)

    def c_canary(self, req: Request, conn: Connection) -> None:
        """Start, change or (``percent`` 0) stop the canary of a model; a stopped canary is
        acknowledged once its last response is written."""
        doc = self._body(req, conn)
        if doc is None:
            return
        try:
            name, percent = str(doc["name"]), int(doc.get("percent") or 0)
            version = int(doc["version"]) if percent else None
            analyze = bool(doc.get("analyze", False))
            history = _history(doc)
        except (KeyError, TypeError, ValueError, InvalidInput) as err:
            conn.send(
                400, error_body(f"canary needs a name, a version and a percent: {err}"), req=req
            )
            return
        try:
            if version is None:
                dropped = self.table.drop_canary(name)
            else:
                dropped = self.table.set_canary(name, version, percent, analyze)
        except KeyError as err:
            conn.send(404, error_body(str(err).strip("'\"")), req=req)
            return
        if history is not None:
            self.table.history[name] = history
        judged = " (judged)" if analyze and version else ""
        log.info(
            "canary %s: %s%s", name, f"v{version} at {percent}%" if version else "stopped", judged
        )
        body = {"name": name, "version": version, "percent": percent}
        self.loop.create_task(self._answer_when_drained(dropped, body, req, conn))

    def c_discard(self, req: Request, conn: Connection) -> None:
        doc = self._body(req, conn)
        if doc is not None:
            version = doc.get("version")
            n = self.table.discard(
                str(doc.get("name")), int(version) if version is not None else None
            )
            conn.send(200, dumps({"discarded": n}), req=req)

    def c_unload(self, req: Request, conn: Connection) -> None:
        doc = self._body(req, conn)
        if doc is not None:
            name = str(doc.get("name"))
            try:
                history = _history(doc)
            except (TypeError, InvalidInput) as err:
                conn.send(400, error_body(f"bad history: {err}"), req=req)
                return
            previous = self.table.unload(name, history)
            self._openapi = None
            log.info("unloaded %s (was v%s)", name, previous and previous.version)
            body = {"name": name, "previous_version": previous and previous.version}

            async def answer_then_release() -> None:
                await self._answer_when_drained(previous, body, req, conn)
                self.table.release(previous)  # a language model's engine thread ends

            self.loop.create_task(answer_then_release())

    def c_serve(self, req: Request, conn: Connection) -> None:
        """Start accepting on the public socket (after the supervisor restored the models)."""

        async def go() -> None:
            try:
                if self.serve_public is not None:
                    await self.serve_public()
            except Exception as err:
                log.exception("cannot serve the public socket")
                conn.send(503, error_body(f"cannot serve: {err}"), req=req)
                return
            conn.send(200, b'{"serving": true}', req=req)

        self.loop.create_task(go())

    def c_arms(self, req: Request, conn: Connection) -> None:
        """Hand the supervisor what each judged canary's arms answered since it last asked."""
        conn.send(200, dumps(self.table.take_arms()), req=req)

    def c_state(self, req: Request, conn: Connection) -> None:
        state = {
            "pid": os.getpid(),
            "index": self.index,
            "models": {name: m.version for name, m in self.table.live.items()},
            "staged": [list(key) for key in self.table.staged],
            "standby": {name: m.version for name, m in self.table.standby.items()},
            "canary": {name: split.describe() for name, split in self.table.canary.items()},
        }
        conn.send(200, dumps(state), req=req)


def _history(doc: dict) -> History | None:
    """The model's deployment history sent along with an activation (None: keep the old)."""
    raw = doc.get("history")
    return None if raw is None else tuple(HistoryEvent.from_wire(e) for e in raw)


def _load_and_warm(model: LoadedModel) -> None:
    model.load()
    model.warm()
    settle_heap()
