"""Kernel-side client of the inference process: find or start it, manage models, predict.

Imports neither torch nor mlflow (numpy only when predicting). A second client in another
process (a new kernel) reattaches through the state file without restarting anything. Every
network call has a timeout; an unreachable or restarting process raises ``ServiceUnavailable``
instead of hanging.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kernel_magics.config import PREFERRED_PORT_ENV, Settings
from kernel_magics.errors import (
    DeployFailed,
    InvalidInput,
    KernelMagicsError,
    NotFound,
    ServiceUnavailable,
)
from kernel_magics.serving import control

if TYPE_CHECKING:
    import numpy as np

RESTARTING = "inference process is restarting; retry in a few seconds"
_NPY = "application/x-npy"
_MANAGE_TIMEOUT = 600.0
_ERRORS: dict[int, type[KernelMagicsError]] = {
    400: InvalidInput,
    401: InvalidInput,
    404: NotFound,
    405: InvalidInput,
    409: DeployFailed,
    413: InvalidInput,
    415: InvalidInput,
    503: ServiceUnavailable,
}


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a finished child we have not reaped yet)."""
    if pid <= 0:  # os.kill(0, ...) would address our whole process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class ServingClient:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._local = threading.local()  # one keep-alive connection per thread
        self._proc: subprocess.Popen | None = None
        self._token: str | None = None
        self._restarter: threading.Thread | None = None

    # -- discovery ------------------------------------------------------------------------------
    def _state(self) -> dict | None:
        try:
            state = json.loads(self.settings.state_file.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or not pid_alive(int(state.get("pid") or 0)):
            return None
        return state

    @property
    def url(self) -> str | None:
        state = self._state()
        return state.get("url") if state else None

    def token(self) -> str:
        if self._token is None:
            try:
                token = self.settings.token_file.read_text().strip()
            except OSError:
                raise ServiceUnavailable(
                    f"no API token yet at {self.settings.token_file}: start the inference process"
                ) from None
            self._token = token or None
            if not token:
                raise ServiceUnavailable(f"the token file {self.settings.token_file} is empty")
        return self._token

    def status(self) -> dict | None:
        """None if not running; else the state file merged with /health and /v1/models."""
        state = self._state()
        if state is None:
            return None
        out = {k: state.get(k) for k in ("url", "pid", "port", "workers", "status", "started_at")}
        out["models"] = {}
        out["usage"] = {}
        try:
            models = self._json("GET", "/v1/models", timeout=5)
            out["models"] = {m["name"]: m for m in models.get("models", [])}
            status, _, data = self.request("GET", "/metrics", timeout=5)
            if status == 200:
                out["usage"] = usage_from_text(data.decode())
        except ServiceUnavailable:
            out["status"] = "restarting"
        return out

    def _ping(self, url: str) -> bool:
        try:
            parts = urlsplit(url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
            conn.request("GET", "/ping")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    # -- lifecycle of the process -----------------------------------------------------------------
    def crashed(self) -> bool:
        """A state file whose supervisor is gone: it died without its clean stop, which removes
        the file (the supervisor itself SIGKILLed; its workers die with it)."""
        try:
            state = json.loads(self.settings.state_file.read_text())
            return not pid_alive(int(state.get("pid") or 0))
        except (OSError, ValueError, TypeError, AttributeError):
            return False

    def _restart_in_background(self) -> None:
        """Bring a crashed process back from the store (it restores every live version) while
        the caller gets "restarting"; the server lock makes concurrent callers start one."""
        if self._restarter is not None and self._restarter.is_alive():
            return

        def run() -> None:
            with contextlib.suppress(Exception):
                self.ensure_running()

        self._restarter = threading.Thread(target=run, name="kernel-magics-restart", daemon=True)
        self._restarter.start()

    def is_ready(self) -> bool:
        """A process serves this home and answers (a state-file read and one ping)."""
        state = self._state()
        return bool(state and state.get("status") == "ready" and self._ping(state["url"]))

    def ensure_running(self, timeout: float = 60) -> str:
        state = self._state()
        if state and state.get("status") == "ready" and self._ping(state["url"]):
            return state["url"]
        from filelock import FileLock, Timeout

        self.settings.lock_dir.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(self._start_lock, timeout=timeout):
                state = self._state()  # someone may have started it while we waited
                if state and self._wait_ready(state["pid"], min(timeout, 30)):
                    return self._state()["url"]  # type: ignore[index]
                return self._start(None, timeout)
        except Timeout:
            raise ServiceUnavailable("another process is starting the inference process") from None

    def start(self, workers: int | None = None) -> str:
        state = self._state()
        if state and (workers is None or len(state.get("workers") or []) == workers):
            return self.ensure_running()
        if state:
            self.stop()
        return self._start(workers, 60)

    def _start(self, workers: int | None, timeout: float) -> str:
        s = self.settings if workers is None else self.settings.replace(workers=workers)
        s.check_bind()
        s.log_file.parent.mkdir(parents=True, exist_ok=True)
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
        with open(s.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "kernel_magics.serving"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
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
        self._token = None
        return self.url or ""

    def _wait_ready(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid and self._proc.poll() is not None:
                return False
            if not pid_alive(pid):
                return False
            state = self._state()
            if state and state.get("pid") == pid and state.get("status") == "ready":
                return True
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = 10) -> bool:
        self._wait_for_start(timeout=60)
        state = self._state()
        if state is None:
            return False
        pid = int(state["pid"])
        with contextlib.suppress(OSError, http.client.HTTPException):
            control.request_sync(str(self.settings.control_socket), "POST", "/shutdown", timeout=5)
        if not self._wait_exit(pid, timeout / 2):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
            if not self._wait_exit(pid, timeout / 2):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
                self._wait_exit(pid, 2)
        self._close()
        return True

    def _wait_for_start(self, timeout: float) -> None:
        """A start under way (another thread or kernel) holds the server lock until its state
        file is written; stopping before that would miss the process it is starting."""
        from filelock import FileLock, Timeout

        self.settings.lock_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Timeout), FileLock(self._start_lock, timeout=timeout):
            pass

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

    def settle(self, name: str, timeout: float = 30) -> None:
        """Wait until a running inference process has written every transition of ``name`` to
        the store (it answers a deploy before its history write). No process: nothing to wait."""
        if self._state() is None:
            return
        with contextlib.suppress(OSError, http.client.HTTPException):
            path = str(self.settings.control_socket)
            control.request_sync(path, "POST", f"/settle/{name}", timeout=timeout)

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

    # -- HTTP -------------------------------------------------------------------------------------
    def _conn(self, timeout: float) -> http.client.HTTPConnection:
        state = self._state()
        if state is None:
            restarting = self._restarter is not None and self._restarter.is_alive()
            if restarting or self.crashed():
                self._restart_in_background()
                raise ServiceUnavailable(RESTARTING)
            raise ServiceUnavailable("the inference process is not running; start it first")
        if state.get("status") != "ready":
            raise ServiceUnavailable(RESTARTING)
        url = state["url"]
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "url", None) != url:
            self._close()
            parts = urlsplit(url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
            self._local.conn, self._local.url = conn, url
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with the token; retries once on a keep-alive connection the server closed."""
        timeout = timeout or self.settings.request_timeout_s
        hdrs = {"Authorization": f"Bearer {self.token()}", **(headers or {})}
        for attempt in (0, 1):
            conn = self._conn(timeout)
            try:
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self._close()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._close()
                if attempt:
                    raise ServiceUnavailable(RESTARTING) from None
            except (TimeoutError, OSError, http.client.HTTPException):
                self._close()
                raise ServiceUnavailable(RESTARTING) from None
        raise ServiceUnavailable(RESTARTING)

    def _json(
        self, method: str, path: str, payload: Any = None, timeout: float | None = None
    ) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        status, _, data = self.request(method, path, body, headers, timeout)
        return _check(status, data)

    # -- models -----------------------------------------------------------------------------------
    def deploy(self, name: str, ref: str | None = None, **options: Any) -> dict:
        payload = {"ref": ref, **{k: v for k, v in options.items() if v is not None}}
        return self._json("POST", f"/v1/models/{name}/deploy", payload, _MANAGE_TIMEOUT)

    def rollback(self, name: str, to: int | None = None) -> dict:
        return self._json("POST", f"/v1/models/{name}/rollback", {"to": to}, _MANAGE_TIMEOUT)

    def undeploy(self, name: str) -> dict:
        return self._json("POST", f"/v1/models/{name}/undeploy", {}, _MANAGE_TIMEOUT)

    def model(self, name: str) -> dict:
        return self._json("GET", f"/v1/models/{name}")

    def models(self) -> dict:
        return self._json("GET", "/v1/models")

    def predict(self, name: str, array: np.ndarray) -> tuple[np.ndarray, int]:
        """Outputs and the version that produced them, through the binary .npy body."""
        from kernel_magics.serving.codecs import npy_decode, npy_encode

        body = npy_encode(array)
        headers = {"Content-Type": _NPY, "Accept": _NPY}
        status, hdrs, data = self.request("POST", f"/v1/models/{name}:predict", body, headers)
        if status != 200:
            _check(status, data)
        return npy_decode(data).copy(), int(hdrs.get("x-model-version", 0))

    def invocations(self, name: str, payload: dict) -> dict:
        return self._json("POST", f"/v1/models/{name}/invocations", payload)


def _check(status: int, data: bytes) -> Any:
    try:
        doc = json.loads(data) if data else {}
    except ValueError:
        doc = {"error": data.decode(errors="replace")[:300]}
    if 200 <= status < 300:
        return doc
    message = doc.get("error") if isinstance(doc, dict) else None
    message = message or f"HTTP {status}"
    cls = _ERRORS.get(status, ServiceUnavailable if status >= 500 else InvalidInput)
    raise cls(message)


def usage_from_text(text: str) -> dict[str, dict[str, int]]:
    """``{token: {"requests", "rows"}}`` from the inference process's ``/metrics`` text."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, int]] = {}
    names = {"km_token_requests_total": "requests", "km_token_rows_total": "rows"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = names.get(sample.name)
            if key is not None:
                entry = out.setdefault(sample.labels.get("token", ""), {"requests": 0, "rows": 0})
                entry[key] += int(sample.value)
    return out
