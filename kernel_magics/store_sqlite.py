"""A read-only view of the embedded store's SQLite file, for listing what exists fast.

``kernel-magics models`` (and ``api.models``) only reads the registry: importing MLflow to do so
costs ≈ 2 s of a terminal command that should answer at once. For the embedded default store
(``KERNEL_MAGICS_HOME/mlflow.db``) this reads the same rows MLflow's SQL store reads, through
``sqlite3`` in read-only mode, and answers the three questions ``catalog.summaries`` asks
(``live_by_model``, ``versions``, ``run_metrics``) exactly as ``Store`` does; every write still
goes through MLflow. A schema it does not know (a future MLflow) raises ``sqlite3.Error``, and
the caller then asks MLflow (``open_reader``'s fallback); tests/test_store.py checks that both
give the same catalog.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from kernel_magics.config import LIVE_ALIAS
from kernel_magics.store import VersionInfo

# MLflow marks a deleted model version with this stage before it removes its rows.
_DELETED_STAGE = "Deleted_Internal"


class SqliteCatalog:
    """What ``catalog.summaries`` reads from a store, straight from the embedded SQLite file."""

    def __init__(self, db: Path):
        self.db = db

    @contextmanager
    def _rows(self, sql: str, params: tuple = ()) -> Iterator[sqlite3.Cursor]:
        uri = f"{self.db.resolve().as_uri()}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=10)) as conn:
            yield conn.execute(sql, params)

    def live_by_model(self) -> dict[str, int | None]:
        with self._rows("SELECT name FROM registered_models") as rows:
            live: dict[str, int | None] = {name: None for (name,) in rows}
        query = "SELECT name, version FROM registered_model_aliases WHERE alias = ?"
        with self._rows(query, (LIVE_ALIAS,)) as rows:
            live.update({name: int(version) for name, version in rows if name in live})
        return live

    def versions(self, name: str) -> list[VersionInfo]:
        tags: dict[int, dict[str, str]] = {}
        query = "SELECT version, key, value FROM model_version_tags WHERE name = ?"
        with self._rows(query, (name,)) as rows:
            for version, key, value in rows:
                tags.setdefault(int(version), {})[key] = value
        query = (
            "SELECT version, run_id, source, creation_time FROM model_versions "
            "WHERE name = ? AND (current_stage IS NULL OR current_stage != ?) ORDER BY version"
        )
        with self._rows(query, (name, _DELETED_STAGE)) as rows:
            return [
                VersionInfo(
                    name=name,
                    version=int(version),
                    run_id=run_id or None,
                    source=source or "",
                    created=(created or 0) / 1000.0,
                    tags=tags.get(int(version), {}),
                    aliases=(),  # as MLflow's version search answers (live_by_model has them)
                )
                for version, run_id, source, created in rows
            ]

    def run_metrics(self, run_ids: list[str]) -> dict[str, dict[str, float]]:
        wanted = sorted({run_id for run_id in run_ids if run_id.isalnum()})
        out: dict[str, dict[str, float]] = {}
        for start in range(0, len(wanted), 500):  # SQLite's limit on bound parameters
            batch = wanted[start : start + 500]
            marks = ", ".join("?" * len(batch))
            query = (
                "SELECT run_uuid, key, value, is_nan FROM latest_metrics "
                f"WHERE run_uuid IN ({marks})"
            )
            with self._rows(query, tuple(batch)) as rows:
                for run_id, key, value, is_nan in rows:
                    out.setdefault(run_id, {})[key] = float("nan") if is_nan else float(value)
        return out
