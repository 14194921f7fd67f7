"""Ray Serve as a serving target (``target = "ray"``, cluster at ``ray_address``).

Each deployed model is a Ray Serve application (``serving/ray_app.py``) behind one gateway
application (``serving/ray_gateway.py``) that answers the built-in process's routes, and
OpenAI's completion routes for a language model, on Ray's HTTP proxy (``host``:``port``, 8000
when ``port`` is 0). Transitions are planned here, in the kernel, with the same
``Lifecycle`` as the built-in process (store lookups, the SHA-256 check of the version's files,
the live and canary aliases, the history); the replicas receive the result as the deployment's
``user_config``, which Ray applies in place (``reconfigure``, no replica restart). The store
moves only after every sampled replica reports the new version, so a version that fails to load
is never made live.

What Ray has no equivalent for is refused with a clear error: the bearer token (Ray's proxy
authenticates nobody) and the log tail (Ray keeps replica logs on the cluster's nodes).
ray is imported on the first call that needs the cluster; predictions only need HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from kernel_magics.config import Settings
from kernel_magics.errors import DeployFailed, InvalidInput, ServiceUnavailable, first_line
from kernel_magics.records import HistoryEvent, ModelState, ServerStatus, TransitionResult
from kernel_magics.targets.http import HttpClient
from kernel_magics.targets.ray_config import config_after, config_from_store, pinned_options

if TYPE_CHECKING:
    import numpy as np

    from kernel_magics.serving.control.lifecycle import Lifecycle
    from kernel_magics.store import Store

log = logging.getLogger(__name__)
RAY_NAMESPACE = "kernel-magics"
DEFAULT_PORT = 8000  # Ray Serve's own default
# Logical CPUs a replica asks Ray for: the gateway only relays; a model replica runs its forward
# on one thread (torch_threads), and half a CPU lets a small head hold a few models.
GATEWAY_CPUS = 0.0
MODEL_CPUS = 0.5
_NO_TOKEN = (
    "the ray target has no bearer token: Ray Serve's HTTP proxy authenticates nobody, so keep "
    "it on loopback or a private network (host setting) and put access control in front of it"
)
_NO_LOGS = (
    "the ray target keeps no log here: Ray writes each replica's log on its node, under the "
    "cluster's temp folder (session_latest/logs/serve/); `ray logs` lists them"
)


def _off_the_loop(method: Callable) -> Callable:
    """Run ``method`` on a helper thread when the caller's thread runs an asyncio loop.

    Ray's synchronous calls (``serve.run``, a handle's ``.result()``) refuse to run on such a
    thread, and that is where a Jupyter kernel (ipykernel) runs every cell; a plain script or
    IPython shell has no running loop and calls straight through."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return method(*args, **kwargs)
        with ThreadPoolExecutor(1, thread_name_prefix="kernel-magics-ray") as pool:
            return pool.submit(method, *args, **kwargs).result()

    return call


class RayTarget:
    kind = "ray"

    def __init__(self, settings: Settings, store: Callable[[], Store] | None = None):
        if not settings.ray_address:
            raise InvalidInput(
                "target 'ray' needs the cluster's address: %config KernelMagics.ray_address = "
                "'HOST:PORT' (or KERNEL_MAGICS_RAY_ADDRESS)"
            )
        self.settings = settings
        self._store = store
        self._replicas = max(1, settings.workers)
        self._connected = False
        self._restored = False
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self.http = HttpClient(lambda: self.base_url, lambda: "", settings.request_timeout_s)

    # -- the cluster ----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port or DEFAULT_PORT}"

    @property
    def url(self) -> str | None:
        return self.base_url if self._connected or self._answers() else None

    def _answers(self) -> bool:
        try:
            return self.http.request("GET", "/ping", timeout=2)[0] == 200
        except ServiceUnavailable:
            return False

    @_off_the_loop
    def ensure_running(self, timeout: float = 60, check: Callable[[], object] | None = None) -> str:
        """Connect to the cluster, start Serve's proxy on ``host``:``port`` if Serve is not
        running, deploy the gateway, and (once per kernel) redeploy the models the store says
        are live that the cluster lacks (a restarted cluster serves what it served)."""
        if check is not None:
            check()
        with self._guard:
            if not self._connected:
                self._connect()
            if not self._restored:
                self._restored = True
                self._restore()
        return self.base_url

    def _connect(self) -> None:
        import ray
        from ray import serve

        from kernel_magics.serving.ray_gateway import GATEWAY_APP
        from kernel_magics.serving.ray_gateway import Gateway as gateway_class

        self.settings.check_bind()
        if not ray.is_initialized():
            try:
                ray.init(
                    address=self.settings.ray_address,
                    namespace=RAY_NAMESPACE,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
            except Exception as err:
                raise ServiceUnavailable(
                    f"cannot reach the Ray cluster at {self.settings.ray_address!r}: "
                    f"{first_line(err)}"
                ) from None
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
        serve.start(
            http_options={"host": self.settings.host, "port": self.settings.port or DEFAULT_PORT}
        )
        if GATEWAY_APP not in serve.status().applications:
            gateway = _deployment(gateway_class).options(**pinned_options(num_cpus=GATEWAY_CPUS))
            serve.run(gateway.bind(), name=GATEWAY_APP, route_prefix="/")
        self._connected = True

    def _restore(self) -> None:
        from ray import serve

        from kernel_magics.serving.ray_app import app_name

        running = serve.status().applications
        lifecycle = self._lifecycle()
        for name in sorted(lifecycle.store.live_models()):
            if app_name(name) in running:
                continue
            try:
                config = config_from_store(lifecycle, name)
                if config is not None:
                    self._apply(name, config)
            except Exception as err:  # one broken version must not keep the others down
                log.error("not restoring %s on Ray: %s", name, first_line(err))

    def start(self, workers: int | None = None) -> str:
        if workers is not None:
            self._replicas = max(1, workers)
        return self.ensure_running()

    @_off_the_loop
    def stop(self) -> bool:
        """Delete the applications of kernel-magics (models and gateway) from the cluster; the
        cluster and Serve keep running (this target started neither)."""
        from ray import serve

        from kernel_magics.serving.ray_app import MODEL_APP_PREFIX
        from kernel_magics.serving.ray_gateway import GATEWAY_APP

        with self._guard:  # connect, but do not redeploy what is about to be deleted
            self._restored = True
        self.ensure_running()
        ours = [n for n in serve.status().applications if n.startswith(MODEL_APP_PREFIX)] + [
            GATEWAY_APP
        ]
        for name in ours:
            serve.delete(name)
        self._connected = self._restored = False
        self.http.close()
        return bool(ours)

    def logs(self, lines: int = 50) -> str:
        raise InvalidInput(_NO_LOGS)

    def token(self) -> str:
        raise InvalidInput(_NO_TOKEN)

    # -- transitions ----------------------------------------------------------------------------
    def deploy(
        self,
        name: str,
        ref: str | None = None,
        *,
        max_batch_size: int | None = None,
        max_wait_ms: float | None = None,
        canary: int | None = None,
        analyze: Any = None,
        log_sample: float | None = None,
    ) -> TransitionResult:
        if analyze is not None:
            raise InvalidInput(
                "canary analysis runs in the local inference process; on the ray target "
                "promote or roll the canary back yourself"
            )
        if log_sample is not None:
            raise InvalidInput(
                "the ray target keeps no inference log: deploy without log_sample "
                "(the built-in process, target local, logs requests)"
            )
        options = {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms}
        set_options = {k: float(v) for k, v in options.items() if v is not None}
        return self._transition(name, "deploy", ref, canary, set_options)

    def rollback(self, name: str, to: int | None = None) -> TransitionResult:
        return self._transition(name, "rollback", to)

    def promote(self, name: str) -> TransitionResult:
        return self._transition(name, "promote")

    def undeploy(self, name: str) -> TransitionResult:
        return self._transition(name, "undeploy")

    @_off_the_loop
    def _transition(
        self,
        name: str,
        action: str,
        ref: str | int | None = None,
        canary: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> TransitionResult:
        self.ensure_running()
        lifecycle = self._lifecycle()
        with self._lock(name):
            plan = lifecycle.plan(name, action, ref, canary, **(options or {}))
            if plan.unchanged:  # already live as asked: nothing to update or record
                return TransitionResult(
                    name=name,
                    action=plan.action,
                    version=plan.to_version,
                    previous_version=plan.from_version,
                    url=self.base_url,
                    history=plan.history,
                    unchanged=True,
                )
            before = config_from_store(lifecycle, name)
            after = config_after(lifecycle, plan)
            started = time.perf_counter()
            reused = False
            if after is None:
                self._delete(name)
            else:
                try:
                    reused = self._apply(name, after)
                except DeployFailed:
                    self._put_back(name, before)
                    raise
            # On Ray this spans the whole update (status, serve.run, the replicas' reports),
            # not one worker's load as on the built-in process.
            load_ms = (time.perf_counter() - started) * 1000
            ready_at = time.time()  # the replicas answer with it from here on
            event, history = lifecycle.make_live(plan)
            lifecycle.record(plan, event)
        return TransitionResult(
            name=name,
            action=plan.action,
            version=plan.to_version,
            previous_version=plan.from_version,
            load_ms=round(load_ms, 2),
            ready_at=ready_at,
            reused=reused,
            url=self.base_url,
            history=history,
            canary=plan.canary,
        )

    def _apply(self, name: str, config: dict[str, Any]) -> bool:
        """Deploy (or update in place) ``name``'s application with ``config``; True when the
        replicas already had its live version loaded. DeployFailed if a replica could not load
        it (the replicas keep serving what they served)."""
        from ray import serve

        from kernel_magics.serving.ray_app import ModelServer, app_name

        s = self.settings
        app = app_name(name)
        running = app in serve.status().applications
        handle = serve.get_app_handle(app) if running else None
        loaded = set(handle.state.remote().result()["loaded"]) if handle else set()
        deployment = _deployment(ModelServer).options(
            **pinned_options(num_cpus=MODEL_CPUS),
            user_config=config,
            num_replicas=self._replicas,
        )
        bound = deployment.bind(s.max_rows, s.max_batch_size, s.max_wait_ms, s.torch_threads)
        try:
            handle = serve.run(bound, name=app, route_prefix=None)
        except Exception as err:
            raise DeployFailed(f"{name}: Ray could not deploy it: {first_line(err)}") from None
        want = config["live"]["version"]
        for _ in range(2 * self._replicas):  # the handle spreads calls over the replicas
            state = handle.state.remote().result()
            if state["failed"] is not None:
                raise DeployFailed(f"{name} v{want} did not load: {state['failed']['error']}")
            if state["live"] != want:
                raise DeployFailed(f"{name}: a replica serves v{state['live']}, not v{want}")
        return want in loaded

    def _put_back(self, name: str, config: dict[str, Any] | None) -> None:
        """After a failed load: the deployment's configuration back to what the store says is
        served, so a replica Ray (re)starts later loads that instead of the failed version."""
        try:
            if config is None:
                self._delete(name)
            else:
                self._apply(name, config)
        except Exception as err:
            log.error("%s: could not restore the previous configuration: %s", name, err)

    def _delete(self, name: str) -> None:
        from ray import serve

        from kernel_magics.serving.ray_app import app_name
        from kernel_magics.serving.ray_gateway import GATEWAY_APP

        serve.delete(app_name(name))
        serve.get_app_handle(GATEWAY_APP).forget.remote(name).result()

    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def _lifecycle(self) -> Lifecycle:
        from kernel_magics.serving.control.lifecycle import Lifecycle

        return Lifecycle(self.settings, self._store() if self._store else None)

    # -- requests and state ---------------------------------------------------------------------
    def predict(self, name: str, array: np.ndarray) -> tuple[np.ndarray, int]:
        try:
            return self.http.predict_rows(name, array)
        except ServiceUnavailable:
            raise ServiceUnavailable(self._unreachable()) from None

    def request(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        """A raw request to the proxy (scripts, tests and the benchmark use it)."""
        return self.http.request(*args, **kwargs)

    def model(self, name: str) -> ModelState:
        return ModelState.from_wire(self._get(f"/v1/models/{name}"))

    def models(self, timeout: float | None = None) -> list[ModelState]:
        return [ModelState.from_wire(m) for m in self._get("/v1/models").get("models", [])]

    def _get(self, path: str) -> Any:
        try:
            return self.http.call_json("GET", path)
        except ServiceUnavailable:
            raise ServiceUnavailable(self._unreachable()) from None

    def _unreachable(self) -> str:
        return (
            f"Ray Serve's proxy at {self.base_url} does not answer: is the cluster at "
            f"{self.settings.ray_address} up and a model deployed there (%deploy)?"
        )

    def status(self) -> ServerStatus | None:
        """None while the proxy does not answer; else what the gateway lists, each live
        version with its replica's counters (``%monitor`` takes rates between two)."""
        try:
            models = self.models()
        except ServiceUnavailable:
            return None
        return ServerStatus(
            url=self.base_url,
            pid=None,
            status="ready",
            target=self.kind,
            port=self.settings.port or DEFAULT_PORT,
            models={m.name: m for m in models},
            snapshot_at=time.time(),
            versions=tuple(m.stats for m in models if m.stats is not None),
        )

    def history(self, name: str) -> list[HistoryEvent]:
        """From the store: a transition here returns after its event was written."""
        return list(self._lifecycle().history(name))


def _deployment(cls: Any) -> Any:
    """A ``@serve.deployment`` class as Ray's ``Deployment`` (typed as the class it wraps)."""
    return cls
