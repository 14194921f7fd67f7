"""The built-in inference process seen from the kernel: find it, start it, stop it, read its log.

No torch, no mlflow. The process writes ``home/server.json`` (url, pid, workers, status); any
kernel or CLI reattaches through that file without restarting anything. A state file whose
supervisor is gone means it died without its clean stop (which removes the file): the next
call, or the extension's watchdog, brings it back from the store on the same port.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from kernel_magics.config import PREFERRED_PORT_ENV, Settings
from kernel_magics.errors import ServiceUnavailable
from kernel_magics.serving.files import PRIVATE_UMASK, open_private_append, private_home
from kernel_magics.serving.process import ipc
from kernel_magics.serving.process.pids import pid_alive

RESTARTING = "inference process is restarting; retry in a few seconds"


class LocalProcess:
    """Start, stop and discovery of the inference process of one home folder."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._proc: subprocess.Popen | None = None
        self._restarter: threading.Thread | None = None

    # -- discovery ------------------------------------------------------------------------------
    def state(self) -> dict | None:
        """The state file of a supervisor that is alive, else None."""
        try:
            state = json.loads(self.settings.state_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or not pid_alive(int(state.get("pid") or 0)):
            return None
        return state

    @property
    def url(self) -> str | None:
        state = self.state()
        return state.get("url") if state else None

    def endpoint(self) -> str:
        """The URL requests go to now; ``ServiceUnavailable`` while none answers (and, after a
        crash, a restart from the store begins in the background)."""
        state = self.state()
        if state is None:
            if self.restarting() or self.crashed():
                self.restart_in_background()
                raise ServiceUnavailable(RESTARTING)
            raise ServiceUnavailable("the inference process is not running; start it first")
        if state.get("status") != "ready":
            raise ServiceUnavailable(RESTARTING)
        return str(state["url"])

    def token(self) -> str:
        try:
            token = self.settings.token_file.read_text().strip()
        except OSError:
            raise ServiceUnavailable(
                f"no API token yet at {self.settings.token_file}: start the inference process"
            ) from None
        if not token:
            raise ServiceUnavailable(f"the token file {self.settings.token_file} is empty")
        return token

    def is_ready(self) -> bool:
        """A process serves this home and answers (a state-file read and one ping)."""
        state = self.state()
        return bool(state and state.get("status") == "ready" and _ping(state["url"]))

    def crashed(self) -> bool:
        """A state file whose supervisor is gone: it died without its clean stop (SIGKILL, the
        OOM killer); its workers die with it."""
        try:
            state = json.loads(self.settings.state_file.read_text())
            return not pid_alive(int(state.get("pid") or 0))
        except (OSError, ValueError, TypeError, AttributeError):
            return False

    def restarting(self) -> bool:
        return self._restarter is not None and self._restarter.is_alive()

    # -- start ----------------------------------------------------------------------------------
    def ensure_running(self, timeout: float = 60, check: Callable[[], object] | None = None) -> str:
        """The URL of a ready process, started if needed. A start costs ≈3 s of imports, so
        ``check`` (the caller's validation against the store) runs meanwhile: an unknown model
        fails at once instead of after the start."""
        if self.is_ready():
            if check is not None:
                check()
            return self.url or ""
        if check is None:
            return self._ensure_running(timeout)
        starting: concurrent.futures.Future[str] = concurrent.futures.Future()

        def start() -> None:
            try:
                starting.set_result(self._ensure_running(timeout))
            except BaseException as err:
                starting.set_exception(err)

        threading.Thread(target=start, name="kernel-magics-start", daemon=True).start()
        check()
        return starting.result()

    def _ensure_running(self, timeout: float) -> str:
        if self.is_ready():
            return self.url or ""
        from filelock import FileLock, Timeout

        self._make_lock_dir()
        try:
            with FileLock(self._start_lock, timeout=timeout):
                state = self.state()  # someone may have started it while we waited
                if state and self._wait_ready(state["pid"], min(timeout, 30)):
                    return self.url or ""
                return self._start(None, timeout)
        except Timeout:
            raise ServiceUnavailable("another process is starting the inference process") from None

    def start(self, workers: int | None = None) -> str:
        """Start with ``workers`` worker processes (a running one with another count restarts)."""
        state = self.state()
        if state and (workers is None or len(state.get("workers") or []) == workers):
            return self.ensure_running()
        if state:
            self.stop()
        return self._start(workers, 60)

    def restart_in_background(self) -> None:
        """Bring a crashed process back from the store (it restores every live version) while
        callers get "restarting"; the start lock makes concurrent callers start one."""
        if self.restarting():
            return

        def run() -> None:
            with contextlib.suppress(Exception):
                self.ensure_running()

        self._restarter = threading.Thread(target=run, name="kernel-magics-restart", daemon=True)
        self._restarter.start()

    def _start(self, workers: int | None, timeout: float) -> str:
        s = self.settings if workers is None else self.settings.replace(workers=workers)
        s.check_bind()
        private_home(s.home)
        try:
            stale = json.loads(s.state_file.read_text())
        except (OSError, ValueError):
            stale = {}
        with contextlib.suppress(FileNotFoundError):
            s.state_file.unlink()  # stale: its process is gone
        env = {**os.environ, **s.as_env()}
        if s.port == 0 and isinstance(stale, dict) and isinstance(stale.get("port"), int):
            # a restart after a crash keeps the URL that scripts and dashboards already use
            env[PREFERRED_PORT_ENV] = str(stale["port"])
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.reap()
        with os.fdopen(open_private_append(s.log_file), "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "kernel_magics.serving"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
                umask=PRIVATE_UMASK,
            )
        if not self._wait_ready(self._proc.pid, timeout):
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
                why = f"did not become ready within {timeout:.0f} s"
            else:
                why = f"exited with code {self._proc.returncode}"
            tail = self.logs(8).strip().replace("\n", " | ")
            raise ServiceUnavailable(f"the inference process {why}: {tail[-600:]}")
        return self.url or ""

    def _wait_ready(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid and self._proc.poll() is not None:
                return False
            if not pid_alive(pid):
                return False
            state = self.state()
            if state and state.get("pid") == pid and state.get("status") == "ready":
                return True
            time.sleep(0.05)
        return False

    # -- stop -----------------------------------------------------------------------------------
    def stop(self, timeout: float = 10) -> bool:
        """Stop the process of this home (clean shutdown, then TERM, then KILL); False if none
        was running."""
        self.wait_for_start(timeout=60)
        state = self.state()
        if state is None:
            self.reap()
            return False
        pid = int(state["pid"])
        with contextlib.suppress(OSError, http.client.HTTPException):
            ipc.request_sync(str(self.settings.control_socket), "POST", "/shutdown", timeout=5)
        if not self._wait_exit(pid, timeout / 2):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
            if not self._wait_exit(pid, timeout / 2):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
                self._wait_exit(pid, 2)
        self.reap()
        return True

    def reap(self) -> None:
        """Collect our own child once it has exited (stopped here or from a terminal), so it
        does not stay a ``<defunct>`` entry for the kernel's lifetime."""
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    def wait_for_start(self, timeout: float) -> None:
        """A start under way (another thread or kernel) holds the start lock until its state
        file is written; stopping before that would miss the process it is starting."""
        from filelock import FileLock, Timeout

        self._make_lock_dir()
        with contextlib.suppress(Timeout), FileLock(self._start_lock, timeout=timeout):
            pass

    def _make_lock_dir(self) -> None:
        private_home(self.settings.home)  # the home is created private, before anything in it
        self.settings.lock_dir.mkdir(parents=True, exist_ok=True)

    @property
    def _start_lock(self) -> str:
        return str(self.settings.lock_dir / "server.lock")

    def _wait_exit(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                self._proc.poll()  # reap our own child so it does not linger as a zombie
            if not pid_alive(pid):
                return True
            time.sleep(0.05)
        return not pid_alive(pid)

    # -- control plane and log ------------------------------------------------------------------
    def settle(self, name: str, timeout: float = 30) -> None:
        """Wait until a running process has written every transition of ``name`` to the store
        (it answers a deploy before its history write). No process: nothing to wait for."""
        if self.state() is None:
            return
        with contextlib.suppress(OSError, http.client.HTTPException):
            path = str(self.settings.control_socket)
            ipc.request_sync(path, "POST", f"/settle/{name}", timeout=timeout)

    def logs(self, lines: int = 50) -> str:
        try:
            with open(self.settings.log_file, "rb") as fh:
                fh.seek(0, 2)
                size = fh.tell()
                fh.seek(max(0, size - 256 * max(lines, 1)))
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _ping(url: str) -> bool:
    try:
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=2)
        conn.request("GET", "/ping")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False
