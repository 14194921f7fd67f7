"""Bearer tokens of the inference process: the home token and named tokens, and who a request's
``Authorization`` header belongs to (usage is metered per token name).

* The **home token** (``home/token``, mode 0600) is what the kernel side, the CLI and ``curl``
  use; its usage is metered as ``default``. It is kept in clear text because the kernel side
  must read it.
* **Named tokens** are handed to other callers (a dashboard, a teammate's script) with
  ``kernel-magics serve token --new NAME`` and revoked with ``--revoke NAME``. Only their
  SHA-256 is stored (``home/tokens.json``, mode 0600): the token itself is shown once.

Workers re-read ``tokens.json`` when it changes (checked at most once a second), so a new or
revoked token takes effect without a restart. Nothing here imports IPython or torch.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

from kernel_magics.config import Settings
from kernel_magics.errors import InvalidInput, NotFound
from kernel_magics.store import validate_name

HOME_TOKEN_NAME = "default"
ANONYMOUS = "anonymous"  # predictions without a token, where the settings allow them
_RECHECK_S = 1.0


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600, atomically (a reader never sees half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def ensure_home_token(settings: Settings) -> str:
    """The home token, created (random, mode 0600) if there is none yet."""
    path = settings.token_file
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    _write_private(path, token + "\n")
    return token


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _read_named(settings: Settings) -> dict[str, dict]:
    try:
        doc = json.loads(settings.tokens_file.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise InvalidInput(f"cannot read {settings.tokens_file}: {err}") from None
    return doc if isinstance(doc, dict) else {}


def create_token(settings: Settings, name: str) -> str:
    """A new named token (returned once; only its hash is kept). Replaces one of that name."""
    try:
        validate_name(name)
    except InvalidInput:
        raise InvalidInput(
            f"invalid token name {name!r}: use letters, digits, '-', '_' and '.'"
        ) from None
    if name in (HOME_TOKEN_NAME, ANONYMOUS):
        raise InvalidInput(f"{name!r} is reserved; choose another token name")
    token = secrets.token_urlsafe(32)
    named = _read_named(settings)
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    named[name] = {"sha256": _digest(token), "created": created}
    _write_private(settings.tokens_file, json.dumps(named, indent=1))
    return token


def revoke_token(settings: Settings, name: str) -> None:
    named = _read_named(settings)
    if name not in named:
        raise NotFound(f"no token named {name!r} (named tokens: {', '.join(named) or 'none'})")
    del named[name]
    _write_private(settings.tokens_file, json.dumps(named, indent=1))


def list_tokens(settings: Settings) -> list[dict]:
    """Named tokens (never the tokens themselves): ``[{"name", "created"}]``."""
    return [{"name": n, "created": d.get("created", "")} for n, d in _read_named(settings).items()]


class TokenTable:
    """Who an ``Authorization`` header belongs to, for a worker's request path.

    A valid header is remembered, so the hot path is one dict lookup; an unknown one costs a
    SHA-256 and a lookup (and, once a second at most, a stat of ``tokens.json``)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._home = b""
        self._by_digest: dict[str, str] = {}
        self._known: dict[bytes, str] = {}
        self._mtime: float | None = -1.0
        self._checked = 0.0
        self._reload()

    def _reload(self) -> None:
        try:
            token = self.settings.token_file.read_text().strip()
        except OSError:
            token = ""
        # An empty token would make "Bearer " valid: then only named tokens are accepted.
        self._home = b"Bearer " + token.encode() if token else b""
        try:
            self._mtime = self.settings.tokens_file.stat().st_mtime
            named = _read_named(self.settings)
        except (OSError, InvalidInput):
            self._mtime, named = None, {}
        self._by_digest = {d["sha256"]: n for n, d in named.items() if d.get("sha256")}
        self._known = {self._home: HOME_TOKEN_NAME} if self._home else {}

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < _RECHECK_S:
            return
        self._checked = now
        try:
            mtime: float | None = self.settings.tokens_file.stat().st_mtime
        except OSError:
            mtime = None
        if mtime != self._mtime:
            self._reload()

    def identify(self, header: bytes | None) -> str | None:
        """The token's name, or None when the header carries no valid token."""
        self._maybe_reload()
        if not header:
            return None
        name = self._known.get(header)
        if name is not None:
            return name
        if self._home and hmac.compare_digest(header, self._home):
            return HOME_TOKEN_NAME
        if not header.startswith(b"Bearer ") or len(header) > 512:
            return None
        name = self._by_digest.get(_digest(header[7:].decode("latin-1")))
        if name is not None and len(self._known) < 1024:
            self._known[header] = name
        return name
