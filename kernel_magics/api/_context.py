"""The settings, store and serving target every API call works through: one store and one
target per settings object (the target keeps its connections), and version records by
(name, version), which never change once registered."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from kernel_magics.config import Settings, load_settings
from kernel_magics.store import Store

if TYPE_CHECKING:
    from kernel_magics.targets import ServingTarget


@functools.lru_cache(maxsize=8)
def _store(settings: Settings) -> Store:
    return Store(settings)


@functools.lru_cache(maxsize=8)
def _target(settings: Settings) -> ServingTarget:
    """The serving target the settings name (one per settings: it keeps connections)."""
    from kernel_magics.targets import open_target

    return open_target(settings, lambda: _store(settings))


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else load_settings()


@functools.lru_cache(maxsize=256)
def _version_info(settings: Settings, name: str, version: int) -> Any:
    # Versions are immutable once registered, so caching by (name, version) is safe.
    return _store(settings).resolve(name, int(version))
