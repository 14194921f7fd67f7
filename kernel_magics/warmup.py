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
_done = threading.Event()  # the warm-up is over (see wait_for_warmup)
WARMUP_WAIT_S = 120.0


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
    finally:
        _done.set()


def start_warmup(settings: Settings) -> threading.Thread:
    """Start the warm-up once per process; returns the thread (join it to wait). In IPython it
    begins once the current cell is over, see ``_after_this_cell``."""
    global _started
    with _lock:
        if _started is None:
            _started = threading.Thread(
                target=_warm, args=(settings,), name="kernel-magics-warmup", daemon=True
            )
            if not _after_this_cell(_started):
                _started.start()
        return _started


def wait_for_warmup(timeout: float = WARMUP_WAIT_S) -> None:
    """Wait while a started warm-up runs. Importing the same packages (torch, mlflow, their
    lazily imported parts) in two threads at once can deadlock inside them; Python then fails
    one import, and the other re-initialises a C extension ("... is already defined") or reads
    a half-built module. So cells and magics wait for the warm-up, whose work (the imports, the
    first export, the store's schema) they would otherwise do themselves."""
    thread = _started
    if thread is not None and thread.ident is not None and thread is not threading.current_thread():
        _done.wait(timeout)


def _after_this_cell(thread: threading.Thread) -> bool:
    """In IPython: start ``thread`` when the current cell is over (``%load_ext`` is usually
    followed by ``import torch`` in its own cell) and make the cells after it wait for the
    warm-up (``wait_for_warmup``). False outside IPython: start it now."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return False
    shell = get_ipython()
    if shell is None:
        return False

    def after_cell(*_: object) -> None:
        shell.events.unregister("post_run_cell", after_cell)
        thread.start()

    def before_cell(*_: object) -> None:
        wait_for_warmup()
        if _done.is_set():
            shell.events.unregister("pre_run_cell", before_cell)

    shell.events.register("post_run_cell", after_cell)
    shell.events.register("pre_run_cell", before_cell)
    return True


_watchdog_stop: threading.Event | None = None
WATCH_INTERVAL_S = 0.5


def start_server(settings: Settings) -> threading.Thread:
    """Start (or reattach to) the inference process in a daemon thread: a cold worker spends
    ~3 s importing torch and the pt2 loader, which the user would otherwise wait for at the
    first %deploy. Failures stay quiet here; %deploy reports them when it needs the process.

    The thread then stays as the process's watchdog for as long as the extension is loaded:
    the supervisor restarts crashed workers itself, and this brings back a supervisor that
    died without its clean stop (SIGKILL, OOM killer) from the store, without waiting for the
    next call. A deliberate stop removes the state file, so it is not undone here."""
    global _watchdog_stop
    stop_watchdog()
    stop = _watchdog_stop = threading.Event()

    def run() -> None:
        from kernel_magics.targets.process import LocalProcess

        client = LocalProcess(settings)
        try:
            client.ensure_running()
        except Exception as err:
            log.debug("autostart of the inference process skipped: %s", err)
        while not stop.wait(WATCH_INTERVAL_S):
            try:
                # a supervisor this client started and that was stopped from a terminal
                # (`kernel-magics serve stop`) is collected here, not left <defunct>
                client.reap()
                if client.crashed():
                    log.warning("the inference process died; restarting it from the store")
                    client.ensure_running()
            except Exception as err:  # the next user call reports what is wrong
                log.debug("watchdog: restart failed: %s", err)

    thread = threading.Thread(target=run, name="kernel-magics-watchdog", daemon=True)
    thread.start()
    return thread


def stop_watchdog() -> None:
    """Stop watching (``%unload_ext``); the process itself keeps running."""
    if _watchdog_stop is not None:
        _watchdog_stop.set()
