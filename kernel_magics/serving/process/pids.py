"""Process-id checks shared by the kernel side, the tests and the benchmark (no imports of ours)."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (a finished child nobody has reaped yet)."""
    if pid <= 0:  # os.kill(0, ...) would address our whole process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
