"""The real IPython shell the in-process tests drive, as a notebook's kernel holds it."""

from __future__ import annotations

from typing import Any


def interactive_shell() -> Any:
    """The process's ``InteractiveShell`` (terminal-less: ``display()`` goes through it), with
    no SQLite history file for a throwaway shell."""
    from IPython.core.history import HistoryAccessor

    HistoryAccessor.enabled = False
    from IPython.core.interactiveshell import InteractiveShell

    return InteractiveShell.instance()


def run_cell(shell: Any, code: str) -> Any:
    """Run a cell like a notebook does and re-raise what it raised; its value."""
    result = shell.run_cell(code)
    result.raise_error()
    return result.result
