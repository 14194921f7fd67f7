"""kernel-magics: train, version, deploy, serve and roll back PyTorch models from a notebook.

``%load_ext kernel_magics`` registers the magics; ``kernel_magics.api`` is the Python API every
front end (magics, widgets, CLI, JupyterLab panel, papermill pipelines) calls.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# MLflow draws a "Downloading artifacts" bar into the cell each time a version is read back
# (every %train and %register does): noise the user cannot act on. Set before MLflow is
# imported; a user who wants the bar sets the variable to true.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def load_ipython_extension(ipython):
    from kernel_magics.magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython):
    from kernel_magics.magics import unload_ipython_extension as _unload

    _unload(ipython)
