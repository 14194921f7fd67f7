"""kernel-magics: train, version, deploy, serve and roll back PyTorch models from a notebook.

``%load_ext kernel_magics`` registers the magics; ``kernel_magics.api`` is the Python API every
front end (magics, widgets, CLI, JupyterLab panel, papermill pipelines) calls.
"""

from __future__ import annotations

__version__ = "0.1.0"


def load_ipython_extension(ipython):  # noqa: ANN001 - IPython's hook signature
    from kernel_magics.magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython):  # noqa: ANN001
    from kernel_magics.magics import unload_ipython_extension as _unload

    _unload(ipython)
