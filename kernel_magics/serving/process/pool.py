"""The supervisor's worker processes: spawning, watching, respawning (reloaded from the live
mirror), and the ``WorkerPool`` operations transitions run on them over each worker's unix
control socket (``/_control/*``, see ``control/worker_routes.py``).

No torch here: the supervisor stays light.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from kernel_magics.config import Settings
from kernel_magics.records import ModelSpec
from kernel_magics.serving.control.transitions import History, LiveModel, Reply
from kernel_magics.serving.process import ipc

log = logging.getLogger("kernel_magics.serving.supervisor")
LOAD_TIMEOUT = 600.0  # a load warms the model too; big models take a while
_READY_TIMEOUT = 180.0
_QUICK_DEATH_S = 10.0  # a worker dying sooner than this after its start backs off


class Worker:
    """One worker process and what the supervisor knows about it."""

    def __init__(self, index: int, control_path: str):
        self.index = index
        self.control = control_path
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.spawned_at = 0.0
        self.quick_deaths = 0


class WorkerProcesses:
    """Implements ``control.transitions.WorkerPool``. Runs on the supervisor's loop;
    ``on_change`` is called whenever a worker's readiness changes (the state file follows)."""

    log = log

    def __init__(
        self,
        settings: Settings,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[], None],
    ):
        self.settings = settings
        self.loop = loop
        self.on_change = on_change
        self.workers = [
            Worker(i, str(settings.run_dir / f"worker-{i}.sock"))
            for i in range(max(1, settings.workers))
        ]
        self.live: dict[str, LiveModel] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.stopping = False
        self.env: dict[str, str] = {}
        self.sock: socket.socket | None = None

    # -- WorkerPool ---------------------------------------------------------------------------
    def ready_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.ready]

    def lock(self, name: str) -> asyncio.Lock:
        lock = self.locks.get(name)
        if lock is None:
            lock = self.locks[name] = asyncio.Lock()
        return lock

    async def load(self, workers: Sequence[Worker], spec: ModelSpec) -> list[Reply]:
        return await self._each(workers, "/_control/load", spec.to_wire(), LOAD_TIMEOUT)

    async def discard(
        self, workers: Sequence[Worker], name: str, version: int | None
    ) -> list[Reply]:
        return await self._each(workers, "/_control/discard", {"name": name, "version": version})

    async def activate(
        self, workers: Sequence[Worker], name: str, version: int, history: History
    ) -> list[Reply]:
        body = {"name": name, "version": version, "history": [e.to_wire() for e in history]}
        return await self._each(workers, "/_control/activate", body)

    async def unload(self, workers: Sequence[Worker], name: str, history: History) -> list[Reply]:
        body = {"name": name, "history": [e.to_wire() for e in history]}
        return await self._each(workers, "/_control/unload", body)

    async def canary(
        self,
        workers: Sequence[Worker],
        name: str,
        version: int | None,
        percent: int,
        history: History,
        analyze: bool = False,
    ) -> list[Reply]:
        body = {
            "name": name,
            "version": version,
            "percent": percent,
            "history": [e.to_wire() for e in history],
            "analyze": analyze,
        }
        return await self._each(workers, "/_control/canary", body)

    async def arms(self, w: Worker) -> dict[str, Any]:
        """What the judged canaries' arms answered in worker ``w`` since the last call (empty
        if it does not answer: those answers are then lost to the judge, never counted twice)."""
        reply = await self.call(w, "/_control/arms", timeout=10.0)
        return reply.body if reply.ok else {}

    async def _each(
        self, workers: Sequence[Worker], target: str, body: Any, timeout: float = 30.0
    ) -> list[Reply]:
        return list(await asyncio.gather(*(self.call(w, target, body, timeout) for w in workers)))

    async def call(self, w: Worker, target: str, body: Any = None, timeout: float = 30.0) -> Reply:
        """One control call; a worker that does not answer is a 503 reply."""
        try:
            status, answer = await ipc.request_json(w.control, "POST", target, body, timeout)
        except (ConnectionError, TimeoutError, OSError) as err:
            why = f"worker {w.index} did not answer ({type(err).__name__})"
            status, answer = 503, {"error": why}
        return Reply(w.index, status, answer)

    # -- restoring what is live ---------------------------------------------------------------
    async def restore(self, name: str, workers: Sequence[Worker]) -> None:
        """Load and activate the live version of ``name`` in ``workers`` (a start, a respawn)."""
        async with self.lock(name):
            live = self.live.get(name)
            if live is None:
                return
            spec = live.spec
            for w in workers:
                (loaded,) = await self.load([w], spec)
                if not loaded.ok:
                    log.error("restoring %s v%s failed: %s", name, spec.version, loaded.error)
                    continue
                await self.activate([w], name, spec.version, live.history)
                canary = live.canary
                if canary is not None:  # the split survives a restart and a respawn
                    (loaded,) = await self.load([w], canary)
                    if loaded.ok:
                        await self.canary(
                            [w],
                            name,
                            canary.version,
                            live.canary_percent,
                            live.history,
                            live.canary_rule is not None,
                        )
                    else:
                        log.error("restoring the canary %s v%s failed", name, canary.version)
            log.info("restored %s v%s", name, spec.version)

    async def restore_all(self, workers: Sequence[Worker]) -> None:
        for name in sorted(self.live):
            await self.restore(name, workers)

    # -- processes ----------------------------------------------------------------------------
    def spawn(self, w: Worker) -> None:
        assert self.sock is not None
        fd = self.sock.fileno()
        cmd = [sys.executable, "-m", "kernel_magics.serving.process.worker", "--fd", str(fd)]
        cmd += ["--control", w.control, "--index", str(w.index)]
        w.proc = subprocess.Popen(cmd, pass_fds=(fd,), env=self.env, stdin=subprocess.DEVNULL)
        w.spawned_at = time.monotonic()
        w.ready = False
        proc = w.proc
        threading.Thread(target=self._watch, args=(w, proc), daemon=True).start()
        log.info("worker %d started (pid %d)", w.index, proc.pid)

    def _watch(self, w: Worker, proc: subprocess.Popen) -> None:
        proc.wait()
        with contextlib.suppress(RuntimeError):  # loop closed at shutdown
            self.loop.call_soon_threadsafe(self._exited, w, proc)

    def _exited(self, w: Worker, proc: subprocess.Popen) -> None:
        if self.stopping or w.proc is not proc:
            log.info("worker %d (pid %d) exited with %s", w.index, proc.pid, proc.returncode)
            return
        log.error(
            "worker %d (pid %d) exited with %s; respawning", w.index, proc.pid, proc.returncode
        )
        w.ready = False
        folder = self.env.get("PROMETHEUS_MULTIPROC_DIR")
        if folder:
            with contextlib.suppress(Exception):
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(proc.pid, folder)
        self.on_change()
        self.loop.create_task(self._respawn(w))

    async def _respawn(self, w: Worker) -> None:
        if time.monotonic() - w.spawned_at < _QUICK_DEATH_S:
            w.quick_deaths += 1
            delay = min(30.0, 0.25 * 2**w.quick_deaths)
            log.warning("worker %d keeps dying; waiting %.1f s", w.index, delay)
            await asyncio.sleep(delay)
        else:
            w.quick_deaths = 0
        if self.stopping:
            return
        started = time.perf_counter()
        self.spawn(w)
        proc = w.proc
        if not await self.wait_ready(w) or w.proc is not proc:
            return  # its exit is handled by _exited
        await self.restore_all([w])
        if not await self.serve(w):
            return
        w.ready = True
        self.on_change()
        log.info("worker %d back in %.2f s", w.index, time.perf_counter() - started)

    async def wait_ready(self, w: Worker) -> bool:
        """Wait until the worker answers on its control socket (it imported torch)."""
        deadline = time.monotonic() + _READY_TIMEOUT
        proc = w.proc
        while time.monotonic() < deadline:
            if proc is None or proc.poll() is not None or self.stopping:
                return False
            try:
                status, _ = await ipc.request(w.control, "GET", "/_control/state", timeout=2.0)
                if status == 200:
                    return True
            except (ConnectionError, TimeoutError, OSError):
                pass
            await asyncio.sleep(0.05)
        log.error("worker %d did not become ready in %.0f s", w.index, _READY_TIMEOUT)
        if proc is not None:
            proc.kill()
        return False

    async def serve(self, w: Worker) -> bool:
        """Let the worker accept on the public socket (after its models are restored)."""
        reply = await self.call(w, "/_control/serve")
        if not reply.ok:
            log.error("worker %d cannot serve: %s", w.index, reply.error)
        return reply.ok

    async def stop(self) -> None:
        """TERM every worker, KILL what is left after 5 s."""
        self.stopping = True
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        deadline = time.monotonic() + 5
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
