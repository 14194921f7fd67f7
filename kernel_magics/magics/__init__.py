"""IPython front end: ``%load_ext kernel_magics`` registers every magic here.

Each module holds one ``@magics_class`` and the views of the records its magics return:
``lifecycle`` (``KernelMagics``: deploy, promote, rollback, undeploy, predict, models, history,
serve, and the ``%config KernelMagics.<option>`` traits every magic reads), ``training``
(``%train``, ``%register``), ``pipelines`` (``%pipeline``, ``%evaluate``, ``%compare``),
``optimize`` (``%optimize``), ``dashboards`` (``%monitor``), ``explain`` (``%explain``),
``quality`` (``%log``), ``drift`` (``%drift``).
``_args`` is what they share. The magics only parse, call ``kernel_magics.api`` and render.
"""

from __future__ import annotations

import sys
from typing import Any

from kernel_magics.magics import (
    dashboards,
    drift,
    explain,
    generative,
    lifecycle,
    optimize,
    pipelines,
    quality,
    registration,
    training,
)
from kernel_magics.magics._args import (
    register_views,
    split_args,
    tidy_help,
    unregister_magics,
    unregister_views,
    usage_errors,
)
from kernel_magics.magics.lifecycle import KernelMagics

__all__ = ["KernelMagics", "split_args", "usage_errors", "load_ipython_extension"]

# Magics classes besides KernelMagics (which is also a Configurable, registered first).
_FEATURES = (
    training,
    registration,
    pipelines,
    optimize,
    dashboards,
    explain,
    generative,
    quality,
    drift,
)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext kernel_magics``: register the magics, their %config traits and the views."""
    from kernel_magics.warmup import start_server, start_warmup
    from kernel_magics.widgets.progress import register as register_progress_widget

    magics = KernelMagics(shell=ipython)  # Magics.__init__ adds it to ipython.configurables
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)
    ipython.register_magics(magics)
    register_views(ipython, lifecycle.VIEWS)
    tidy_help(KernelMagics)
    for feature in _FEATURES:
        ipython.register_magics(feature.MAGICS(shell=ipython))
        register_views(ipython, feature.VIEWS)
        tidy_help(feature.MAGICS)
    register_progress_widget()
    settings = magics.settings()
    start_warmup(settings)
    if settings.autostart and settings.target == "local":
        start_server(settings)


def unload_ipython_extension(ipython: Any) -> None:
    from kernel_magics.warmup import stop_watchdog
    from kernel_magics.widgets.progress import unregister as unregister_progress_widget

    stop_watchdog()
    if "kernel_magics.widgets.monitor" in sys.modules:  # their timers end with the extension
        sys.modules["kernel_magics.widgets.monitor"].ServiceMonitor.stop_all()
    unregister_progress_widget()
    ipython.configurables[:] = [c for c in ipython.configurables if not isinstance(c, KernelMagics)]
    unregister_magics(ipython, KernelMagics)
    unregister_views(ipython, lifecycle.VIEWS)
    for feature in _FEATURES:
        unregister_magics(ipython, feature.MAGICS)
        unregister_views(ipython, feature.VIEWS)
