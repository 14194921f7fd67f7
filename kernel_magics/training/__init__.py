"""Training in the notebook kernel: ``TrainConfig`` says how, ``prepare_data`` checks and
splits, ``fit`` trains and reports through a ``Progress``.

Use ``from kernel_magics.training.fit import fit``: the function is deliberately not re-exported
here, because a package attribute ``fit`` would shadow the submodule of the same name (breaking
``import kernel_magics.training.fit as m`` and monkeypatching by dotted path). The other names
are re-exported lazily, so importing this package costs nothing until one is used. Nothing here
imports a front end: ``%load_ext kernel_magics`` registers the notebook widget as a
``Progress`` (``training.progress.register_progress``).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "TrainConfig": "kernel_magics.training.config",
    "Progress": "kernel_magics.training.progress",
    "NullProgress": "kernel_magics.training.progress",
    "TextProgress": "kernel_magics.training.progress",
    "make_progress": "kernel_magics.training.progress",
    "register_progress": "kernel_magics.training.progress",
    "PreparedData": "kernel_magics.training.data",
    "prepare_data": "kernel_magics.training.data",
    "EpochResult": "kernel_magics.training.fit",
    "FitResult": "kernel_magics.training.fit",
    "classification_metrics": "kernel_magics.training.metrics",
    "regression_metrics": "kernel_magics.training.metrics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
