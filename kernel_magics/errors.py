"""Errors every front end can show as one line.

Each message is written for the person who typed the command: what went wrong and, where
possible, what to do. Magics turn any of these into IPython's ``UsageError`` (no traceback), the
CLI prints them to stderr with exit code 2, and the inference process maps them to 4xx bodies.
"""

from __future__ import annotations


class KernelMagicsError(Exception):
    """Base class: ``str(err)`` is a complete one-line message for the user."""

    http_status = 400


class InvalidInput(KernelMagicsError):
    """Arguments, data or a request body that cannot be used as given."""


class NotFound(KernelMagicsError):
    """Unknown model, version, alias or run."""

    http_status = 404


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


def first_line(err: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an error, at most ``limit`` characters; the exception's
    type name when it has no message. Our own errors are one line already; library errors
    (torch.export, MLflow, sqlalchemy) often are not."""
    text = str(err).strip()
    first = text.splitlines()[0].strip() if text else ""
    if not first and isinstance(err, BaseException):
        return type(err).__name__
    return first[:limit]
