"""The serving-target protocol: what the kernel side needs from anything that serves models.

``kernel_magics.api`` reaches a target only through this protocol; which one is chosen by the
``target`` setting (``targets.open_target``). The built-in inference process (``local``) is the
first implementation; a target on another engine implements the same methods and returns the
same records, so magics, widgets, the CLI and the JupyterLab panel do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from kernel_magics.records import (
        CanaryRule,
        HistoryEvent,
        ModelState,
        ServerStatus,
        TransitionResult,
    )
    from kernel_magics.targets.http import HttpClient


@runtime_checkable
class ServingTarget(Protocol):
    kind: str
    http: HttpClient  # its HTTP API: the token it needs (none on Ray), the statuses mapped back

    @property
    def url(self) -> str | None:
        """Base URL of the HTTP API while the target runs, else None."""

    def ensure_running(self, timeout: float = 60, check: Callable[[], object] | None = None) -> str:
        """Start the target where that applies (``check`` validates the caller's request
        meanwhile) and return its URL."""

    def start(self, workers: int | None = None) -> str: ...

    def stop(self) -> bool:
        """Stop what this target started; False when nothing was running."""

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
    ) -> TransitionResult:
        """Make ``ref`` live; with ``canary`` (percent), load it beside the live version and
        send it that share of the requests instead (the live version stays); with ``analyze``
        too, the target promotes or rolls back that canary by itself (or refuses the rule).
        ``log_sample``: the share of its requests the inference log keeps (a target without one
        refuses it)."""

    def rollback(self, name: str, to: int | None = None) -> TransitionResult:
        """Back to the previous version; while a canary runs, drop the canary."""

    def promote(self, name: str) -> TransitionResult:
        """Make the running canary live."""

    def undeploy(self, name: str) -> TransitionResult: ...

    def predict(self, name: str, array: np.ndarray) -> tuple[np.ndarray, int]:
        """The live version's outputs for ``array`` and that version's number."""

    def status(self) -> ServerStatus | None:
        """One snapshot of the running target, or None when it does not run."""

    def model(self, name: str) -> ModelState: ...

    def history(self, name: str) -> list[HistoryEvent]:
        """Deployment events of ``name``, oldest first, including every finished transition."""

    def logs(self, lines: int = 50) -> str: ...

    def token(self) -> str:
        """The bearer token plain HTTP clients need."""
