"""The supervisor of the inference process: ``python -m kernel_magics.serving``.

It owns the public listening socket for its whole life and hands the fd to its workers, so the
URL never changes when a worker is respawned. It never imports torch (it stays light); mlflow is
imported once, in a background thread, inside ``Lifecycle``. Management calls arrive on the
control unix socket (workers relay them) and run under one lock per model name: plan (store) →
load+warm in every worker → commit (store) → activate in every worker. A failed load changes
nothing: the staged copies are discarded and the old version keeps serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as _dt
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from typing import Any

import orjson

from kernel_magics._files import write_atomic
from kernel_magics.config import PREFERRED_PORT_ENV, Settings, load_settings
from kernel_magics.errors import KernelMagicsError
from kernel_magics.serving import control
from kernel_magics.serving.protocol import Connection, Request, error_body
from kernel_magics.serving.tokens import ensure_home_token
from kernel_magics.serving.transitions import LOAD_TIMEOUT, run_transition

log = logging.getLogger("kernel_magics.serving.supervisor")
_READY_TIMEOUT = 180.0


class Worker:
    def __init__(self, index: int, control_path: str):
        self.index = index
        self.control = control_path
        self.proc: subprocess.Popen | None = None
        self.ready = False
        self.spawned_at = 0.0
        self.quick_deaths = 0


class Supervisor:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.workers = [
            Worker(i, str(settings.run_dir / f"worker-{i}.sock"))
            for i in range(max(1, settings.workers))
        ]
        self.locks: dict[str, asyncio.Lock] = {}
        self.live: dict[str, tuple[dict, list]] = {}  # name → (spec, history): mirror of the store
        self.stop_event = asyncio.Event()
        self.stopping = False
        self.started_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        self.sock: socket.socket | None = None
        self.port = 0
        self.env: dict[str, str] = {}
        self._lifecycle: concurrent.futures.Future = concurrent.futures.Future()

    # -- start-up -----------------------------------------------------------------------------
    async def run(self) -> int:
        s = self.settings
        for folder in (s.home, s.run_dir, s.log_file.parent):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(s.run_dir, 0o700)
        if await self._other_running():
            log.error("another inference process already serves %s", s.home)
            return 1
        try:
            s.check_bind()
        except KernelMagicsError as err:
            log.error("%s", err)
            return 1
        ensure_home_token(s)
        self._bind()
        with contextlib.suppress(FileNotFoundError):
            s.control_socket.unlink()
        server = await self.loop.create_unix_server(
            lambda: Connection(self.handle, 1 << 20), path=str(s.control_socket)
        )
        os.chmod(s.control_socket, 0o600)
        threading.Thread(target=self._init_lifecycle, name="lifecycle", daemon=True).start()
        self.env = {**os.environ, **s.as_env()}
        if len(self.workers) > 1:  # prometheus multiprocess mode: see metrics.py
            folder = s.run_dir / "metrics"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            self.env["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
        else:
            self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop_event.set)
        try:
            started = time.perf_counter()
            for w in self.workers:
                self._spawn(w)
            ok = await asyncio.gather(*(self._wait_ready(w) for w in self.workers))
            if not all(ok):
                log.error("a worker failed to start; see the lines above")
                return 1
            await self._restore_from_store()
            for w in self.workers:
                w.ready = await self._serve(w)
            if not all(w.ready for w in self.workers):
                return 1
            self._write_state()
            log.info("ready at %s in %.2f s", self.url, time.perf_counter() - started)
            await self.stop_event.wait()
        finally:
            await self._shutdown(server)
        return 0

    async def _other_running(self) -> bool:
        path = self.settings.control_socket
        if not path.exists():
            return False
        try:
            status, _ = await control.request(str(path), "GET", "/state", timeout=2.0)
            return status == 200
        except (ConnectionError, TimeoutError, OSError):
            return False

    def _bind(self) -> None:
        s = self.settings
        family = socket.AF_INET6 if ":" in s.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        preferred = os.environ.pop(PREFERRED_PORT_ENV, "")
        try:
            sock.bind((s.host, int(preferred) if preferred.isdigit() else s.port))
        except OSError:  # the old port was taken meanwhile: any free one
            sock.bind((s.host, s.port))
        sock.listen(1024)
        sock.set_inheritable(True)
        self.sock = sock
        self.port = sock.getsockname()[1]

    @property
    def url(self) -> str:
        host = self.settings.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def _init_lifecycle(self) -> None:
        """Import mlflow (≈2 s) off the loop, while the workers import torch."""
        try:
            from kernel_magics.lifecycle import Lifecycle

            lifecycle = Lifecycle(self.settings)
            live: dict[str, tuple[dict, list]] = {}
            try:
                for spec in lifecycle.live_specs():
                    live[spec.name] = (asdict(spec), lifecycle.history(spec.name))
            except Exception as err:
                log.error("could not read the live models from the store: %s", err)
            self._lifecycle.set_result((lifecycle, live))
        except Exception as err:
            log.exception("the model store is not usable")
            self._lifecycle.set_exception(err)

    async def lifecycle(self) -> Any:
        lifecycle, _ = await asyncio.wrap_future(self._lifecycle)
        return lifecycle

    async def _restore_from_store(self) -> None:
        try:
            _, live = await asyncio.wrap_future(self._lifecycle)
        except Exception:
            return
        self.live.update(live)
        for name in sorted(live):
            await self._restore(name, self.workers)

    async def _restore(self, name: str, workers: list[Worker]) -> None:
        async with self.lock(name):
            if name not in self.live:
                return
            spec, history = self.live[name]
            for w in workers:
                status, body = await self.call(w, "/_control/load", spec, LOAD_TIMEOUT)
                if status != 200:
                    log.error(
                        "restoring %s v%s failed: %s", name, spec["version"], body.get("error")
                    )
                    continue
                body = {"name": name, "version": spec["version"], "history": history}
                await self.call(w, "/_control/activate", body)
            log.info("restored %s v%s", name, spec["version"])

    # -- workers ------------------------------------------------------------------------------
    def _spawn(self, w: Worker) -> None:
        assert self.sock is not None
        fd = self.sock.fileno()
        cmd = [sys.executable, "-m", "kernel_magics.serving.worker", "--fd", str(fd)]
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
        self._write_state()
        self.loop.create_task(self._respawn(w))

    async def _respawn(self, w: Worker) -> None:
        if time.monotonic() - w.spawned_at < 10:
            w.quick_deaths += 1
            delay = min(30.0, 0.25 * 2**w.quick_deaths)
            log.warning("worker %d keeps dying; waiting %.1f s", w.index, delay)
            await asyncio.sleep(delay)
        else:
            w.quick_deaths = 0
        if self.stopping:
            return
        started = time.perf_counter()
        self._spawn(w)
        proc = w.proc
        if not await self._wait_ready(w) or w.proc is not proc:
            return  # its exit is handled by _exited
        for name in sorted(self.live):
            await self._restore(name, [w])
        if not await self._serve(w):
            return
        w.ready = True
        self._write_state()
        log.info("worker %d back in %.2f s", w.index, time.perf_counter() - started)

    async def _wait_ready(self, w: Worker) -> bool:
        deadline = time.monotonic() + _READY_TIMEOUT
        proc = w.proc
        while time.monotonic() < deadline:
            if proc is None or proc.poll() is not None or self.stopping:
                return False
            try:
                status, _ = await control.request(w.control, "GET", "/_control/state", timeout=2.0)
                if status == 200:
                    return True
            except (ConnectionError, TimeoutError, OSError):
                pass
            await asyncio.sleep(0.05)
        log.error("worker %d did not become ready in %.0f s", w.index, _READY_TIMEOUT)
        if proc is not None:
            proc.kill()
        return False

    async def _serve(self, w: Worker) -> bool:
        status, body = await self.call(w, "/_control/serve")
        if status != 200:
            log.error("worker %d cannot serve: %s", w.index, body.get("error"))
        return status == 200

    async def call(
        self, w: Worker, target: str, body: Any = None, timeout: float = 30.0
    ) -> tuple[int, dict]:
        try:
            return await control.request_json(w.control, "POST", target, body, timeout)
        except (ConnectionError, TimeoutError, OSError) as err:
            return 503, {"error": f"worker {w.index} did not answer ({type(err).__name__})"}

    def _write_state(self) -> None:
        if self.stopping:
            return
        # "restarting" only while no worker serves: with several workers the others keep
        # answering while one is respawned ("workers_ready" tells the difference).
        serving = sum(w.ready for w in self.workers)
        pids = [w.proc.pid for w in self.workers if w.proc is not None]
        state = {
            "url": self.url,
            "pid": os.getpid(),
            "port": self.port,
            "host": self.settings.host,
            "workers": pids,
            "worker_pids": pids,
            "status": "ready" if serving else "restarting",
            "workers_ready": serving,
            "started_at": self.started_at,
        }
        write_atomic(self.settings.state_file, json.dumps(state, indent=1))

    # -- control API --------------------------------------------------------------------------
    def handle(self, req: Request, conn: Connection) -> None:
        path = req.path
        if path.startswith(b"/v1/models/"):
            name, _, action = path[11:].decode("latin-1").partition("/")
            if action not in ("deploy", "rollback", "undeploy"):
                conn.send(404, error_body(f"no route {path.decode('latin-1')}"), req=req)
            elif req.method != b"POST":
                conn.send(405, error_body("use POST"), extra_headers=b"allow: POST\r\n", req=req)
            else:
                self.loop.create_task(self._manage_http(req, conn, name, action))
        elif path.startswith(b"/settle/") and req.method == b"POST":
            self.loop.create_task(self._settle(req, conn, path[8:].decode("latin-1")))
        elif path == b"/shutdown" and req.method == b"POST":
            conn.send(200, b'{"stopping": true}', req=req, keep_alive=False)
            self.loop.call_later(0.05, self.stop_event.set)
        elif path == b"/state" and req.method == b"GET":
            state = {
                "pid": os.getpid(),
                "url": self.url,
                "workers": [
                    {"index": w.index, "pid": w.proc.pid if w.proc else None, "ready": w.ready}
                    for w in self.workers
                ],
                "live": {name: spec["version"] for name, (spec, _) in self.live.items()},
            }
            conn.send(200, orjson.dumps(state), req=req)
        else:
            conn.send(
                404, error_body(f"no route {req.method.decode()} {path.decode('latin-1')}"), req=req
            )

    async def _manage_http(self, req: Request, conn: Connection, name: str, action: str) -> None:
        answered = False

        def answer(status: int, body: dict) -> None:
            nonlocal answered
            answered = True
            conn.send(status, orjson.dumps(body), req=req)

        try:
            await run_transition(self, name, action, req.body, answer)
        except Exception as err:  # never leave a relayed call unanswered
            log.exception("%s %s failed", action, name)
            if not answered:
                answer(503, {"error": f"{action} failed: {type(err).__name__}: {err}"[:500]})

    async def _settle(self, req: Request, conn: Connection, name: str) -> None:
        """Answer once no transition of ``name`` is running: its history write is then in the
        store (transitions answer before that write, see transitions.py)."""
        async with self.lock(name):
            conn.send(200, b"{}", req=req)

    def lock(self, name: str) -> asyncio.Lock:
        """Management of one model runs one call at a time (plan to history write)."""
        lock = self.locks.get(name)
        if lock is None:
            lock = self.locks[name] = asyncio.Lock()
        return lock

    # -- stopping -----------------------------------------------------------------------------
    async def _shutdown(self, server: Any) -> None:
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
        server.close()
        for path in (self.settings.state_file, self.settings.control_socket):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self.sock is not None:
            self.sock.close()
        log.info("stopped")


def main() -> int:
    settings = load_settings()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s supervisor[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run

    async def go() -> int:
        return await Supervisor(settings).run()

    try:
        return runner(go())
    except OSError as err:
        log.error("cannot start: %s", err)
        return 1
