"""Explanations: per-feature attributions of a registered version's outputs, in the kernel.

- ``explain`` (``%explain NAME[@V] X``, ``api.explain``): Captum's Integrated Gradients on the
  version loaded exactly as the inference process serves it (``evaluation.loading``), so the
  request path of the inference process carries nothing for it;
- ``Explanation``: the record it returns (attributions shaped like the rows, the targets
  explained, the model's outputs, Captum's convergence delta).

Names are exported lazily: importing this package imports neither torch nor captum.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Explanation": "kernel_magics.explain.record",
    "explain": "kernel_magics.explain.attribute",
    "MAX_ROWS": "kernel_magics.explain.attribute",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
