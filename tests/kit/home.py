"""A test home: its store's tables made in advance; clean-up of the inference process its
tests started, and only that one."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

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


def seed_store(home: Path, empty_store: Path) -> None:
    """Give ``home`` a copy of an embedded store whose tables exist (made once per session):
    what the home's first store opening would have made, minus MLflow's migrations. The home
    and the database are private, as kernel-magics makes them."""
    os.chmod(home, 0o700)
    db = home / "mlflow.db"
    shutil.copyfile(empty_store, db)
    os.chmod(db, 0o600)
