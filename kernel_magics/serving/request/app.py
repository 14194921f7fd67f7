"""Request handlers of a worker: the public API (its control routes: ``control/worker_routes.py``).

Everything here runs on the event loop thread except model loading (a loader thread) and
forwards (the inference thread). Routing is a prefix test and one ``partition`` per request;
static routes are a dict lookup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kernel_magics.config import Settings
from kernel_magics.errors import InvalidInput, clip
from kernel_magics.generative import openai_api
from kernel_magics.generative.openai_protocol import model_list
from kernel_magics.naming import not_found, unknown_verb
from kernel_magics.quality.log_writer import InferenceLog, Sample
from kernel_magics.serving.control.worker_routes import ControlRoutes
from kernel_magics.serving.process import ipc
from kernel_magics.serving.request import feedback_route, invocations, metrics, v2
from kernel_magics.serving.request import status as status_snapshot
from kernel_magics.serving.request.batcher import InferenceThread, Item
from kernel_magics.serving.request.bodies import JSON, describe_error, dumps, error_body
from kernel_magics.serving.request.codecs import (
    NPY,
    labelled_json,
    npy_encode,
    predictions_json,
    wants_labels,
)
from kernel_magics.serving.request.drift_monitor import DriftMonitor
from kernel_magics.serving.request.model import LoadedModel
from kernel_magics.serving.request.model_table import ModelTable
from kernel_magics.serving.request.predict_request import decode_invocations, decode_predict
from kernel_magics.serving.request.protocol import Connection, Request
from kernel_magics.serving.request.request_ids import request_id
from kernel_magics.serving.tokens import ANONYMOUS, MANAGE, MANAGE_ACTIONS, TokenTable, refusal

log = logging.getLogger(__name__)
_MODELS = b"/v1/models"
_MODELS_SLASH = b"/v1/models/"
_V2 = b"/v2"
_ACTIONS = tuple(action.encode() for action in MANAGE_ACTIONS)
_RELAY_TIMEOUT = 600.0  # a deploy loads and warms in every worker; big models take a while
_AUTH_HINT = b'www-authenticate: Bearer realm="kernel-magics"\r\n'


class WorkerApp(ControlRoutes):
    def __init__(self, settings: Settings, index: int, loop: asyncio.AbstractEventLoop):
        self.settings = settings
        self.index = index
        self.loop = loop
        self.table = ModelTable()
        self.engine = InferenceThread(loop)
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="loader")
        self.max_rows = settings.max_rows
        self.predict_auth = settings.requires_predict_token
        self.metrics_auth = settings.requires_metrics_token
        self.tokens = TokenTable(settings)
        self.usage = metrics.Usage()
        self.unknown_errors = metrics.unknown_model_errors()
        self.recent_errors = status_snapshot.RecentErrors()  # shown by GET /v1/status
        # sampled requests, written off the request path (kernel_magics/quality/log_writer.py)
        self.inference_log = InferenceLog(
            settings.home,
            settings.log_max_rows,
            settings.log_queue,
            dropped=metrics.LOG_DROPPED,
            written=metrics.LOG_WRITTEN,
        )
        # drift gauges from the log (drift_monitor.py): one worker computes them, off the loop
        self.drift_monitor = (
            DriftMonitor(settings, self.served_folders)
            if index == 0 and settings.drift_interval_s > 0
            else None
        )
        self._openapi: bytes | None = None
        self.serve_public: Callable[[], Any] | None = None  # set by worker.main
        self.static: dict[bytes, tuple[bytes, Callable[[Request, Connection], None]]] = {
            b"/ping": (b"GET", self.ping),
            b"/health": (b"GET", self.health),
            b"/metrics": (b"GET", self.metrics),
            b"/v1/status": (b"GET", lambda req, conn: status_snapshot.answer(self, req, conn)),
            b"/openapi.json": (b"GET", self.openapi),
            _MODELS: (b"GET", self.list_models),
            # generative models (OpenAI's API): kernel_magics/generative/openai_api.py
            b"/v1/completions": (
                b"POST",
                lambda req, conn: openai_api.completions(self, req, conn),
            ),
            b"/v1/chat/completions": (
                b"POST",
                lambda req, conn: openai_api.chat_completions(self, req, conn),
            ),
            _MODELS_SLASH: (b"GET", self.list_models),
        }
        self.control_routes: dict[bytes, tuple[bytes, Callable[[Request, Connection], None]]] = {
            b"/_control/load": (b"POST", self.c_load),
            b"/_control/activate": (b"POST", self.c_activate),
            b"/_control/discard": (b"POST", self.c_discard),
            b"/_control/unload": (b"POST", self.c_unload),
            b"/_control/canary": (b"POST", self.c_canary),
            b"/_control/arms": (b"POST", self.c_arms),
            b"/_control/state": (b"GET", self.c_state),
            b"/_control/serve": (b"POST", self.c_serve),
        }

    def close(self) -> None:
        self.engine.stop()
        self.inference_log.close()
        if self.drift_monitor is not None:
            self.drift_monitor.close()
        self.loader.shutdown(wait=False, cancel_futures=True)

    def served_folders(self) -> list[tuple[str, int, Path]]:
        """(name, version, folder) of the live and canary versions; called from the drift
        monitor's thread, so the dicts the loop mutates are copied (a retry if one changed)."""
        for _ in range(3):
            try:
                models = list(self.table.live.values())
                models += [split.model for split in list(self.table.canary.values())]
                return [(m.name, m.version, Path(m.path)) for m in models]
            except RuntimeError:  # "dictionary changed size during iteration"
                continue
        return []

    # -- routing ------------------------------------------------------------------------------
    def handle_public(self, req: Request, conn: Connection) -> None:
        path = req.path
        if path.startswith(_MODELS_SLASH) and len(path) > 11:
            rest = path[11:]
            name, slash, action = rest.partition(b"/")
            if slash:
                if action == b"invocations":
                    if self._method(req, conn, b"POST"):
                        self.invocations(req, conn, name)
                elif action in _ACTIONS:
                    if self._method(req, conn, b"POST"):
                        self.manage(req, conn, name, action)
                elif action == b"feedback":
                    if self._method(req, conn, b"POST"):
                        feedback_route.feedback(self, req, conn, name)
                else:
                    self._not_found(req, conn)
            elif rest.endswith(b":predict"):
                if self._method(req, conn, b"POST"):
                    self.predict(req, conn, rest[:-8])
            elif b":" in rest:  # a verb other than :predict (names never hold ':')
                conn.send(404, error_body(unknown_verb(rest.decode("latin-1"))), req=req)
            elif self._method(req, conn, b"GET"):
                self.model_info(req, conn, rest)
            return None
        if path.startswith(_V2):  # the Open Inference Protocol (request/v2.py)
            return v2.route(self, req, conn)
        route = self.static.get(path)
        if route is None:
            self._not_found(req, conn)
        elif self._method(req, conn, route[0]):
            route[1](req, conn)
        return None

    def handle_control(self, req: Request, conn: Connection) -> None:
        route = self.control_routes.get(req.path)
        if route is None:
            self._not_found(req, conn)
        elif self._method(req, conn, route[0]):
            route[1](req, conn)

    def _method(self, req: Request, conn: Connection, allowed: bytes) -> bool:
        if req.method == allowed:
            return True
        msg = f"method {req.method.decode()} is not allowed on {clip(req.path)}"
        conn.send(
            405,
            error_body(f"{msg}; use {allowed.decode()}"),
            extra_headers=b"allow: " + allowed + b"\r\n",
            req=req,
        )
        return False

    def _not_found(self, req: Request, conn: Connection) -> None:
        conn.send(404, error_body(f"no route {req.path.decode('latin-1')[:200]}"), req=req)

    def _authorized(self, req: Request) -> bool:
        return self.tokens.identify(req.headers.get(b"authorization")) is not None

    def _caller(self, req: Request, conn: Connection) -> str | None:
        """Who asks for a prediction (the token's name, metered); None after answering 401."""
        who = self.tokens.identify(req.headers.get(b"authorization"))
        if who is None:
            if self.predict_auth:
                self._unauthorized(req, conn)
                return None
            who = ANONYMOUS
        self.usage.request(who)
        return who

    def _unauthorized(self, req: Request, conn: Connection) -> None:
        msg = (
            "missing or wrong bearer token: send 'Authorization: Bearer <token>' "
            "(`kernel-magics serve token` prints it)"
        )
        conn.send(401, error_body(msg), extra_headers=_AUTH_HINT, req=req)

    def _model(self, req: Request, conn: Connection, raw: bytes) -> LoadedModel | None:
        """The version that answers this request (the live one, or its canary's share)."""
        name = raw.decode("latin-1")
        model = self.table.live.get(name)
        if model is None:
            self.unknown_errors.inc()
            message = self._not_deployed(name[:200])
            self.recent_errors.add(404, message)
            conn.send(404, error_body(message), req=req)
            return None
        canaries = self.table.canary
        if canaries:  # empty unless a canary runs: no lookup at all on the common path
            split = canaries.get(name)
            if split is not None:
                return split.pick(model, req)
        return model

    def _not_deployed(self, name: str) -> str:
        return not_found(name, sorted(self.table.live), "deployed")

    # -- predictions --------------------------------------------------------------------------
    def predict(self, req: Request, conn: Connection, raw_name: bytes) -> None:
        who = self._caller(req, conn)
        if who is None:
            return
        model = self._model(req, conn, raw_name)
        if model is None:
            return
        headers = req.headers
        try:
            decoded = decode_predict(
                model,
                req.body,
                headers.get(b"content-type", b""),
                headers.get(b"accept", b""),
                wants_labels(req.query),
                self.max_rows,
            )
        except InvalidInput as err:
            self._refuse(model, req, conn, err)
            return
        array, classes, rows = decoded.array, decoded.classes, decoded.rows
        if decoded.npy_out:
            encode = lambda out: (npy_encode(out), NPY)  # noqa: E731
        elif classes is not None:
            encode = lambda out: (labelled_json(out, classes), JSON)  # noqa: E731
        else:
            encode = lambda out: (predictions_json(out), JSON)  # noqa: E731
        self._submit(model, req, conn, who, array, encode, rows=rows, labelled=bool(classes))

    def invocations(self, req: Request, conn: Connection, raw_name: bytes) -> None:
        who = self._caller(req, conn)
        if who is None:
            return
        model = self._model(req, conn, raw_name)
        if model is None:
            return
        try:
            parsed = decode_invocations(
                model, req.body, req.headers.get(b"content-type"), self.max_rows
            )
        except InvalidInput as err:
            self._refuse(model, req, conn, err)
            return
        # run alone and exactly as given: the MLflow-compatible answer depends on the request
        encode = lambda out: (invocations.answer(out, parsed), JSON)  # noqa: E731
        self._submit(model, req, conn, who, parsed.array, encode, alone=True)

    def _refuse(
        self, model: LoadedModel, req: Request, conn: Connection, err: InvalidInput
    ) -> None:
        """Answer a request refused before it was queued (counted as the model's error)."""
        model.stats.errors.inc()
        self.recent_errors.add(err.http_status, str(err), model.name, model.version)
        conn.send(err.http_status, error_body(str(err)), req=req)

    def _submit(
        self,
        model: LoadedModel,
        req: Request,
        conn: Connection,
        who: str,
        array: Any,
        encode: Callable[[Any], tuple[bytes, bytes]],
        alone: bool = False,
        rows: Any = None,
        labelled: bool = False,
    ) -> None:
        """Queue a checked request for the model's batcher; answer with ``encode(outputs)``
        (body, content type), counting it for the token, the model and the swap drain.
        Every prediction route passes here, so here a sampled request is handed to the
        inference log (``rows``: the rows as the client sent them, if not ``array``), after
        its answer is written."""
        self.usage.rows(who, array.shape[0])
        stats, headers, inflight = model.stats, model.response_headers, model.inflight
        recent_errors = self.recent_errors
        sampled = model.sampler.take()

        def done(out: Any, err: BaseException | None) -> None:
            try:
                if err is not None:
                    stats.model_errors.inc()
                    message = _model_error(err)
                    recent_errors.add(400, message, model.name, model.version)
                    conn.send(400, error_body(message), extra_headers=headers, req=req)
                    return
                try:
                    body, ctype = encode(out)
                except Exception as exc:  # the model's output does not fit the answer format
                    stats.model_errors.inc()
                    stats.server_errors.inc()
                    log.exception("%s v%s: encoding the answer failed", model.name, model.version)
                    msg = f"could not encode the model's output: {describe_error(exc)}"
                    recent_errors.add(500, msg, model.name, model.version)
                    conn.send(500, error_body(msg), extra_headers=headers, req=req)
                    return
                conn.send(200, body, ctype, headers, req)
                if sampled:
                    self._log(model, req, array if rows is None else rows, out, labelled)
            finally:
                inflight.leave()
                stats.requests.inc()
                stats.latency.observe(time.perf_counter() - req.t0)

        inflight.enter()
        self.engine.submit(model.batcher, Item(array, done, raw=alone))

    def _log(self, model: LoadedModel, req: Request, rows: Any, out: Any, labelled: bool) -> None:
        latency_ms = (time.perf_counter() - req.t0) * 1000
        rid = request_id(req).decode("ascii")
        shape = model.row_shape(labelled)
        sample = Sample(model.name, model.version, rid, rows, out, latency_ms, shape)
        self.inference_log.add(sample)

    # -- management, relayed to the supervisor ------------------------------------------------
    def manage(self, req: Request, conn: Connection, name: bytes, action: bytes) -> None:
        who = self.tokens.identify(req.headers.get(b"authorization"))
        if who is None:
            return self._unauthorized(req, conn)
        refused = refusal(who, self.tokens.scope(who), MANAGE, action.decode())
        if refused is not None:
            return conn.send(403, dumps(refused), req=req)
        self.loop.create_task(self._relay(req, conn, name.decode("latin-1"), action.decode()))
        return None

    async def _relay(self, req: Request, conn: Connection, name: str, action: str) -> None:
        target = f"/v1/models/{name}/{action}"
        try:
            status, body = await ipc.request(
                str(self.settings.control_socket), "POST", target, bytes(req.body), _RELAY_TIMEOUT
            )
        except (ConnectionError, TimeoutError, OSError) as err:
            log.warning("relay %s failed: %s", clip(target), err)
            status, body = (
                503,
                error_body("the supervisor is not reachable; retry in a few seconds"),
            )
        conn.send(status, body, req=req)

    # -- introspection ------------------------------------------------------------------------
    def ping(self, req: Request, conn: Connection) -> None:
        conn.send(200, b"pong", b"text/plain", req=req)

    def health(self, req: Request, conn: Connection) -> None:
        models = {name: m.version for name, m in self.table.live.items()}
        conn.send(200, dumps({"status": "ok", "models": models}), req=req)

    def metrics(self, req: Request, conn: Connection) -> None:
        # token names are labels here: not for anyone who can reach the port
        if self.metrics_auth and not self._authorized(req):
            return self._unauthorized(req, conn)
        self.refresh_generation_gauges()
        conn.send(200, metrics.render(), metrics.CONTENT_TYPE, req=req)
        return None

    def refresh_generation_gauges(self) -> None:
        """The served language models' gauges, read from their engines now."""
        table = self.table
        for model in [*table.live.values(), *(split.model for split in table.canary.values())]:
            model.refresh_gauges()

    def openapi(self, req: Request, conn: Connection) -> None:
        if self._openapi is None:
            from kernel_magics.serving.request.openapi import document

            models = [m.describe() for m in self.table.live.values()]
            self._openapi = dumps(document(models, self.max_rows))
        conn.send(200, self._openapi, req=req)

    def list_models(self, req: Request, conn: Connection) -> None:
        models = [self.table.describe(name) for name in sorted(self.table.live)]
        conn.send(200, dumps(model_list(models)), req=req)

    def model_info(self, req: Request, conn: Connection, raw: bytes) -> None:
        name = raw.decode("latin-1")
        if name not in self.table.live:
            conn.send(404, error_body(self._not_deployed(name[:200])), req=req)
            return
        conn.send(200, dumps(self.table.describe(name)), req=req)


def _model_error(err: BaseException) -> str:
    return f"the model failed on this input: {describe_error(err)}"
