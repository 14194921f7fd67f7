"""Training in the notebook kernel: ``prepare_data`` checks and splits, ``fit`` trains.

Names are re-exported lazily so ``import kernel_magics.training`` costs nothing until used
(and never imports ipywidgets: progress widgets load only when one is built).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "PreparedData": "kernel_magics.training.data",
    "prepare_data": "kernel_magics.training.data",
    "EpochResult": "kernel_magics.training.fit",
    "FitResult": "kernel_magics.training.fit",
    "fit": "kernel_magics.training.fit",
    "classification_metrics": "kernel_magics.training.metrics",
    "regression_metrics": "kernel_magics.training.metrics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
