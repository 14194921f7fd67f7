"""The real ``mlflow models serve`` on a model folder, for the parity tests of ``/invocations``.

Started in its own session (uvicorn's workers go with its process group), ready once ``/ping``
answers, stopped by PID through ``kernel_magics.serving.process.cleanup`` like everything else
the tests start.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from kernel_magics.serving.process.cleanup import stop_pids
from kit.net import free_port


class MlflowServe:
    """``mlflow models serve -m PATH`` on a free loopback port; its output goes to ``log``."""

    def __init__(self, model_path: str, log: Path):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed by stop()
        port = self.url.rsplit(":", 1)[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_path,
             "--env-manager", "local", "-p", port, "-h", "127.0.0.1"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
            # uvicorn is started by name: the venv's bin must be on PATH
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        )  # fmt: skip

    def wait_ready(self, timeout: float = 90) -> str:
        """The URL once ``/ping`` answers 200; AssertionError (with its log) if it died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()[-2000:]
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/ping", timeout=1).status_code == 200:
                    return self.url
            time.sleep(0.2)
        raise AssertionError(f"mlflow models serve did not start in {timeout:.0f} s")

    def stop(self) -> None:
        stop_pids([self.proc.pid], grace=10, group=True, only_ours=False)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()
