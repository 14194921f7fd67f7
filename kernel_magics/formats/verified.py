"""A version's model folder, checked before anything in it is read: its SHA-256 must be the one
recorded at registration (``km.sha256``). The inference process (``Lifecycle.spec_for`` hands
workers only checked folders) and the kernel (``%evaluate``, ``%explain``, ``%compare``,
``%optimize``) load a version through this one check, so a folder changed on disk is never
loaded, and pickled code is only read from the folder that was registered.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from kernel_magics.errors import IntegrityError, NotFound
from kernel_magics.store import hash_model_dir

if TYPE_CHECKING:
    from kernel_magics.store import Store, VersionInfo


def verified_folder(store: Store, info: VersionInfo) -> Path:
    """The local folder of ``info`` (downloaded when the store is remote), or IntegrityError
    when it has no recorded hash, its files are missing, or they changed since registration."""
    path = Path(store.local_path(info))
    expected = info.sha256
    if not expected:
        raise IntegrityError(
            f"{info.name} v{info.version} has no recorded content hash "
            "(not registered by kernel-magics); refusing to load it"
        )
    try:
        actual = hash_model_dir(path)
    except NotFound:
        raise IntegrityError(
            f"{info.name} v{info.version}: model files are missing from the store ({path})"
        ) from None
    if actual != expected:
        raise IntegrityError(
            f"{info.name} v{info.version}: model files changed since registration "
            f"(hash {actual[:12]}… ≠ recorded {expected[:12]}…); refusing to load them"
        )
    return path
