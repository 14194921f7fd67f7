"""``%compare NAME V1 V2 [...]`` / ``api.compare``: versions of a model side by side.

Rows, by section: training metrics (the final values of each version's run), evaluation
metrics (the ``km.eval.*`` tags ``evaluate`` writes, ``km.cv.*`` from cross-validation), the
run's params, lineage (``km.parent``, ``km.recipe``), and the model itself: size on disk,
parameter count and the latency of one forward (in this process, batch 1, median of N calls
after a warm-up). Each row says which way is better (higher accuracy, lower loss, smaller,
faster) when its name tells; ``best`` holds the columns with the best value.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from kernel_magics.errors import InvalidInput
from kernel_magics.evaluation import html_view
from kernel_magics.evaluation.loading import LoadedVersion, load_version
from kernel_magics.metric_names import direction
from kernel_magics.naming import validate_name
from kernel_magics.store import TAG_PARENT, TAG_RECIPE, Store

SECTIONS = ("metrics", "evaluation", "params", "lineage", "model")
LATENCY_CALLS = 50
LATENCY_TIE = 0.05


@dataclass
class CompareRow:
    section: str  # one of SECTIONS
    name: str
    values: list[Any]  # one per version; None where a version has none
    better: str | None = None  # "higher", "lower" or None (not comparable)
    best: list[int] = field(default_factory=list)  # columns holding the best value


@dataclass
class Comparison:
    """What ``%compare`` returns."""

    name: str
    versions: list[int]
    rows: list[CompareRow] = field(default_factory=list)

    def row(self, name: str, section: str | None = None) -> CompareRow:
        for row in self.rows:
            if row.name == name and section in (None, row.section):
                return row
        raise KeyError(name)

    _repr_html_ = html_view  # the view the front end registered


def compare(
    store: Store, name: str, versions: list[int | str], *, latency_calls: int = LATENCY_CALLS
) -> Comparison:
    """Compare ``versions`` (numbers or aliases; at least two) of model ``name``."""
    validate_name(name)
    if len(versions) < 2:
        raise InvalidInput("compare needs at least two versions")
    infos = [store.resolve(name, v) for v in versions]
    numbers = [i.version for i in infos]
    if len(set(numbers)) != len(numbers):
        raise InvalidInput(f"versions repeat: {', '.join(f'v{n}' for n in numbers)}")
    runs = [store.client.get_run(i.run_id) if i.run_id else None for i in infos]
    loaded = [load_version(store, info) for info in infos]
    result = Comparison(name, numbers)
    metrics = [dict(r.data.metrics) if r else {} for r in runs]
    params = [dict(r.data.params) if r else {} for r in runs]
    evals = [_eval_tags(info.tags) for info in infos]
    result.rows += _rows("metrics", metrics, numeric=True)
    result.rows += _rows("evaluation", evals, numeric=True)
    result.rows += _rows("params", params, numeric=False)
    lineage = [{"parent": i.tags.get(TAG_PARENT), "recipe": i.tags.get(TAG_RECIPE)} for i in infos]
    result.rows += _rows("lineage", lineage, numeric=False)
    result.rows += _model_rows(loaded, latency_calls)
    return result


def _eval_tags(tags: dict[str, str]) -> dict[str, float]:
    out = {}
    for key, value in tags.items():
        if key.startswith(("km.eval.", "km.cv.")) and not key.endswith((".run", ".rows")):
            try:
                out[key.removeprefix("km.")] = float(value)
            except ValueError:
                continue
    return out


def _rows(section: str, columns: list[dict[str, Any]], *, numeric: bool) -> list[CompareRow]:
    names = sorted({k for column in columns for k, v in column.items() if v is not None})
    rows = []
    for key in names:
        values = [column.get(key) for column in columns]
        rows.append(_ranked(CompareRow(section, key, values, direction(key) if numeric else None)))
    return rows


def _ranked(row: CompareRow, tolerance: float = 0.0) -> CompareRow:
    """Mark the best columns: those within ``tolerance`` (relative) of the best value; none
    when every column is, or the direction is unknown."""
    present = [(i, v) for i, v in enumerate(row.values) if isinstance(v, int | float)]
    if row.better is None or len(present) < 2:
        return row
    best = (max if row.better == "higher" else min)(v for _, v in present)
    best_ones = [i for i, v in present if abs(v - best) <= tolerance * abs(best)]
    row.best = best_ones if len(best_ones) < len(present) else []
    return row


def _model_rows(loaded: list[LoadedVersion], calls: int) -> list[CompareRow]:
    rows = [
        CompareRow("model", "format", [v.format for v in loaded]),
        CompareRow("model", "size_bytes", [v.size_bytes for v in loaded], "lower"),
        CompareRow("model", "parameters", [v.parameter_count or None for v in loaded], "lower"),
    ]
    timed = CompareRow("model", "latency_ms", [latency_ms(v, calls) for v in loaded], "lower")
    # timings within 5% of each other are a tie, not a winner
    return [_ranked(row) for row in rows] + [_ranked(timed, LATENCY_TIE)]


def latency_ms(loaded: LoadedVersion, calls: int = LATENCY_CALLS) -> float | None:
    """Median milliseconds of one forward on one row of the input example (None without one)."""
    import torch

    if loaded.example is None or len(loaded.example) == 0:
        return None
    batch = loaded.fixed_batch or 1
    row = torch.from_numpy(loaded.example[:1]).expand(batch, *loaded.example.shape[1:])
    times = []
    with torch.inference_mode():
        for i in range(calls + 3):
            began = time.perf_counter()
            loaded.call(row)
            if i >= 3:  # the first calls warm caches and the graph's guards
                times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000.0
