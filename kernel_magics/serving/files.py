"""Small file helpers shared by the kernel side and the inference process."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(path: Path, text: str, *, private: bool = False) -> None:
    """Replace ``path`` with ``text`` so that a reader never sees half of it; ``private``
    creates it with mode 0600 (tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    if private:
        os.chmod(tmp, 0o600)  # the umask cannot widen it, but an existing tmp might be wider
    os.replace(tmp, path)
