"""A real ipykernel driven through jupyter_client, as JupyterLab drives one: the tests of what
arrives *while* a cell runs (queued cells, a Stop click) need it; an in-process shell cannot."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kit.children import clean_env

# A notebook's first cell: the extension loaded, the digits scaled to [0, 1]
DIGITS_SETUP = (
    "%load_ext kernel_magics\nimport numpy as np, torch.nn as nn\n"
    "from sklearn.datasets import load_digits\n"
    "X, y = load_digits(return_X_y=True); X = (X / 16).astype('float32')"
)


@contextlib.contextmanager
def ipykernel(home: Path, **settings: str) -> Iterator[Any]:
    """A started, ready kernel on ``home`` (no autostart; ``settings`` as KERNEL_MAGICS_* env);
    yields its client, shuts the kernel down at the end."""
    from jupyter_client import KernelManager

    env = clean_env(KERNEL_MAGICS_HOME=str(home), KERNEL_MAGICS_AUTOSTART="0", **settings)
    manager = KernelManager(kernel_name="python3")
    manager.start_kernel(env=env)
    client = manager.client()
    client.start_channels()
    try:
        client.wait_for_ready(60)
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def execute(client: Any, code: str, timeout: float = 120) -> str:
    """Run ``code`` and wait for its reply; its status ("ok", "error")."""
    msg_id = client.execute(code)
    while True:
        reply = client.get_shell_msg(timeout=timeout)
        if reply["parent_header"].get("msg_id") == msg_id:
            return str(reply["content"]["status"])
