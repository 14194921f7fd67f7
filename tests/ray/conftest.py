"""One real local Ray head for the whole session, in this process's own network namespace (Ray
binds every interface it finds; in a namespace holding only loopback it can reach nothing
else). ``make test-ray`` runs pytest under ``unshare -n``; the head is started as a child in a
process group of its own and stopped by that group at the end."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit.net import free_port
from kit.ray_head import RayHead

from kernel_magics.serving.process.cleanup import alive

RAY = Path(sys.executable).with_name("ray")


def _own_network_namespace() -> bool:
    """Only loopback in sight: ``unshare -n`` made a namespace of its own."""
    import socket

    return [name for _, name in socket.if_nameindex()] == ["lo"]


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    if not _own_network_namespace():
        raise RuntimeError(
            "tests/ray need a network namespace of their own (Ray binds every interface): "
            "run them with `make test-ray`"
        )
    # Ray's unix socket paths must stay short: a short folder under /tmp.
    temp_dir = tempfile.mkdtemp(prefix="kmray-", dir="/tmp")
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    args = [str(RAY), "start", "--head", "--block", "--num-cpus", "2", "--port", str(port)]
    args += ["--include-dashboard=false", "--disable-usage-stats", "--temp-dir", temp_dir]
    log = open(Path(temp_dir) / "head.log", "wb")  # noqa: SIM115 (closed at the end)
    head = subprocess.Popen(
        args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_ready(head, temp_dir)
        yield RayHead(f"127.0.0.1:{port}", free_port(), temp_dir)
    finally:
        import ray

        ray.shutdown()
        _stop_group(head.pid)
        head.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_ready(head: subprocess.Popen, temp_dir: str, timeout: float = 120) -> None:
    log = Path(temp_dir) / "head.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited: {log.read_text()[-2000:]}")
        if "Ray runtime started" in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the Ray head did not start in {timeout} s")


def _stop_group(pgid: int, grace: float = 20) -> None:
    """SIGTERM the head's process group (``ray start --block`` then stops what it started),
    SIGKILL whatever of the group is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.2)
        if not _group_alive(pgid):
            return


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid and alive(int(entry.name)):
                    return True
            except (ProcessLookupError, PermissionError):
                continue
    return False
