"""The record ``%explain`` / ``api.explain`` return: plain numpy and Python values, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kernel_magics.evaluation import html_view

if TYPE_CHECKING:
    import numpy as np


@dataclass
class Explanation:
    """Attributions of one version for some rows (``x = %explain digits X_test[:5]``):
    Integrated Gradients, or Feature Ablation for a version without gradients (``method``).

    ``attributions[i]`` has the shape of row ``i`` and, summed, approximates
    ``outputs[i, targets[i]]`` minus the same output at the baseline (``delta[i]`` is what is
    left over: Captum's convergence delta; more ``steps`` make it smaller)."""

    name: str
    version: int
    task: str  # "classification", "regression" (tag, else read from the outputs)
    targets: list[int]  # the output index explained, per row
    target_labels: list[Any]  # its class label (km.classes) or "output K", per row
    attributions: np.ndarray = field(repr=False)  # shaped like the rows
    inputs: np.ndarray = field(repr=False)  # the rows explained, as the model took them
    feature_names: list[str]  # one per column of tabular rows; empty for image-shaped rows
    outputs: np.ndarray = field(repr=False)  # the model's outputs, (rows, outputs)
    delta: np.ndarray = field(repr=False)  # convergence delta per row
    baseline: str = "zeros"
    steps: int = 50
    predicted: list[Any] | None = None  # the predicted class label per row (classifiers)
    notes: list[str] = field(default_factory=list)
    why: str = ""  # for a bare NAME: why this version ("the live version", "the newest ...")
    method: str = "Integrated Gradients"  # or "Feature Ablation" (explain.attribute)

    _repr_html_ = html_view  # the view the front end registered

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def rows(self) -> int:
        return len(self.attributions)

    @property
    def tabular(self) -> bool:
        """Rows are vectors of named features (else image- or sequence-shaped)."""
        return self.attributions.ndim == 2

    def importance(self) -> np.ndarray:
        """Mean |attribution| over the rows, shaped like one row."""
        import numpy as np

        return np.abs(self.attributions).mean(axis=0)

    def ranking(self) -> list[tuple[str, float]]:
        """Tabular rows: (feature, mean |attribution|), most important first."""
        if not self.tabular:
            return []
        values = self.importance()
        order = sorted(range(len(values)), key=lambda i: -float(values[i]))
        return [(self.feature_names[i], float(values[i])) for i in order]
