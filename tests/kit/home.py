"""Clean-up of a test home: the inference process its tests started, and only that one."""

from __future__ import annotations

import contextlib

from kernel_magics import api
from kernel_magics.config import Settings
from kernel_magics.serving.process.cleanup import state_pids, stop_pids
from kernel_magics.targets.local import LocalTarget


def stop_inference_process(settings: Settings) -> None:
    """Stop what this home's tests started: politely through the API, then, as a last resort,
    the PIDs its state file named (and only those)."""
    # A start still under way (`%deploy nope` starts the process while the kernel checks the
    # name) holds the start lock until its state file is written: wait for it first.
    LocalTarget(settings).process.wait_for_start(timeout=90)
    pids = state_pids(settings.state_file)  # read first: a clean stop removes the file
    with contextlib.suppress(Exception):
        api.server_stop(settings=settings)
    stop_pids(pids)
