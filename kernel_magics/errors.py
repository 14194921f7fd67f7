"""Errors every front end can show as one line.

Each message is written for the person who typed the command: what went wrong and, where
possible, what to do. Magics turn any of these into IPython's ``UsageError`` (no traceback), the
CLI prints them to stderr with exit code 2, and the inference process maps them to 4xx bodies.
"""

from __future__ import annotations

from collections.abc import Iterable


class KernelMagicsError(Exception):
    """Base class: ``str(err)`` is a complete one-line message for the user."""

    http_status = 400


class InvalidInput(KernelMagicsError):
    """Arguments, data or a request body that cannot be used as given."""


class NotFound(KernelMagicsError):
    """Unknown model, version, alias or run."""

    http_status = 404


class Forbidden(KernelMagicsError):
    """A valid token whose scope does not allow the request (a predict token deploying)."""

    http_status = 403


class DeployFailed(KernelMagicsError):
    """A version could not be loaded or warmed; whatever was live keeps serving."""

    http_status = 409


class IntegrityError(DeployFailed):
    """A model artifact's bytes differ from the hash recorded when it was registered."""


class ServiceUnavailable(KernelMagicsError):
    """The inference process is not running, starting or restarting."""

    http_status = 503


class Overloaded(KernelMagicsError):
    """More work than the server takes now (a full queue); retry after ``retry_after`` seconds."""

    http_status = 429
    retry_after = 1


class TrainingInterrupted(KernelMagicsError):
    """Training stopped by a kernel interrupt; the run is recorded as killed, nothing registered."""


class StoreError(KernelMagicsError):
    """The MLflow store could not be read or written (unreachable, full, locked)."""

    http_status = 503


QUOTE_CHARS = 200  # the most of a client's input an error message or log line repeats


def clip(value: object, limit: int = QUOTE_CHARS) -> str:
    """``value`` as text, at most ``limit`` characters and then how long it was: every message
    and log line that quotes input (a name, a category, a version, a header) goes through it, so
    no answer grows with what a client sent."""
    if isinstance(value, bytes | bytearray | memoryview):
        text = bytes(value[: limit + 1]).decode("latin-1")
        size = len(value)
    else:
        text = value if isinstance(value, str) else str(value)
        size = len(text)
    if size <= limit:
        return text
    return f"{text[:limit]}… ({size} characters)"


def first_line(err: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an error, at most ``limit`` characters; the exception's
    type name when it has no message. Our own errors are one line already; library errors
    (torch.export, MLflow, sqlalchemy) often are not."""
    text = str(err).strip()
    first = text.splitlines()[0].strip() if text else ""
    if not first and isinstance(err, BaseException):
        return type(err).__name__
    return first[:limit]


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The one of ``choices`` a mistyped ``word`` most likely meant, or None when none is close."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'epochs'?)`` for the closest of ``choices`` to a mistyped ``word``, or
    an empty string when none is close: the next step every "unknown X" message offers."""
    match = closest(word, choices)
    return f" (did you mean {match!r}?)" if match else ""
