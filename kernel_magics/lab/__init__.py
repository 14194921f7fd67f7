"""kernel-magics in JupyterLab: the Models panel's server side.

The Jupyter server loads this package as a server extension (enabled by the
``etc/jupyter/jupyter_server_config.d/kernel_magics.json`` file the wheel installs) and serves
the panel's REST routes from ``handlers``; the prebuilt front end (``extension/`` in the
repository, built into ``labextension/`` here) is installed as a JupyterLab extension under
``share/jupyter/labextensions/kernel-magics-lab``.
"""

from __future__ import annotations

from typing import Any

# the labextension's npm package name: its folder under share/jupyter/labextensions
LABEXTENSION_NAME = "kernel-magics-lab"


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": LABEXTENSION_NAME}]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "kernel_magics.lab"}]


def _load_jupyter_server_extension(server_app: Any) -> None:
    from kernel_magics.lab.handlers import setup_handlers

    routes = setup_handlers(server_app.web_app)
    server_app.log.info("kernel-magics: Models panel routes under %s", routes)
