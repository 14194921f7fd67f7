"""Ray Serve as a third server (``--ray``): the same registered MLP version deployed through
kernel-magics' ``ray`` serving target (``RayTarget``) on one local Ray head, measured on the same
scenarios as the built-in process in the same run.

Ray binds every interface it finds, so the whole benchmark runs in a network namespace holding
only loopback (``reexec_in_namespace``: ``unshare -n``, then ``ip link set lo up``); the built-in
process, ``mlflow models serve`` and wrk work on loopback there too. The head is started here, in
a process group of its own, with its own ``--temp-dir`` under the benchmark's temporary folder,
and stopped by that group (and by PID, any process left that runs from that folder) at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _http import free_port
from _load_tools import Loader
from _log import log
from _model import NAME, RequestBodies
from _ours import Ours, measure_served
from _procs import forget, spawn
from _swap import swap_under_load

from kernel_magics.serving.process.cleanup import alive

NETNS_ENV = "KM_BENCH_NETNS"  # set before the re-exec: a second one would loop
RAY_CPUS = 2  # logical CPUs the head offers its replicas (the machine's 2 cores)
HEAD_START_TIMEOUT_S = 90
HEAD_STOP_GRACE_S = 20


# -- the network namespace ------------------------------------------------------------------------
def own_network_namespace() -> bool:
    """Only loopback in sight: ``unshare -n`` made a namespace of its own."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def reexec_in_namespace(script: Path, argv: list[str]) -> None:
    """Unless already in a loopback-only namespace, replace this process with the same
    benchmark under ``unshare -n`` (loopback brought up first). Returns only when already in
    one; exits when it cannot get one."""
    if own_network_namespace():
        return
    unshare = shutil.which("unshare")
    if os.environ.get(NETNS_ENV) or unshare is None or shutil.which("ip") is None:
        sys.exit(
            "--ray needs a network namespace of its own (Ray binds every interface): "
            "`unshare -n` and `ip` (util-linux, iproute2) with the right to use them (root or "
            "user namespaces)"
        )
    os.environ[NETNS_ENV] = "1"
    cmd = [unshare, "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    cmd += [sys.executable, str(script), *argv]
    print(f"[bench] --ray: re-running in a network namespace: {' '.join(cmd)}", flush=True)
    os.execv(unshare, cmd)


# -- the head -------------------------------------------------------------------------------------
class RayHead:
    """One local Ray head (``ray start --head --block``) in its own process group."""

    def __init__(self, tmp: Path) -> None:
        self.temp_dir = tmp / "ray"  # short: Ray's unix socket paths must stay under 108 bytes
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self._log: Any = None

    def start(self) -> float:
        """Start the head; seconds until it said "Ray runtime started"."""
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        ray = Path(sys.executable).with_name("ray")
        cmd = [str(ray), "start", "--head", "--block", "--num-cpus", str(RAY_CPUS)]
        cmd += ["--port", str(self.port)]
        cmd += ["--include-dashboard=false", "--disable-usage-stats"]
        cmd += ["--temp-dir", str(self.temp_dir)]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        log_path = self.temp_dir / "head.log"
        self._log = log_path.open("wb")
        t0 = time.perf_counter()
        self.proc = spawn(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {text[-1500:]}")
            if "Ray runtime started" in text:
                return time.perf_counter() - t0
            time.sleep(0.1)
        raise RuntimeError(f"the Ray head did not start in {HEAD_START_TIMEOUT_S} s")

    def stop(self) -> None:
        """Disconnect this process, SIGTERM the head's group (``ray start --block`` stops what
        it started), SIGKILL what is left of it; then any process still running from the head's
        temp folder (only this head's processes name it), by PID."""
        if "ray" in sys.modules:
            with contextlib.suppress(Exception):
                sys.modules["ray"].shutdown()
        if self.proc is not None:
            pgid = self.proc.pid
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, sig)
                deadline = time.monotonic() + HEAD_STOP_GRACE_S
                while time.monotonic() < deadline and _group(pgid):
                    time.sleep(0.2)
                if not _group(pgid):
                    break
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            forget(self.proc)
            self.proc = None
        left = _running_from(str(self.temp_dir))
        if left:
            log(f"ray: PIDs {left} still ran from the head's folder; stopping them")
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None


def _pids() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]


def _group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    members = []
    for pid in _pids():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pgid and alive(pid):
                members.append(pid)
    return members


def _running_from(folder: str) -> list[int]:
    """Live processes (not this one) whose command line names ``folder``."""
    found = []
    for pid in _pids():
        if pid == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            if folder in cmdline and alive(pid):
                found.append(pid)
    return found


# -- Ray Serve through RayTarget ------------------------------------------------------------------
class RayServed(Ours):
    """The same driver as for the built-in process, with ``target = "ray"`` in its settings:
    every deploy, rollback and status goes through ``kernel_magics.api`` to ``RayTarget``.
    Ray's proxy has no bearer token (the target refuses ``server_token``)."""

    def read_token(self) -> str:
        return ""

    def stop(self) -> None:
        """Delete kernel-magics' applications from the cluster (the head is stopped apart)."""
        with contextlib.suppress(Exception):
            self.api.server_stop(settings=self.s)


def bench_ray(
    out: dict,
    settings: Any,
    bodies: RequestBodies,
    loader: Loader,
    tmp: Path,
    seconds: float,
    model: Any,
    swap_phase_s: float,
) -> None:
    """Head start, ``NAME@1`` deployed to Ray Serve → first 200, the answer checks, the load
    scenarios, the swap under load (deploy v2, roll back to v1); the head stopped at the end.

    Fills ``out`` as it goes, so a run cut short keeps what it measured."""
    head = RayHead(tmp)
    served: RayServed | None = None
    try:
        log("ray: starting a local Ray head")
        out["head_start_s"] = head.start()
        log(f"ray: head at {head.address} started in {out['head_start_s']:.1f} s")
        # as a user does: %config KernelMagics.target = "ray", .ray_address, .port
        ray_settings = dataclasses.replace(
            settings, target="ray", ray_address=head.address, port=free_port()
        )
        out["settings"] = {
            "ray_address": head.address,
            "proxy_port": ray_settings.port,
            "replicas": max(1, ray_settings.workers),
            "head_num_cpus": RAY_CPUS,
            **{k: getattr(ray_settings, k) for k in ("max_batch_size", "max_wait_ms")},
        }
        served = RayServed(ray_settings)
        log(f"ray: deploying {NAME}@1 through RayTarget (proxy on port {ray_settings.port})")
        out["deploy"] = served.deploy_to_first_200(f"{NAME}@1", bodies.content["ours_1"])
        port = out["deploy"]["port"]
        log(
            f"ray: deploy → first 200 in {out['deploy']['first_200_s']:.2f} s "
            f"(call {out['deploy']['deploy_call_s']:.2f} s)"
        )
        measure_served(out, served, port, bodies, loader, seconds, model, "ray")
        out["swap"] = swap_under_load(
            served, port, bodies.files["ours_1"], tmp, swap_phase_s, who="ray"
        )
    finally:
        if served is not None:
            served.stop()
        log("ray: stopping the head")
        t = time.perf_counter()
        head.stop()
        out["head_stop_s"] = time.perf_counter() - t
