"""The supervisor of the inference process: ``python -m kernel_magics.serving``.

It owns the public listening socket for its whole life and hands the fd to its workers
(``pool.py``), so the URL never changes when a worker is respawned. It never imports torch (it
stays light); mlflow is imported once, in a background thread, inside ``Lifecycle``. Management
calls arrive on its own unix socket (workers relay them) and run as ``control/transitions.py``
says, under one lock per model name. It writes ``home/server.json``, through which any kernel
reattaches.
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
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import orjson

from kernel_magics.config import PREFERRED_PORT_ENV, Settings, load_settings
from kernel_magics.errors import KernelMagicsError, clip
from kernel_magics.serving.control.canary_watch import CanaryWatch
from kernel_magics.serving.control.transitions import LiveModel, run_transition
from kernel_magics.serving.files import PRIVATE_UMASK, private_home, write_atomic
from kernel_magics.serving.process import ipc
from kernel_magics.serving.process.pool import WorkerProcesses
from kernel_magics.serving.request.bodies import describe_error, error_body
from kernel_magics.serving.request.connections import raise_open_files_limit
from kernel_magics.serving.request.protocol import Connection, Request
from kernel_magics.serving.tokens import ensure_home_token

if TYPE_CHECKING:
    from kernel_magics.serving.control.lifecycle import Lifecycle

log = logging.getLogger("kernel_magics.serving.supervisor")


class Supervisor:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self.pool = WorkerProcesses(settings, self.loop, on_change=self._write_state)
        self.stop_event = asyncio.Event()
        self.started_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        self.sock: socket.socket | None = None
        self.port = 0
        # (lifecycle, what the store says is live), set by the background import of mlflow
        self._lifecycle: concurrent.futures.Future = concurrent.futures.Future()

    # -- start-up -----------------------------------------------------------------------------
    async def run(self) -> int:
        s = self.settings
        private_home(s.home)
        for folder in (s.run_dir, s.log_file.parent):
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
        pool = self.pool
        pool.sock = self.sock
        pool.env = {**os.environ, **s.as_env()}
        if len(pool.workers) > 1:  # prometheus multiprocess mode: see request/metrics.py
            folder = s.run_dir / "metrics"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            pool.env["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
        else:
            pool.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stop_event.set)
        try:
            started = time.perf_counter()
            for w in pool.workers:
                pool.spawn(w)
            ok = await asyncio.gather(*(pool.wait_ready(w) for w in pool.workers))
            if not all(ok):
                log.error("a worker failed to start; see the lines above")
                return 1
            await self._restore_from_store()
            for w in pool.workers:
                w.ready = await pool.serve(w)
            if not all(w.ready for w in pool.workers):
                return 1
            self._write_state()
            log.info("ready at %s in %.2f s", self.url, time.perf_counter() - started)
            judge = self.loop.create_task(CanaryWatch(pool, self.lifecycle, s).run())
            await self.stop_event.wait()
            judge.cancel()
        finally:
            await self._shutdown(server)
        return 0

    async def _other_running(self) -> bool:
        path = self.settings.control_socket
        if not path.exists():
            return False
        try:
            status, _ = await ipc.request(str(path), "GET", "/state", timeout=2.0)
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
            from kernel_magics.serving.control.lifecycle import Lifecycle

            lifecycle = Lifecycle(self.settings)
            live: dict[str, LiveModel] = {}
            try:
                for spec in lifecycle.live_specs():
                    canary, percent, rule = lifecycle.canary_spec(spec.name) or (None, 0, None)
                    history = lifecycle.history(spec.name)
                    live[spec.name] = LiveModel(spec, history, canary, percent, rule)
            except Exception as err:
                log.error("could not read the live models from the store: %s", err)
            self._lifecycle.set_result((lifecycle, live))
        except Exception as err:
            log.exception("the model store is not usable")
            self._lifecycle.set_exception(err)

    async def lifecycle(self) -> Lifecycle:
        lifecycle, _ = await asyncio.wrap_future(self._lifecycle)
        return lifecycle  # type: ignore[no-any-return]

    async def _restore_from_store(self) -> None:
        try:
            _, live = await asyncio.wrap_future(self._lifecycle)
        except Exception:
            return
        self.pool.live.update(live)
        await self.pool.restore_all(self.pool.workers)

    def _write_state(self) -> None:
        if self.pool.stopping:
            return
        # "restarting" only while no worker serves: with several workers the others keep
        # answering while one is respawned ("workers_ready" tells the difference).
        workers = self.pool.workers
        serving = sum(w.ready for w in workers)
        pids = [w.proc.pid for w in workers if w.proc is not None]
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

    # -- the supervisor's own routes (unix socket) --------------------------------------------
    def handle(self, req: Request, conn: Connection) -> None:
        path = req.path
        if path.startswith(b"/v1/models/"):
            name, _, action = path[11:].decode("latin-1").partition("/")
            if action not in ("deploy", "rollback", "undeploy", "promote"):
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
                    for w in self.pool.workers
                ],
                "live": {name: live.spec.version for name, live in self.pool.live.items()},
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
            await run_transition(self.pool, self.lifecycle, name, action, req.body, answer)
        except Exception as err:  # never leave a relayed call unanswered
            log.exception("%s %s failed", action, clip(name))
            if not answered:
                answer(503, {"error": f"{action} failed: {describe_error(err)}"})

    async def _settle(self, req: Request, conn: Connection, name: str) -> None:
        """Answer once no transition of ``name`` is running: its history write is then in the
        store (transitions answer before that write, see control/transitions.py)."""
        async with self.pool.lock(name):
            conn.send(200, b"{}", req=req)

    # -- stopping -----------------------------------------------------------------------------
    async def _shutdown(self, server: Any) -> None:
        await self.pool.stop()
        server.close()
        for path in (self.settings.state_file, self.settings.control_socket):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self.sock is not None:
            self.sock.close()
        log.info("stopped")


def main() -> int:
    # What this process and its workers write (server.json, metrics files, sockets, model
    # caches) is its owner's alone, whoever started it.
    os.umask(PRIVATE_UMASK)
    settings = load_settings()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s supervisor[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    raise_open_files_limit()  # the workers it starts inherit it
    runner: Callable[[Coroutine[Any, Any, int]], int]
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
