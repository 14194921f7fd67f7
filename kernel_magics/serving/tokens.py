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
import json
import secrets
import time

from kernel_magics._files import write_atomic
from kernel_magics.config import Settings
from kernel_magics.errors import InvalidInput, NotFound, clip
from kernel_magics.store import validate_name

HOME_TOKEN_NAME = "default"
ANONYMOUS = "anonymous"  # predictions without a token, where the settings allow them
_RECHECK_S = 1.0


def ensure_home_token(settings: Settings) -> str:
    """The home token, created (random, mode 0600) if there is none yet."""
    path = settings.token_file
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    write_atomic(path, token + "\n", private=True)
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
            f"invalid token name {clip(name)!r}: use letters, digits, '-', '_' and '.'"
        ) from None
    if name in (HOME_TOKEN_NAME, ANONYMOUS):
        raise InvalidInput(f"{name!r} is reserved; choose another token name")
    token = secrets.token_urlsafe(32)
    named = _read_named(settings)
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    named[name] = {"sha256": _digest(token), "created": created}
    write_atomic(settings.tokens_file, json.dumps(named, indent=1), private=True)
    return token


def revoke_token(settings: Settings, name: str) -> None:
    named = _read_named(settings)
    if name not in named:
        raise NotFound(
            f"no token named {clip(name)!r} (named tokens: {', '.join(named) or 'none'})"
        )
    del named[name]
    write_atomic(settings.tokens_file, json.dumps(named, indent=1), private=True)


def list_tokens(settings: Settings) -> list[dict]:
    """Named tokens (never the tokens themselves): ``[{"name", "created"}]``."""
    return [{"name": n, "created": d.get("created", "")} for n, d in _read_named(settings).items()]


class TokenTable:
    """Who an ``Authorization`` header belongs to, for a worker's request path.

    Every token, the home one included, is looked up by its SHA-256 (≈1 µs): no secret is
    ever a dict key or a byte-by-byte comparison, and a revoked token is simply gone from the
    table. ``tokens.json`` is stat'ed at most once a second to pick up changes."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._names: dict[str, str] = {}  # digest → token name
        self._mtime: float | None = -1.0
        self._checked = 0.0
        self._reload()

    def _reload(self) -> None:
        try:
            home = self.settings.token_file.read_text().strip()
        except OSError:
            home = ""
        try:
            self._mtime = self.settings.tokens_file.stat().st_mtime
            named = _read_named(self.settings)
        except (OSError, InvalidInput):
            self._mtime, named = None, {}
        names = {d["sha256"]: n for n, d in named.items() if d.get("sha256")}
        if home:  # an empty home token must not make "Bearer " valid
            names[_digest(home)] = HOME_TOKEN_NAME
        self._names = names

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
        if not header or not header.startswith(b"Bearer ") or len(header) > 512:
            return None
        return self._names.get(_digest(header[7:].decode("latin-1")))
