"""Drift of current rows against a version's reference profile (``quality/profile.py``).

Per feature and for the predictions:

- numbers: the two-sample Kolmogorov-Smirnov test of the current values against the profile's
  reference sample (and, where either side has missing values, a chi² test of the missing
  share, the two p-values combined by Bonferroni), and the PSI over the profile's decile bins
  plus a bin for missing values;
- categories: the chi² test of the reference and current counts (a 2 × K contingency table; a
  category the reference never had is a column of its own), and the PSI over the categories.

A feature is flagged when its test is significant (p < ``Settings.drift_p_value``) **and** the
shift is large enough to matter (PSI ≥ ``Settings.drift_psi``): with 100,000 current rows the
tests find significance in shifts too small to act on, and with a few dozen rows PSI is noisy;
asking for both keeps an unchanged distribution quiet at either size.

numpy and scipy only: the inference process imports this module.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kernel_magics.config import Settings
from kernel_magics.errors import InvalidInput
from kernel_magics.quality.profile import (
    OTHER,
    FeatureProfile,
    ReferenceProfile,
    bin_index,
    category_counts,
    feature_values,
    prediction_values,
)
from kernel_magics.views import front_end_view

# The thresholds' defaults live with every other setting (Settings.drift_p_value, drift_psi).
DEFAULT_P_VALUE: float = Settings.drift_p_value
DEFAULT_PSI: float = Settings.drift_psi
_PSI_FLOOR = 1e-4  # a share of 0 would make PSI infinite: empty bins count as this share


@dataclass(frozen=True)
class FeatureDrift:
    """One feature (or the predictions) compared with the reference."""

    feature: str
    kind: str  # "numeric" | "categorical"
    test: str  # "ks" | "chi2"
    statistic: float
    p_value: float
    psi: float
    flagged: bool
    rows: int  # current rows with a value
    # what the histograms show: bin labels, reference shares, current shares
    bins: list[str] = field(default_factory=list, repr=False)
    reference_shares: list[float] = field(default_factory=list, repr=False)
    current_shares: list[float] = field(default_factory=list, repr=False)
    prediction: bool = False


@dataclass(frozen=True)
class DriftReport:
    """``api.drift`` / ``%drift``: per feature and for the predictions, against the reference."""

    features: list[FeatureDrift]
    rows: int  # current rows compared
    reference_rows: int
    p_value: float  # the thresholds the flags used
    psi: float
    name: str = ""
    version: int = 0
    source: str = ""  # where the current rows came from: "data", "log (last 1h)", …
    notes: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> list[str]:
        """Names of the flagged features (and ``prediction`` when the predictions moved)."""
        return [f.feature for f in self.features if f.flagged]

    def _repr_html_(self) -> str | None:
        return front_end_view(self, "text/html")


def drift_report(
    profile: ReferenceProfile,
    current_rows: Any,
    current_predictions: Any = None,
    *,
    p_value: float = DEFAULT_P_VALUE,
    psi: float = DEFAULT_PSI,
) -> DriftReport:
    """Compare ``current_rows`` (as the reference came, or as the inference log keeps them)
    and the model's outputs on them with ``profile``."""
    if len(current_rows) == 0:
        raise InvalidInput("there are no current rows to compare with the reference")
    values = feature_values(profile.layout, profile.columns, current_rows)
    out = [
        compare(reference, values[reference.name], p_value=p_value, psi_threshold=psi)
        for reference in profile.features
    ]
    notes = []
    if current_predictions is not None and profile.predictions:
        predicted = prediction_values(profile.task, profile.classes, current_predictions)
        for reference in profile.predictions:
            if reference.name in predicted:
                drift = compare(
                    reference, predicted[reference.name], p_value=p_value, psi_threshold=psi
                )
                out.append(_as_prediction(drift))
    elif not profile.predictions:
        notes.append("the reference profile has no predictions: only the inputs are compared")
    return DriftReport(
        features=out,
        rows=len(current_rows),
        reference_rows=profile.rows,
        p_value=p_value,
        psi=psi,
        notes=notes,
    )


def compare(
    reference: FeatureProfile, current: np.ndarray, *, p_value: float, psi_threshold: float
) -> FeatureDrift:
    """One feature's test, PSI and flag."""
    if reference.numeric:
        return _numeric(reference, np.asarray(current, dtype=np.float64), p_value, psi_threshold)
    return _categorical(reference, current, p_value, psi_threshold)


def population_stability(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """PSI = Σ (c − r) · ln(c / r) over shares of the same bins (empty bins floored)."""
    r = np.maximum(reference_counts / max(reference_counts.sum(), 1), _PSI_FLOOR)
    c = np.maximum(current_counts / max(current_counts.sum(), 1), _PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def _numeric(
    reference: FeatureProfile, current: np.ndarray, p_value: float, psi_threshold: float
) -> FeatureDrift:
    from scipy.stats import ks_2samp

    finite = np.isfinite(current)
    present = current[finite]
    edges = np.asarray(reference.edges, dtype=np.float64)
    counts = np.bincount(bin_index(edges, present), minlength=len(edges) + 1)
    current_counts = np.append(counts, len(current) - len(present)).astype(np.float64)
    reference_counts = np.asarray(reference.counts, dtype=np.float64)
    psi = population_stability(reference_counts, current_counts)
    if len(present) and reference.sample:
        with warnings.catch_warnings():  # large samples: scipy says it used the asymptotic p
            warnings.simplefilter("ignore", RuntimeWarning)
            result = ks_2samp(np.asarray(reference.sample), present)
        statistic, p = float(result.statistic), float(result.pvalue)
    else:  # no values to compare: only the missing share can have moved
        statistic, p = 0.0, 1.0
    if reference_counts[-1] or current_counts[-1]:
        p = _with_missing_share(p, reference_counts, current_counts)
    return FeatureDrift(
        reference.name,
        "numeric",
        "ks",
        statistic,
        p,
        psi,
        bool(p < p_value and psi >= psi_threshold),
        int(len(present)),
        bins=_bin_labels(reference),
        reference_shares=_shares(reference_counts),
        current_shares=_shares(current_counts),
    )


def _with_missing_share(
    p: float, reference_counts: np.ndarray, current_counts: np.ndarray
) -> float:
    """KS sees only the values present; a changed share of missing values is tested too (chi²
    of present/missing counts), the two p-values combined by Bonferroni."""
    from scipy.stats import chi2_contingency

    table = np.array(
        [
            [reference_counts[:-1].sum(), reference_counts[-1]],
            [current_counts[:-1].sum(), current_counts[-1]],
        ]
    )
    if (table.sum(axis=0) == 0).any():
        return p
    missing_p = float(chi2_contingency(table).pvalue)
    return min(1.0, 2 * min(p, missing_p))


def _categorical(
    reference: FeatureProfile, current: Any, p_value: float, psi_threshold: float
) -> FeatureDrift:
    from scipy.stats import chi2_contingency

    seen = dict(reference.categories)
    current_by_label: dict[str, int] = {}
    for label, count in category_counts(current).items():
        key = label if label in seen or OTHER not in seen else OTHER
        current_by_label[key] = current_by_label.get(key, 0) + count
    names = list(seen) + [label for label in current_by_label if label not in seen]
    reference_counts = np.asarray([seen.get(n, 0) for n in names], dtype=np.float64)
    current_counts = np.asarray([current_by_label.get(n, 0) for n in names], dtype=np.float64)
    psi = population_stability(reference_counts, current_counts)
    if len(names) > 1:
        result = chi2_contingency(np.vstack([reference_counts, current_counts]))
        statistic, p = float(result.statistic), float(result.pvalue)
    else:  # one category on both sides: nothing moved
        statistic, p = 0.0, 1.0
    return FeatureDrift(
        reference.name,
        "categorical",
        "chi2",
        statistic,
        p,
        psi,
        bool(p < p_value and psi >= psi_threshold),
        int(current_counts.sum()),
        bins=names,
        reference_shares=_shares(reference_counts),
        current_shares=_shares(current_counts),
    )


def _as_prediction(drift: FeatureDrift) -> FeatureDrift:
    from dataclasses import replace

    return replace(drift, prediction=True)


def _bin_labels(reference: FeatureProfile) -> list[str]:
    edges = [f"{e:.3g}" for e in reference.edges]
    if not edges:
        return ["all", "missing"]
    inner = [f"{lo}…{hi}" for lo, hi in zip(edges, edges[1:], strict=False)]
    return [f"≤{edges[0]}", *inner, f">{edges[-1]}", "missing"]


def _shares(counts: np.ndarray) -> list[float]:
    total = counts.sum()
    return [round(float(c / total), 4) if total else 0.0 for c in counts]
