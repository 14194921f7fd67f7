"""The model-name rule, defined once: names travel in URLs and file paths, so letters, digits,
'-', '_' and '.' only, not starting with '.', at most 128 characters.

``store.validate_name`` and the OpenAPI document (``serving/request/openapi.py``) both derive
from these constants. No imports: every process may import it.
"""

from __future__ import annotations

import string

NAME_MAX_LENGTH = 128
# regex classes: what a name may start with; after that '.' is allowed too ('-' stays last)
_FIRST = "A-Za-z0-9_-"
_REST = "A-Za-z0-9_.-"
NAME_CHARS = frozenset(string.ascii_letters + string.digits + "-_.")
NAME_PATTERN = f"^[{_FIRST}][{_REST}]{{0,{NAME_MAX_LENGTH - 1}}}$"


def is_valid_name(name: str) -> bool:
    """True when ``name`` follows the rule (the same as ``NAME_PATTERN``)."""
    return 0 < len(name) <= NAME_MAX_LENGTH and set(name) <= NAME_CHARS and not name.startswith(".")


def unknown_verb(rest: str) -> str:
    """The 404 message for ``/v1/models/NAME:VERB`` with a verb other than ``predict`` (a name
    never holds ':', so whatever follows it is a verb)."""
    name, _, verb = rest.partition(":")
    return f"unknown verb {verb[:50]!r}: POST /v1/models/{name[:200]}:predict predicts"
