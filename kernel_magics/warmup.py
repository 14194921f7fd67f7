"""Pay MLflow's and torch.export's one-time costs while the user is still writing code.

In a fresh kernel the first ``log_model`` takes ~4 s (imports, the exporter's first trace,
signature inference) against ~0.15 s afterwards, and the first store access creates the SQLite
schema (~1 s). ``%load_ext kernel_magics`` starts this warm-up in a daemon thread so the end of
the first ``%train`` (last epoch → registered version) stays well under a second.
``start_server`` does the same for the inference process (``autostart``, on by default).
"""

from __future__ import annotations

import logging
import tempfile
import threading

from kernel_magics.config import Settings

log = logging.getLogger(__name__)
_started: threading.Thread | None = None
_lock = threading.Lock()


def _warm(settings: Settings) -> None:
    try:
        import mlflow.pytorch
        import numpy as np
        import torch

        from kernel_magics.store import Store

        tiny = torch.nn.Sequential(torch.nn.Linear(2, 2))
        example = np.zeros((2, 2), dtype=np.float32)
        with tempfile.TemporaryDirectory(prefix="kernel-magics-warmup-") as tmp:
            mlflow.pytorch.save_model(
                tiny, f"{tmp}/model", input_example=example, pip_requirements=["torch"]
            )
        Store(settings).experiment_id()  # creates the schema and the experiment once
    except Exception as err:  # warm-up is an optimisation: never let it bother the user
        log.debug("warm-up skipped: %s", err)


def start_warmup(settings: Settings) -> threading.Thread:
    """Start the warm-up once per process; returns the thread (join it to wait)."""
    global _started
    with _lock:
        if _started is None:
            _started = threading.Thread(
                target=_warm, args=(settings,), name="kernel-magics-warmup", daemon=True
            )
            _started.start()
        return _started


def start_server(settings: Settings) -> threading.Thread:
    """Start (or reattach to) the inference process in a daemon thread: a cold worker spends
    ~3 s importing torch and the pt2 loader, which the user would otherwise wait for at the
    first %deploy. Failures stay quiet here; %deploy reports them when it needs the process."""

    def run() -> None:
        try:
            from kernel_magics.serving.client import ServingClient

            ServingClient(settings).ensure_running()
        except Exception as err:
            log.debug("autostart of the inference process skipped: %s", err)

    thread = threading.Thread(target=run, name="kernel-magics-autostart", daemon=True)
    thread.start()
    return thread
