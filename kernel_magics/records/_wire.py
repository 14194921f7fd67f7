"""What every record shares: reading JSON values with a message naming the field, and
``to_wire``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from kernel_magics.errors import InvalidInput

R = TypeVar("R")


def _int_or_none(value: Any, what: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidInput(f"{what} must be a whole number, got {value!r}")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be a whole number, got {value!r}") from None


def _float_or_none(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidInput(f"{what} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be a number, got {value!r}") from None


def _classes(value: Any) -> tuple | None:
    """A classifier's labels: a JSON list, or the tuple ``to_wire`` keeps where the record
    travels pickled, not as JSON (Ray hands a replica its ``user_config`` that way)."""
    return tuple(value) if isinstance(value, (list, tuple)) else None


def _mapping(doc: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise InvalidInput(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


class _Wire:
    """``to_wire``: the record as JSON-encodable values (nested records too; tuples stay
    tuples, so a ``from_wire`` takes a list or a tuple where a record holds a sequence)."""

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]


def _count(value: Any, what: str) -> int:
    return _int_or_none(value, what) or 0
