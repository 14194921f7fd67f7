"""A real ``jupyter lab`` for the browser tests: started on a free loopback port with throwaway
Jupyter folders, reached over HTTP with its token, stopped by its PID.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from playwright.sync_api import Locator, Page

from kernel_magics.config import Settings
from kit.net import free_port

MODEL = "digits"  # the model the session's store holds (two versions, v2 live at the start)

# Hides JupyterLab's "news" popup, which would cover the page in screenshots.
NO_NEWS = {"fetchNews": "false", "checkForUpdates": False}
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
# Not "/": the panel and its routes must follow the server's base URL (JupyterHub serves
# single-user servers under /user/NAME/).
BASE_URL = "/km-lab/"
NOTIFICATION_SETTINGS = (
    "lab/user-settings/@jupyterlab/apputils-extension/notification.jupyterlab-settings"
)


def _stop_with_parent() -> None:
    """Runs in the child before ``exec``: Linux sends it SIGTERM when the test process dies,
    so a killed pytest run (timeout, SIGKILL) leaves no ``jupyter lab`` behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class LabServer:
    process: subprocess.Popen[bytes]
    url: str  # http://127.0.0.1:PORT/BASE/
    token: str
    root: Path  # the notebook folder the server shows
    log: Path

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"token {self.token}", **kwargs.pop("headers", {})}
        return requests.request(
            method, self.url + path.lstrip("/"), headers=headers, timeout=60, **kwargs
        )

    def page_url(self, workspace: str, path: str | None = None) -> str:
        """A lab page in its own workspace: a shared one would restore the last test's layout."""
        tree = f"/tree/{path}" if path else ""
        return f"{self.url}lab/workspaces/{workspace}{tree}?token={self.token}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited early; its log:\n{self.log_tail()}")
            with contextlib.suppress(requests.ConnectionError):
                if self.request("GET", "api/status").status_code == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"jupyter lab not ready after {timeout} s; its log:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 10.0) -> None:
        """Kernels first (a kernel holding the store must not be orphaned), then the server by
        its PID: TERM, and KILL after ``grace`` seconds."""
        if self.process.poll() is None:
            with contextlib.suppress(requests.RequestException):
                for kernel in self.request("GET", "api/kernels").json():
                    self.request("DELETE", f"api/kernels/{kernel['id']}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(grace)


@dataclass
class LabSession:
    server: LabServer
    settings: Settings  # the test home's, for checks through kernel_magics.api


def start_lab(base: Path, env: dict[str, str]) -> LabServer:
    """Start ``jupyter lab`` with Jupyter's config, data, runtime and IPython folders under
    ``base`` (extensions installed in ``sys.prefix`` are still found: that path does not move).
    Returns at once; call ``wait_ready``."""
    dirs = {
        name: base / name for name in ("config", "data", "runtime", "ipython", "notebooks", "logs")
    }
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    settings_file = dirs["config"] / NOTIFICATION_SETTINGS
    settings_file.parent.mkdir(parents=True, exist_ok=True)
    settings_file.write_text(json.dumps(NO_NEWS))

    token = secrets.token_hex(16)
    port = free_port()
    lab_env = {
        **env,
        "JUPYTER_CONFIG_DIR": str(dirs["config"]),
        "JUPYTER_DATA_DIR": str(dirs["data"]),
        "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
        "IPYTHONDIR": str(dirs["ipython"]),
        # the kernelspec says "python": make it this venv's interpreter
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    }
    log = dirs["logs"] / "jupyter-lab.log"
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        f"--ServerApp.base_url={BASE_URL}",
        "--ServerApp.port_retries=0",
        "--ServerApp.allow_root=True",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={dirs['notebooks']}",
        "--LabApp.expose_app_in_browser=True",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=lab_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_stop_with_parent,
        )
    url = f"http://127.0.0.1:{port}{BASE_URL}"
    return LabServer(process, url, token, dirs["notebooks"], log)


def open_lab(page: Page, server: LabServer, workspace: str, path: str | None = None) -> None:
    """Load a lab page and wait until JupyterLab has restored its layout (waiting for the
    splash screen to go passes too early)."""
    page.goto(server.page_url(workspace, path))
    page.wait_for_function("() => window.jupyterapp !== undefined")
    page.evaluate("() => window.jupyterapp.restored.then(() => true)")


KERNEL_IDLE_JS = """() => {
    const kernel = window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel;
    return kernel?.connectionStatus === 'connected' && kernel?.status === 'idle';
}"""


def open_notebook(page: Page, server: LabServer, workspace: str, path: str) -> None:
    """Open the notebook ``path`` (relative to the server's root) with its kernel and wait until
    that kernel is connected and idle: cells run before then get lost. The session starts
    while the page loads; the page joins it, as it joins a running kernel after a reload."""
    session = {"path": path, "type": "notebook", "kernel": {"name": "python3"}}
    server.request("POST", "api/sessions", json=session).raise_for_status()
    open_lab(page, server, workspace, path)
    page.wait_for_function(KERNEL_IDLE_JS, timeout=60_000)


def widen_left_area(page: Page, panel: Locator, width: int) -> None:
    """Drag the splitter right of the left sidebar panel to ``width`` pixels, as a user would."""
    panel_box = panel.bounding_box()
    assert panel_box is not None, "the panel is not shown"
    edge = panel_box["x"] + panel_box["width"]
    handles = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle")
    boxes = [b for b in (handles.nth(i).bounding_box() for i in range(handles.count())) if b]
    handle = min(boxes, key=lambda b: abs(b["x"] - edge))
    y = handle["y"] + handle["height"] / 2
    page.mouse.move(handle["x"] + handle["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(panel_box["x"] + width, y, steps=5)
    page.mouse.up()


# the bottom of an element's content: a sidebar panel is mostly empty below its last child
CONTENT_BOTTOM_JS = "node => Math.max(...[...node.children].map(c => c.offsetTop + c.offsetHeight))"


def save_screenshot(
    page: Page, folder: Path, name: str, publish: bool = False, only: Locator | None = None
) -> Path:
    """A screenshot in the test's folder: the page, or ``only`` down to the end of its content.
    ``publish`` also copies it to docs/images/ when KM_SCREENSHOTS=1 (how docs/dashboards.md's
    picture is refreshed)."""
    path = folder / f"{name}.png"
    if only is None:
        page.screenshot(path=str(path))
    else:
        box = only.bounding_box()
        assert box is not None, f"{name}: nothing to photograph"
        bottom = float(only.evaluate(CONTENT_BOTTOM_JS)) + 8
        page.screenshot(path=str(path), clip={**box, "height": min(box["height"], bottom)})
    if publish and os.environ.get("KM_SCREENSHOTS") == "1":
        docs = Path(__file__).resolve().parents[2] / "docs" / "images"
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, docs / f"{name}.png")
    return path
