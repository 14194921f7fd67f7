"""The REST routes of the JupyterLab Models panel, under the Jupyter server's base URL.

    GET  {base}/kernel-magics/models                  models, versions, live/served, metrics, tags,
                                                      each model's recent deployment events
    GET  {base}/kernel-magics/status                  the serving target's snapshot (null: stopped),
                                                      with "quality": {model: [line per version]}
    GET  {base}/kernel-magics/history/{name}          deployment events, oldest first
    POST {base}/kernel-magics/models/{name}/deploy    body {"version": N} (newest when absent)
    POST {base}/kernel-magics/models/{name}/rollback  body {"to": N} (previously live when absent)
    POST {base}/kernel-magics/models/{name}/undeploy

Each route only calls the same ``kernel_magics.api`` function as the magics, in a worker thread
(a deploy loads and warms a model: seconds the server's event loop must not wait), and answers
its record as JSON. A ``KernelMagicsError`` answers its own ``http_status`` and anything else
500, both as ``{"error": "<one line>"}``. Settings come from ``config.load_settings()`` on every
call, so ``KERNEL_MAGICS_HOME`` in the server's environment selects the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from kernel_magics.display import to_json
from kernel_magics.display.quality import quality_lines
from kernel_magics.errors import InvalidInput, KernelMagicsError, first_line
from kernel_magics.metric_names import key_metrics
from kernel_magics.naming import parse_version

ROUTE_PREFIX = "kernel-magics"
_NAME = r"(?P<name>[^/]+)"  # api validates the name itself and answers 400


def _api() -> Any:
    """``kernel_magics.api``, imported on the first call rather than when the server loads the
    extension: a broken import then reaches the panel as its one-line error, not as a 404 of
    routes that were never added."""
    from kernel_magics import api

    return api


class _KernelMagicsHandler(APIHandler):
    """Runs one api call off the event loop and answers its result or its error as JSON."""

    async def _answer(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            result = await asyncio.to_thread(call, *args, **kwargs)
        except KernelMagicsError as err:
            self._fail(err.http_status, first_line(err))
            return
        except Exception as err:  # a bug or a library failure: still one line for the panel
            request = self.request
            self.log.exception("kernel-magics: %s %s failed", request.method, request.path)
            self._fail(500, first_line(err))
            return
        self.set_header("Content-Type", "application/json")
        self.finish(to_json(result))

    def _fail(self, status: int, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(to_json({"error": message}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # tornado's own refusals (403 without a token, bad JSON) in the same {"error"} shape
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, tornado.web.HTTPError):
            message = exc.log_message or exc.reason or self._reason
        else:
            message = first_line(exc) if exc is not None else self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(to_json({"error": message}))

    def _body_version(self, key: str) -> int | None:
        """An optional version number from the JSON body (an empty body is ``{}``)."""
        body = self.get_json_body() if self.request.body else None
        if body is None:
            return None
        if not isinstance(body, dict):
            raise InvalidInput(f"the request body must be a JSON object, got {type(body).__name__}")
        value = body.get(key)
        if value is None:
            return None
        try:
            return parse_version(value)
        except InvalidInput as err:
            raise InvalidInput(f"{key!r} must be a version number: {err}") from None


# The deployment events a model's entry in the models answer carries, newest last: what the
# panel shows, so that one request per refresh answers all it draws.
RECENT_EVENTS = 5


def _models_document() -> dict[str, Any]:
    """``api.models()`` as JSON, each version with the metrics the ``%models`` table shows
    (``metric_names.key_metrics``), so the panel and the magic pick the same ones; each model
    with its last ``RECENT_EVENTS`` deployment events (``history``)."""
    api = _api()
    models = []
    for summary in api.models():
        doc = dataclasses.asdict(summary)
        for version, row in zip(summary.versions, doc["versions"], strict=True):
            row["key_metrics"] = key_metrics(version.metrics, version.task)
        doc["history"] = [e.to_wire() for e in api.history(summary.name)[-RECENT_EVENTS:]]
        models.append(doc)
    return {"models": models}


class ModelsHandler(_KernelMagicsHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        await self._answer(_models_document)


class StatusHandler(_KernelMagicsHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        def snapshot() -> dict[str, Any]:
            api = _api()
            status = api.server_status()
            if status is None:
                return {"status": None}
            doc = status.to_wire()
            # the same lines as %monitor's, written here so the panel only shows them
            doc["quality"] = quality_lines(status, api.served_live_metrics(status))
            return {"status": doc}

        await self._answer(snapshot)


class HistoryHandler(_KernelMagicsHandler):
    @tornado.web.authenticated
    async def get(self, name: str) -> None:
        await self._answer(lambda: {"history": [e.to_wire() for e in _api().history(name)]})


class TransitionHandler(_KernelMagicsHandler):
    """POST .../models/{name}/{deploy|rollback|undeploy}: the route picks the api function."""

    @tornado.web.authenticated
    async def post(self, name: str, action: str) -> None:
        try:
            if action == "deploy":
                version = self._body_version("version")
                await self._answer(lambda: _api().deploy(name, version).to_wire())
            elif action == "rollback":
                to = self._body_version("to")
                await self._answer(lambda: _api().rollback(name, to).to_wire())
            else:
                await self._answer(lambda: _api().undeploy(name).to_wire())
        except KernelMagicsError as err:  # a body that is not what the action takes
            self._fail(err.http_status, first_line(err))


def setup_handlers(web_app: Any) -> str:
    """Adds the routes under the server's base URL; returns their common prefix."""
    prefix = url_path_join(web_app.settings["base_url"], ROUTE_PREFIX)
    web_app.add_handlers(
        ".*$",
        [
            (url_path_join(prefix, "models"), ModelsHandler),
            (url_path_join(prefix, "status"), StatusHandler),
            (url_path_join(prefix, "history", _NAME), HistoryHandler),
            (
                url_path_join(prefix, "models", _NAME, r"(?P<action>deploy|rollback|undeploy)"),
                TransitionHandler,
            ),
        ],
    )
    return prefix
