"""Re-execute a recorded pipeline run and compare it with the original, metric by metric.

By default the rerun executes the notebook stored with the original run (``input/``), with the
recorded parameters, so it repeats what ran even if the file changed since; ``use_source=True``
executes the file at the recorded path instead (a changed notebook shows up in the comparison).
Compared: the metrics the notebook logged (``log_metric``) and the metrics of the runs that
registered its versions, as ``MODEL/METRIC`` (``MODEL[2]/METRIC`` for a model's second version).
Each row is "identical" (bit for bit), "equal" (within ``REL_TOL``: float32 rounding), "differs"
or "missing".
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_magics.config import Settings
from kernel_magics.evaluation import html_view
from kernel_magics.pipelines.record import PipelineRecord, RunSpec
from kernel_magics.pipelines.run import check_parameters, execute_recorded

# float32 training repeats to the last bit only when nothing else in the kernel uses torch at
# the same time (the extension's warm-up thread can): such reruns differ by ~1e-7 relative.
REL_TOL = 1e-5


@dataclass
class MetricDelta:
    name: str
    original: float | None
    rerun: float | None

    @property
    def identical(self) -> bool:
        a, b = self.original, self.rerun
        return a is not None and b is not None and (a == b or (math.isnan(a) and math.isnan(b)))

    @property
    def equal(self) -> bool:
        """Identical, or within ``REL_TOL`` (float32 rounding)."""
        a, b = self.original, self.rerun
        if self.identical:
            return True
        return a is not None and b is not None and math.isclose(a, b, rel_tol=REL_TOL)

    @property
    def delta(self) -> float | None:
        if self.original is None or self.rerun is None:
            return None
        return self.rerun - self.original


@dataclass
class RerunResult:
    """``%pipeline rerun RUN_ID``: both runs and the metric-by-metric comparison."""

    original: PipelineRecord
    rerun: PipelineRecord
    rows: list[MetricDelta] = field(default_factory=list)

    _repr_html_ = html_view  # the view the front end registered

    @property
    def all_equal(self) -> bool:
        return all(row.equal for row in self.rows)


def rerun_pipeline(
    run_id: str,
    *,
    settings: Settings,
    parameters: Mapping[str, Any] | None = None,
    use_source: bool = False,
    output: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    progress: str = "bar",
) -> RerunResult:
    """Run pipeline ``run_id`` again (``parameters`` override recorded ones) and compare."""
    from kernel_magics.pipelines.record import read_record
    from kernel_magics.store import Store

    notebook = None
    if use_source:  # the source path is needed before the run opens
        notebook = read_record(Store(settings), run_id).notebook
    spec = RunSpec(
        cwd=str(Path(cwd or Path.cwd()).resolve()),
        notebook=notebook,
        parameters=check_parameters(parameters or {}),
        rerun_of=run_id,
    )
    record, original = execute_recorded(spec, settings, progress=progress, output=output)
    assert original is not None
    return RerunResult(original, record, compare_metrics(original, record))


def comparable_metrics(record: PipelineRecord) -> dict[str, float]:
    """The metrics a rerun is compared on: logged ones, then those of each linked version."""
    out = dict(record.metrics)
    seen: dict[str, int] = {}
    for version in record.versions:
        seen[version.name] = seen.get(version.name, 0) + 1
        label = version.name if seen[version.name] == 1 else f"{version.name}[{seen[version.name]}]"
        out.update({f"{label}/{k}": v for k, v in version.metrics.items()})
    return out


def compare_metrics(original: PipelineRecord, rerun: PipelineRecord) -> list[MetricDelta]:
    before, after = comparable_metrics(original), comparable_metrics(rerun)
    names = list(before) + [k for k in after if k not in before]
    return [MetricDelta(k, before.get(k), after.get(k)) for k in names]
