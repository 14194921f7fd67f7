"""What a metric's name says, decided once for every caller: which metrics headline a version
(the progress line, ``%models``, the registry browser, the lab panel) and which way a metric
improves (``%compare``, the registry browser's comparison, ``%optimize``'s chart, promotion).

Plain Python, no numpy or torch: the front ends import it when the extension loads.
"""

from __future__ import annotations

from collections.abc import Mapping

# The metrics worth a summary, per task, best first (training logs its metrics by these names:
# training/metrics.py).
KEY_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "f1_macro"),
    "regression": ("mse", "mae", "r2"),
    "text-generation": ("perplexity", "accuracy"),  # a language model trained on text
}
# Name fragments that say which way a metric improves; a name with both ("loss_f1") is a loss.
HIGHER = ("accuracy", "precision", "recall", "f1", "auc", "r2")
LOWER = ("loss", "mse", "mae", "rmse", "error", "perplexity")


def key_metrics(metrics: Mapping[str, float], task: str | None = None) -> dict[str, float]:
    """The headline metrics present in ``metrics``, best first: the task's (both tasks' when
    the task is unknown), else ``val_loss`` when that is all there is."""
    keys = KEY_METRICS.get(task or "") or (
        ("perplexity",) + KEY_METRICS["classification"] + KEY_METRICS["regression"]
    )
    found = {key: metrics[key] for key in keys if key in metrics}
    if not found and "val_loss" in metrics:
        found = {"val_loss": metrics["val_loss"]}
    return found


def direction(name: str) -> str | None:
    """Which way a metric improves, from its name: "higher", "lower" or None (not known).

    ``val_loss``, ``mse``: lower; ``f1_macro``, ``km.eval.accuracy``: higher; a spread across
    folds (``cv.accuracy_std``): lower, whatever it is the spread of."""
    key = name.lower()
    if key.endswith("_std"):
        return "lower"
    if any(word in key for word in LOWER):
        return "lower"
    if any(word in key for word in HIGHER):
        return "higher"
    return None


def is_better(name: str, new: float, old: float) -> bool:
    """Whether ``new`` is at least as good as ``old`` on metric ``name``; a figure whose name
    says nothing (size, latency, parameters) is a cost: lower is better."""
    return new >= old if direction(name) == "higher" else new <= old
