"""Serving targets: where deployed models run. See ``base.ServingTarget`` for the protocol.

``open_target(settings, store)`` picks the implementation named by ``settings.target``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kernel_magics.errors import InvalidInput
from kernel_magics.targets.base import ServingTarget

if TYPE_CHECKING:
    from kernel_magics.config import Settings
    from kernel_magics.store import Store

__all__ = ["ServingTarget", "open_target", "TARGETS"]


def _local(settings: Settings, store: Callable[[], Store]) -> ServingTarget:
    from kernel_magics.targets.local import LocalTarget

    return LocalTarget(settings, store)


def _ray(settings: Settings, store: Callable[[], Store]) -> ServingTarget:
    from kernel_magics.targets.ray import RayTarget

    return RayTarget(settings, store)


# name → factory; a new engine is one entry (its module imported only when chosen).
TARGETS: dict[str, Callable[[Settings, Callable[[], Store]], ServingTarget]] = {
    "local": _local,
    "ray": _ray,
}


def open_target(settings: Settings, store: Callable[[], Store]) -> ServingTarget:
    factory = TARGETS.get(settings.target)
    if factory is None:
        raise InvalidInput(
            f"unknown serving target {settings.target!r} (choose from {', '.join(TARGETS)})"
        )
    return factory(settings, store)
