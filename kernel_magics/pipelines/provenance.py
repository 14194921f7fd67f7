"""Where a pipeline run came from: code, environment, data and seeds, as MLflow tags.

Every value is a string (MLflow tags), keyed ``km.provenance.*``:

- ``project_version``: kernel-magics' version; ``python``: the interpreter's version;
- ``git_commit`` / ``git_dirty``: the git working tree the notebook lives in, if any (dirty:
  tracked files differ from the commit);
- ``package.<name>``: versions of the packages that decide the results;
- ``sha256.<param>``: SHA-256 of each parameter whose value names an existing file;
- ``seed.<param>``: each parameter named like a seed (``seed``, ``torch_seed``, ``random_state``).

Reading package versions goes through ``importlib.metadata``: nothing heavy is imported.
"""

from __future__ import annotations

import hashlib
import platform
import re
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

PREFIX = "km.provenance."
PACKAGES = ("torch", "mlflow", "numpy", "scikit-learn", "papermill", "kernel-magics")
_SEED_NAME = re.compile(r"(^|_)(seed|random_state)($|_)", re.IGNORECASE)
_MAX_HASHED_BYTES = 1 << 34  # 16 GiB: bigger "inputs" are not hashed (said so in the tag)


def collect(notebook: Path, parameters: Mapping[str, Any], cwd: Path) -> dict[str, str]:
    """The provenance tags of a run of ``notebook`` with ``parameters`` (paths relative to
    ``cwd``, where the kernel runs)."""
    from kernel_magics import __version__

    tags = {"project_version": __version__, "python": platform.python_version()}
    tags.update(git_state(notebook.parent))
    tags.update({f"package.{name}": package_version(name) for name in PACKAGES})
    for name, value in parameters.items():
        path = input_file(value, cwd)
        if path is not None:
            tags[f"sha256.{name}"] = file_sha256(path)
        if _SEED_NAME.search(name):
            tags[f"seed.{name}"] = str(value)
    return {PREFIX + key: value for key, value in tags.items()}


def strip(tags: Mapping[str, str]) -> dict[str, str]:
    """The provenance tags of a run without their prefix."""
    return {k[len(PREFIX) :]: v for k, v in tags.items() if k.startswith(PREFIX)}


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_state(folder: Path) -> dict[str, str]:
    """``git_commit`` and ``git_dirty`` of the working tree holding ``folder``; empty when it
    is not in one (or git is missing)."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=20
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    status = git("status", "--porcelain", "--untracked-files=no")
    dirty = "unknown" if status is None else str(bool(status.strip())).lower()
    return {"git_commit": commit.strip(), "git_dirty": dirty}


def input_file(value: Any, cwd: Path) -> Path | None:
    """The file a parameter value names, if it names an existing one."""
    if not isinstance(value, str) or not value or "\n" in value or len(value) > 4096:
        return None
    path = Path(value).expanduser()
    path = path if path.is_absolute() else cwd / path
    try:
        return path if path.is_file() else None
    except OSError:  # a name too long for the file system, no permission
        return None


def file_sha256(path: Path) -> str:
    if path.stat().st_size > _MAX_HASHED_BYTES:
        return f"not hashed (larger than {_MAX_HASHED_BYTES >> 30} GiB)"
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
