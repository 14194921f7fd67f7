"""What exists: every registered model with its versions, their final metrics and tags, and
which version is live (the store's alias) and served (the serving target's snapshot).
``api.models`` is its front door; the records here are what front ends render."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from kernel_magics.store import TAG_CANARY_VERDICT, TAG_PARENT, TAG_RECIPE

if TYPE_CHECKING:
    from kernel_magics.records import ServerStatus
    from kernel_magics.store import VersionInfo


class CatalogSource(Protocol):
    """What a listing reads: ``Store`` (MLflow) or ``store_sqlite.SqliteCatalog``."""

    def live_by_model(self) -> dict[str, int | None]: ...

    def versions(self, name: str) -> list[VersionInfo]: ...

    def run_metrics(self, run_ids: list[str]) -> dict[str, dict[str, float]]: ...


@dataclass
class VersionRow:
    version: int
    created: float
    run_id: str | None
    task: str | None
    format: str | None
    metrics: dict[str, float]
    aliases: tuple[str, ...]
    live: bool
    tags: dict[str, str] = field(default_factory=dict)  # km.parent, km.recipe, ...

    # Lineage, so that front ends show it without knowing the store's tag names.
    @property
    def parent(self) -> str:
        """``NAME@VERSION`` this version was derived from (``km.parent``), or ""."""
        return self.tags.get(TAG_PARENT, "")

    @property
    def canary_verdict(self) -> str:
        """What the inference process decided about this version as a canary it judged by
        itself (``auto-rollback: canary p99 …``), or ""."""
        return self.tags.get(TAG_CANARY_VERDICT, "")

    @property
    def recipe(self) -> str:
        """How it was made, in its author's words (``km.recipe``), or ""."""
        return self.tags.get(TAG_RECIPE, "")

    def other_tags(self) -> dict[str, str]:
        """The version's tags besides its lineage."""
        return {k: v for k, v in self.tags.items() if k not in (TAG_PARENT, TAG_RECIPE)}


@dataclass
class ModelSummary:
    name: str
    live_version: int | None
    served_version: int | None
    versions: list[VersionRow] = field(default_factory=list)


def summaries(store: CatalogSource, status: ServerStatus | None) -> list[ModelSummary]:
    served = {n: m.version for n, m in status.models.items()} if status else {}
    live_versions = store.live_by_model()  # one search: every model and its live alias
    out = []
    for model_name in sorted(live_versions):
        versions = store.versions(model_name)
        metrics = store.run_metrics([v.run_id for v in versions if v.run_id])
        live = live_versions.get(model_name)
        rows = [
            VersionRow(
                version=v.version,
                created=v.created,
                run_id=v.run_id,
                task=v.task,
                format=v.tags.get("km.format"),
                metrics=metrics.get(v.run_id or "", {}),
                aliases=v.aliases,
                # search results carry no aliases on every backend: compare numbers
                live=v.version == live,
                tags=dict(v.tags),
            )
            for v in versions
        ]
        out.append(ModelSummary(model_name, live, served.get(model_name), rows))
    return out
