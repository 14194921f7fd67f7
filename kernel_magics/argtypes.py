"""Argument types shared by the magics and the console script: ranges are checked while parsing,
so ``--epochs -1`` fails before anything is opened or started."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def number(kind: type, minimum: float, *, inclusive: bool = True) -> Callable[[str], Any]:
    """An argparse type that rejects out-of-range values (``--epochs -1``) at parse time."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(
                f"must be {'>=' if inclusive else '>'} {minimum}, got {text}"
            )
        return value

    return convert


positive_int = number(int, 1)
non_negative_float = number(float, 0)


def version(text: str) -> int:
    """A version number, written ``2`` or ``v2``."""
    return positive_int(text.removeprefix("v"))
