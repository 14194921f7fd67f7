"""The built-in inference process as a serving target (the default, ``target = "local"``).

``LocalProcess`` starts and finds the process, ``HttpClient`` talks to it; this class speaks the
``ServingTarget`` protocol and turns what the process answers into records. Imports neither
torch nor mlflow (numpy only when predicting; the store only for history).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kernel_magics.config import Settings
from kernel_magics.errors import ServiceUnavailable
from kernel_magics.records import (
    CanaryRule,
    DriftSummary,
    HistoryEvent,
    ModelState,
    RecentError,
    ServerStatus,
    TokenUsage,
    TransitionResult,
    VersionStats,
)
from kernel_magics.targets.http import HttpClient
from kernel_magics.targets.process import LocalProcess

if TYPE_CHECKING:
    import numpy as np

    from kernel_magics.store import Store

# A deploy loads and warms a model in every worker: allow for a large one.
_MANAGE_TIMEOUT = 600.0
_STATUS_TIMEOUT = 5.0


class LocalTarget:
    kind = "local"

    def __init__(self, settings: Settings, store: Callable[[], Store] | None = None):
        self.settings = settings
        self.process = LocalProcess(settings)
        self.http = HttpClient(
            self.process.endpoint, self.process.token, settings.request_timeout_s
        )
        self._store = store

    # -- the process ----------------------------------------------------------------------------
    @property
    def url(self) -> str | None:
        return self.process.url

    def token(self) -> str:
        return self.http.token()

    def is_ready(self) -> bool:
        return self.process.is_ready()

    def crashed(self) -> bool:
        return self.process.crashed()

    def ensure_running(self, timeout: float = 60, check: Callable[[], object] | None = None) -> str:
        if not self.process.is_ready():
            self.http.forget_token()
        return self.process.ensure_running(timeout, check)

    def start(self, workers: int | None = None) -> str:
        self.http.forget_token()
        return self.process.start(workers)

    def stop(self) -> bool:
        stopped = self.process.stop()
        self.http.close()
        return stopped

    def logs(self, lines: int = 50) -> str:
        return self.process.logs(lines)

    # -- models ---------------------------------------------------------------------------------
    def deploy(
        self,
        name: str,
        ref: str | None = None,
        *,
        max_batch_size: int | None = None,
        max_wait_ms: float | None = None,
        canary: int | None = None,
        analyze: CanaryRule | None = None,
        log_sample: float | None = None,
        **unknown: Any,
    ) -> TransitionResult:
        # Unknown options travel to the process, which refuses them by name (one rule, there).
        options = {
            "max_batch_size": max_batch_size,
            "max_wait_ms": max_wait_ms,
            "canary": canary,
            "analyze": analyze.to_wire() if analyze is not None else None,
            "log_sample": log_sample,
            **unknown,
        }
        payload = {"ref": ref, **{k: v for k, v in options.items() if v is not None}}
        return self._transition(name, "deploy", payload)

    def rollback(self, name: str, to: int | None = None) -> TransitionResult:
        return self._transition(name, "rollback", {"to": to})

    def undeploy(self, name: str) -> TransitionResult:
        return self._transition(name, "undeploy", {})

    def promote(self, name: str) -> TransitionResult:
        """Make the running canary of ``name`` live (a normal swap, history event "promote")."""
        return self._transition(name, "promote", {})

    def _transition(self, name: str, action: str, payload: dict) -> TransitionResult:
        doc = self.http.call_json("POST", f"/v1/models/{name}/{action}", payload, _MANAGE_TIMEOUT)
        return TransitionResult.from_wire(doc).with_url(self.url)

    def predict(self, name: str, array: np.ndarray) -> tuple[np.ndarray, int]:
        return self.http.predict_rows(name, array)

    def invocations(self, name: str, payload: dict) -> dict:
        """The MLflow scoring route, answered as ``mlflow models serve`` answers it."""
        return dict(self.http.call_json("POST", f"/v1/models/{name}/invocations", payload))

    def request(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        """A raw request with the token (scripts, tests and the benchmark use it)."""
        return self.http.request(*args, **kwargs)

    def model(self, name: str) -> ModelState:
        return ModelState.from_wire(self.http.call_json("GET", f"/v1/models/{name}"))

    def models(self, timeout: float | None = None) -> list[ModelState]:
        doc = self.http.call_json("GET", "/v1/models", timeout=timeout)
        return [ModelState.from_wire(m) for m in doc.get("models", [])]

    def status(self) -> ServerStatus | None:
        """None if not running; else the state file and one status snapshot of the process
        (``GET /v1/status``): what is served with its counters, usage, errors, log lines."""
        state = self.process.state()
        if state is None:
            return None
        status = str(state.get("status") or "")
        try:
            doc = self.http.call_json("GET", "/v1/status", timeout=_STATUS_TIMEOUT)
        except ServiceUnavailable:
            doc, status = {}, "restarting"
        return status_from_snapshot(doc, state, status, self.kind)

    def settle(self, name: str) -> None:
        self.process.settle(name)

    def history(self, name: str) -> list[HistoryEvent]:
        """From the store (the source of truth), once the process has written every finished
        transition of ``name`` there (it answers a deploy before its history write)."""
        self.process.settle(name)
        if self._store is None:
            from kernel_magics.store import Store

            store = Store(self.settings)
        else:
            store = self._store()
        return [HistoryEvent.from_wire(e) for e in store.history(name)]


def status_from_snapshot(doc: dict, state: dict, status: str, kind: str) -> ServerStatus:
    """A ``ServerStatus`` from the state file and a ``/v1/status`` document (``{}`` when the
    process did not answer: then only the state file's part)."""
    models = {m.name: m for m in (ModelState.from_wire(m) for m in doc.get("models") or ())}
    usage = {
        str(name): TokenUsage(
            int(u.get("requests") or 0),
            int(u.get("rows") or 0),
            int(u.get("prompt_tokens") or 0),
            int(u.get("completion_tokens") or 0),
        )
        for name, u in (doc.get("usage") or {}).items()
    }
    return ServerStatus(
        url=state.get("url"),
        pid=state.get("pid"),
        status=status,
        target=kind,
        port=state.get("port"),
        workers=tuple(state.get("workers") or ()),
        started_at=state.get("started_at"),
        models=models,
        usage=usage,
        snapshot_at=doc.get("time"),
        versions=tuple(VersionStats.from_wire(v) for v in doc.get("versions") or ()),
        errors=tuple(RecentError.from_wire(e) for e in doc.get("errors") or ()),
        log=tuple(str(line) for line in doc.get("log") or ()),
        unknown_model_errors=int(doc.get("unknown_model_errors") or 0),
        inference_log={
            str(k): int(v) for k, v in (doc.get("inference_log") or {}).items() if v is not None
        },
        drift=tuple(DriftSummary.from_wire(d) for d in doc.get("drift") or ()),
    )
