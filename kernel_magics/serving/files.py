"""Small file helpers shared by the kernel side and the inference process, and the rule that
keeps the home folder private: the store, the state file, the logs and the artifacts in it are
for their owner alone (home 0700, files 0600), as the tokens always were."""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("kernel_magics")

# The processes we start (the inference process and its workers, the store's mlflow server)
# create what they write readable by their owner alone.
PRIVATE_UMASK = 0o077
PRIVATE_FILE = 0o600
_tightened: set[Path] = set()  # homes checked by this process


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


def create_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (SQLite keeps an existing file's
    mode for the database and gives its journal the same)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))


def open_private_append(path: Path) -> int:
    """A file descriptor appending to ``path``, created 0600 (a log a child process writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)


def private_home(home: Path) -> int:
    """Create ``home`` with mode 0700, or take group and other permissions away from it and
    everything in it that this user owns (homes made before this rule, files written under
    a wider umask). Symbolic links are neither followed nor changed. Once per home and
    process. Returns how many entries changed.

    An open home is news, said in one line; files a kernel wrote into a private home under
    its own umask (artifacts of a training) were never reachable, and are tightened quietly."""
    home = Path(home)
    if home in _tightened:
        return 0
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    was_open = _tighten(home)
    changed = was_open
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            changed += _tighten(Path(root, name))
    _tightened.add(home)
    if was_open:
        log.warning(
            "kernel-magics: made %d entries of %s private to their owner "
            "(the home is now 0700, its files 0600)",
            changed,
            home,
        )
    return changed


def _tighten(path: Path) -> int:
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
            return 0
        mode = stat.S_IMODE(info.st_mode)
        if not mode & 0o077:
            return 0
        os.chmod(path, mode & ~0o077)
    except OSError:  # gone meanwhile, or not ours to change
        return 0
    return 1
