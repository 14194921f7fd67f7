"""The model-name and version rules, defined once: names travel in URLs and file paths, so
letters, digits, '-', '_' and '.' only, not starting with '.', at most 128 characters; versions
are whole numbers from 1 to ``VERSION_MAX``.

``validate_name`` and the OpenAPI document (``serving/request/openapi.py``) both derive from
these constants; ``not_found`` is the one wording for an unknown model. Nothing heavy imported:
every process may import it.
"""

from __future__ import annotations

import string

from kernel_magics.errors import InvalidInput, clip

NAME_MAX_LENGTH = 128
# regex classes: what a name may start with; after that '.' is allowed too ('-' stays last)
_FIRST = "A-Za-z0-9_-"
_REST = "A-Za-z0-9_.-"
NAME_CHARS = frozenset(string.ascii_letters + string.digits + "-_.")
NAME_PATTERN = f"^[{_FIRST}][{_REST}]{{0,{NAME_MAX_LENGTH - 1}}}$"


def is_valid_name(name: str) -> bool:
    """True when ``name`` follows the rule (the same as ``NAME_PATTERN``)."""
    return 0 < len(name) <= NAME_MAX_LENGTH and set(name) <= NAME_CHARS and not name.startswith(".")


def validate_name(name: str) -> str:
    """``name`` if it follows the rule; InvalidInput naming the rule otherwise."""
    if not is_valid_name(name):
        raise InvalidInput(
            f"invalid model name {clip(name)!r}: use letters, digits, '-', '_' and '.' "
            f"(not starting with '.', at most {NAME_MAX_LENGTH} characters)"
        )
    return name


def not_found(name: str, known: list[str], kind: str = "registered") -> str:
    """The one wording for an unknown model, naming what exists: ``no registered model named
    'x' (registered: a, b)``; ``kind`` "deployed" for what the inference process serves."""
    none = "none yet" if kind == "registered" else "none"
    return f"no {kind} model named {clip(name)!r} ({kind}: {', '.join(known) or none})"


# -- versions -----------------------------------------------------------------------------------
# The version rule, defined once: a registry version is a whole number from 1, written in ASCII
# digits (an optional leading 'v' where a person types it). Nine digits are far more versions
# than a registry holds, and bounding the text before int() keeps a 5,000-digit "version" from
# costing a quadratic conversion or tripping Python's int-to-str limit.
VERSION_MAX = 999_999_999


def is_version_text(ref: str) -> bool:
    """True when ``ref`` is meant as a version number (ASCII digits), not an alias."""
    return ref.isascii() and ref.isdigit()


def parse_version(ref: object) -> int:
    """``ref`` (an int, or ASCII digits, optionally after 'v') as a version number; InvalidInput
    naming the rule otherwise."""
    text = ref.removeprefix("v") if isinstance(ref, str) else ref
    if isinstance(text, str) and is_version_text(text):
        digits = text.lstrip("0")
        number = int(digits) if 0 < len(digits) <= len(str(VERSION_MAX)) else -1
    elif isinstance(text, int) and not isinstance(text, bool):
        number = text if 0 < text <= VERSION_MAX else -1
    else:
        raise InvalidInput(f"{clip(ref)!r} is not a version number")
    if not 1 <= number <= VERSION_MAX:
        raise InvalidInput(f"version {clip(ref)} is out of range: versions are 1 to {VERSION_MAX}")
    return number


def unknown_verb(rest: str) -> str:
    """The 404 message for ``/v1/models/NAME:VERB`` with a verb other than ``predict`` (a name
    never holds ':', so whatever follows it is a verb)."""
    name, _, verb = rest.partition(":")
    return f"unknown verb {verb[:50]!r}: POST /v1/models/{name[:200]}:predict predicts"
