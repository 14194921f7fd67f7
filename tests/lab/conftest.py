"""The Models panel's server routes in a real Jupyter server started in this process
(pytest-jupyter's ``jp_serverapp``), reached over loopback HTTP with ``jp_fetch``.

pytest-jupyter's fixtures are imported here rather than registered as a plugin for the whole
run: some of them are autouse (a fresh event loop and a ``ServerApp`` clean-up around every
test), which only the tests in this folder should pay for.
"""

from __future__ import annotations

from typing import Any

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F403


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    """The server with the kernel-magics extension enabled, as the wheel's config file does."""
    return {"ServerApp": {"jpserver_extensions": {"kernel_magics.lab": True}}}
