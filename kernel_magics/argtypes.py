"""Argument types shared by the magics and the console script: ranges are checked while parsing,
so ``--epochs -1`` fails before anything is opened or started."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from kernel_magics.errors import InvalidInput, clip, closest
from kernel_magics.naming import parse_version
from kernel_magics.records import DEFAULT_CANARY_METRICS, CanaryRule


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


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """Seconds, written ``90``, ``90s``, ``5m``, ``1h`` or ``2d``; more than zero."""
    raw = text.strip().lower()
    unit = _DURATION_UNITS.get(raw[-1:]) if raw else None
    number_text = raw[:-1] if unit is not None else raw
    try:
        value = float(number_text) * (unit or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a duration such as 60s, 5m or 1h, got {clip(text)!r}"
        ) from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {clip(text)}")
    return value


def canary_rule(args: argparse.Namespace) -> CanaryRule | None:
    """The rule of ``--analyze [--metric M ...] [--window W] [--min-requests N]`` (the magic
    and the console script share it); None without ``--analyze``."""
    tuning = {"--metric": args.metric, "--window": args.window, "--min-requests": args.min_requests}
    if not args.analyze:
        given = [flag for flag, value in tuning.items() if value is not None]
        if given:
            raise InvalidInput(f"{given[0]} belongs to --analyze: add --analyze --canary PERCENT")
        return None
    if args.canary is None:
        raise InvalidInput("--analyze judges a canary: add --canary PERCENT")
    metrics = tuple(args.metric) if args.metric else DEFAULT_CANARY_METRICS
    return CanaryRule(metrics, args.window, args.min_requests)


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
