"""Evaluating and comparing registered versions in the kernel.

- ``evaluate`` (``%evaluate NAME[@V] --data X Y``): metrics on held-out data, logged to the
  version (an evaluation run and ``km.eval.*`` tags);
- ``cross_validate`` (``--cv K --model EXPR``): K-fold cross-validation of a version's recipe;
- ``compare`` (``%compare NAME V1 V2``): versions side by side;
- ``decide`` (promotion): should a candidate replace the live version?

Names are exported lazily: importing this package imports neither torch nor scikit-learn.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "EvaluationResult": "kernel_magics.evaluation.evaluate",
    "evaluate": "kernel_magics.evaluation.evaluate",
    "CVResult": "kernel_magics.evaluation.cv",
    "cross_validate": "kernel_magics.evaluation.cv",
    "Comparison": "kernel_magics.evaluation.compare",
    "CompareRow": "kernel_magics.evaluation.compare",
    "compare": "kernel_magics.evaluation.compare",
    "Decision": "kernel_magics.evaluation.promotion",
    "decide": "kernel_magics.evaluation.promotion",
    "LoadedVersion": "kernel_magics.evaluation.loading",
    "load_version": "kernel_magics.evaluation.loading",
}
__all__ = sorted(_EXPORTS)


def html_view(result: object) -> Any:
    """A result's ``_repr_html_``: the view the front end registered for its type (None
    without one), so asking the object itself renders like the notebook does."""
    from kernel_magics.views import front_end_view

    return front_end_view(result, "text/html")


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
