"""Answer bodies every route writes: JSON, and the ``{"error": ...}`` shape of a refusal,
bounded whatever input it quotes."""

from __future__ import annotations

from typing import Any

import orjson

from kernel_magics.errors import clip, first_line

JSON = b"application/json"
MAX_ERROR_CHARS = 2000  # an error body never grows with the input it complains about


def error_body(message: str) -> bytes:
    """``{"error": message}``; a message that quotes a client's input unclipped is cut here."""
    if len(message) > MAX_ERROR_CHARS:
        message = clip(message, MAX_ERROR_CHARS)
    return orjson.dumps({"error": message})


def describe_error(err: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (just ``Type`` when it has none), for error answers
    that quote a library's exception."""
    name = type(err).__name__
    text = first_line(err, limit)
    return name if text == name else f"{name}: {text}"


def dumps(obj: Any) -> bytes:
    """A JSON answer body (integer keys allowed)."""
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)
