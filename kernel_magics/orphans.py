"""Runs whose process is gone: a kernel killed mid-``%train``, a ``pipeline run`` killed with its
notebook's kernel. MLflow leaves such runs RUNNING forever, since only their own process could
end them.

Every run kernel-magics starts carries ``km.owner`` = "HOST PID START": the process that owns it,
with the process's start time (clock ticks since boot, from ``/proc``) so that a PID reused by
another process does not count as the owner still running. ``sweep`` marks RUNNING runs whose
owner on this host is gone KILLED (tag ``km.killed`` says why). Runs owned by another host are
left alone: their process cannot be checked from here.

The store sweeps once per process when it opens (two queries: the experiments, their RUNNING
runs); ``kernel-magics store doctor`` sweeps on demand and prints what it fixed.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kernel_magics.serving.process.pids import pid_alive

if TYPE_CHECKING:
    from kernel_magics.store import Store

log = logging.getLogger(__name__)

TAG_OWNER = "km.owner"
TAG_KILLED = "km.killed"


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot ("0" where /proc cannot say)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # fields after the command name (which may hold spaces); starttime is field 22
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def owner_tags() -> dict[str, str]:
    """The tag that names this process as a run's owner."""
    pid = os.getpid()
    return {TAG_OWNER: f"{socket.gethostname()} {pid} {_start_ticks(pid)}"}


def owner_gone(owner: str) -> bool:
    """True when ``owner`` (a ``km.owner`` value) names a process of this host that no longer
    runs; False while it runs, and for other hosts or values this cannot read."""
    parts = owner.split()
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid, started = int(parts[1]), parts[2]
    if not pid_alive(pid):
        return True
    now = _start_ticks(pid)
    return started != "0" and now != "0" and now != started  # the PID now names another process


@dataclass(frozen=True)
class Orphan:
    """A run marked KILLED because its process was gone."""

    run_id: str
    run_name: str
    experiment: str
    owner: str

    def line(self) -> str:
        host, pid, _ = self.owner.split()
        return (
            f"run {self.run_id} ({self.run_name}, experiment {self.experiment}) was RUNNING "
            f"but its process {pid} on {host} is gone: marked KILLED"
        )


def sweep(store: Store) -> list[Orphan]:
    """Mark every RUNNING run whose owner process on this host is gone KILLED; what it marked."""
    from mlflow.entities import RunTag, ViewType

    client = store.client
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        return []
    runs = client.search_runs(
        list(experiments),
        filter_string="attributes.status = 'RUNNING'",
        run_view_type=ViewType.ACTIVE_ONLY,
        max_results=5000,
    )
    swept = []
    for run in runs:
        owner = run.data.tags.get(TAG_OWNER, "")
        if not owner or not owner_gone(owner):
            continue
        why = f"its process ({owner}) was gone; found by a sweep from pid {os.getpid()}"
        with store.write_lock():
            client.log_batch(run.info.run_id, tags=[RunTag(TAG_KILLED, why)])
            client.set_terminated(run.info.run_id, "KILLED")
        swept.append(
            Orphan(
                run.info.run_id,
                run.info.run_name or "",
                experiments.get(run.info.experiment_id, run.info.experiment_id),
                owner,
            )
        )
    return swept


# Store URIs this process has swept: a store opens many times in a kernel, the sweep runs once.
_SWEPT: set[str] = set()


def sweep_once(store: Store) -> None:
    """``sweep_quietly`` the first time this process opens ``store``'s URI."""
    if store.uri in _SWEPT:
        return
    _SWEPT.add(store.uri)
    sweep_quietly(store)


def sweep_quietly(store: Store) -> None:
    """``sweep`` when the store opens: a failure is logged, never raised (opening the store
    must not fail because of it)."""
    try:
        for orphan in sweep(store):
            log.info("%s", orphan.line())
    except Exception as err:
        log.warning("could not check for runs left RUNNING by a killed process: %s", err)
