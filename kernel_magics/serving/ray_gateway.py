"""The gateway of the ``ray`` serving target: one Ray Serve application at ``/`` that answers the
built-in process's public routes on Ray's HTTP proxy and relays each request to its model's
application (``ray_app.py``) through a handle.

Ray's proxy matches route prefixes on whole path segments, so ``/v1/models/NAME:predict`` cannot
reach an application mounted at ``/v1/models/NAME``: the routes are parsed here. OpenAI's
completion routes name their model in the body; the replica's answer comes back as a stream of
pieces (its head first) and goes out to the client as it comes. ``/metrics`` merges the
replicas' Prometheus families (each replica meters its versions as a worker does). Imports Ray,
never mlflow or IPython.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from starlette.requests import Request as HttpRequest
from starlette.responses import Response, StreamingResponse

from kernel_magics.errors import KernelMagicsError, NotFound
from kernel_magics.generative.openai_protocol import error_answer, error_json, model_list
from kernel_magics.generative.openai_requests import model_ref, read_body
from kernel_magics.naming import not_found, unknown_verb
from kernel_magics.serving.ray_app import JSON, MODEL_APP_PREFIX, app_name
from kernel_magics.serving.request import metrics
from kernel_magics.serving.request.bodies import dumps, error_body
from kernel_magics.serving.request.canary import REQUEST_ID
from kernel_magics.serving.tokens import MANAGE_ACTIONS

GATEWAY_APP = "kernel-magics"


@serve.deployment(max_ongoing_requests=512)
class Gateway:
    """The built-in process's public routes in front of the model applications."""

    def __init__(self) -> None:
        self.handles: dict[str, Any] = {}

    async def __call__(self, request: HttpRequest) -> Response:
        path, method = request.url.path, request.method
        if path in ("/v1/models", "/v1/models/"):
            return await self._list()
        if path in ("/ping", "/health"):
            return Response(b"pong", media_type="text/plain")
        if path == "/metrics":
            return await self._metrics()
        if path in COMPLETION_ROUTES:
            return await self._complete(request, chat=path == "/v1/chat/completions")
        if not path.startswith("/v1/models/"):
            return _answer(404, error_body(f"no route {path[:200]}"))
        rest = path[len("/v1/models/") :]
        name, slash, action = rest.partition("/")
        if slash and action == "invocations":
            route, allowed = "invocations", "POST"
        elif slash and action in MANAGE_ACTIONS:
            message = (
                f"{action} of a model served by Ray runs from the kernel side "
                "(%deploy, kernel_magics.api, the kernel-magics CLI), not over this HTTP API"
            )
            return _answer(501, error_body(message))
        elif slash:
            return _answer(404, error_body(f"no route {path[:200]}"))
        elif rest.endswith(":predict"):
            name, route, allowed = rest[: -len(":predict")], "predict", "POST"
        elif ":" in rest:
            return _answer(404, error_body(unknown_verb(rest)))
        else:
            route, allowed = "describe", "GET"
        if method != allowed:
            message = f"method {method} is not allowed on {path[:200]}; use {allowed}"
            return _answer(405, error_body(message), {"allow": allowed})
        handle = await self._handle(name)
        if handle is None:
            deployed = await asyncio.to_thread(_deployed)
            return _answer(404, error_body(not_found(name[:200], deployed, "deployed")))
        headers = {k: v for k, v in request.headers.items() if k in _FORWARDED}
        body = await request.body()
        query = request.url.query.encode("latin-1")
        status, data, ctype, extra = await handle.handle.remote(route, body, headers, query)
        return _answer(status, data, extra, ctype)

    async def _complete(self, request: HttpRequest, chat: bool) -> Response:
        """OpenAI's completion routes: relayed to the model named in the body, its answer
        streamed back as the replica yields it (a client gone cancels the replica's stream)."""
        if request.method != "POST":
            message = f"method {request.method} is not allowed on {request.url.path}; use POST"
            return _answer(405, error_json(405, message), {"allow": "POST"})
        try:
            doc = read_body(await request.body())
            name, version = model_ref(doc.get("model"))
            handle = await self._handle(name)
            if handle is None:
                deployed = await asyncio.to_thread(_deployed)
                raise NotFound(not_found(name[:200], deployed, "deployed"))
        except KernelMagicsError as err:
            status, extra, data = error_answer(err)
            return _answer(status, data, extra)
        headers = {k: v for k, v in request.headers.items() if k in _FORWARDED}
        # decoded once, here: the replica takes the body and the pinned version as they are
        pieces = handle.options(stream=True).complete.remote(doc, version, headers, chat)
        status, ctype, extra = await pieces.__anext__()
        return StreamingResponse(pieces, status_code=status, headers=extra, media_type=ctype)

    async def _handle(self, name: str) -> Any:
        handle = self.handles.get(name)
        if handle is None:
            try:
                handle = await asyncio.to_thread(serve.get_app_handle, app_name(name))
            except Exception:  # no such application: the model is not deployed here
                return None
            self.handles[name] = handle
        return handle

    def forget(self, name: str) -> None:
        """Drop the cached handle of a model whose application was deleted (undeploy)."""
        self.handles.pop(name, None)

    async def _list(self) -> Response:
        described = [await handle.describe.remote() for handle in await self._handles()]
        models = [doc for doc in described if doc]
        return _answer(200, dumps(model_list(models)))

    async def _metrics(self) -> Response:
        """The built-in process's Prometheus series, from every model's replica."""
        groups = [await handle.metric_families.remote() for handle in await self._handles()]
        return Response(metrics.merged(groups), media_type=metrics.CONTENT_TYPE.decode())

    async def _handles(self) -> list[Any]:
        """Every deployed model's handle, by name."""
        names = await asyncio.to_thread(_deployed)
        return [h for h in [await self._handle(name) for name in names] if h is not None]


_FORWARDED = ("content-type", "accept", REQUEST_ID.decode())
COMPLETION_ROUTES = ("/v1/completions", "/v1/chat/completions")


def _answer(
    status: int, body: bytes, headers: dict[str, str] | None = None, ctype: str = JSON
) -> Response:
    return Response(body, status_code=status, headers=headers, media_type=ctype)


def _deployed() -> list[str]:
    """Names of the models with a running application on this cluster."""
    apps = serve.status().applications
    return sorted(n[len(MODEL_APP_PREFIX) :] for n in apps if n.startswith(MODEL_APP_PREFIX))
