"""Argument types shared by the magics and the console script: ranges are checked while parsing,
so ``--epochs -1`` fails before anything is opened or started."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kernel_magics.errors import InvalidInput, clip, closest
from kernel_magics.naming import parse_version


def number(
    kind: type, minimum: float, *, inclusive: bool = True, maximum: float | None = None
) -> Callable[[str], Any]:
    """An argparse type that rejects out-of-range values (``--epochs -1``) at parse time."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            message = f"expected {kind.__name__}, got {clip(text)!r}"
            raise argparse.ArgumentTypeError(message) from None
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(
                f"must be {'>=' if inclusive else '>'} {minimum}, got {clip(text)}"
            )
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {clip(text)}")
        return value

    return convert


positive_int = number(int, 1)
non_negative_float = number(float, 0)
share = number(float, 0, maximum=1)  # a fraction: --log-sample


def version(text: str) -> int:
    """A version number, written ``2`` or ``v2`` (the one rule: ``naming.parse_version``)."""
    try:
        return parse_version(text)
    except InvalidInput as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def option_hint(parser: argparse.ArgumentParser, tokens: Sequence[str]) -> str:
    """``; did you mean --epochs?`` for the first option in ``tokens`` that ``parser`` (or one
    of its sub-commands) does not know and that is close to one it does; else "". Appended to
    argparse's "unrecognized arguments" by the magics' front end and the console script."""
    known = sorted({flag for flag in _flags(parser) if flag.startswith("--")})
    for token in tokens:
        flag = token.split("=", 1)[0]
        if flag.startswith("--") and flag not in known:
            match = closest(flag, known)
            if match:
                return f"; did you mean {match}?"
    return ""


def _flags(parser: argparse.ArgumentParser) -> Iterator[str]:
    yield from parser._option_string_actions
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _flags(sub)
