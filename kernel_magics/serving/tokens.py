"""Bearer tokens of the inference process: the home token and named tokens, and who a request's
``Authorization`` header belongs to (usage is metered per token name).

* The **home token** (``home/token``, mode 0600) is what the kernel side, the CLI and ``curl``
  use; its usage is metered as ``default``. It is kept in clear text because the kernel side
  must read it.
* **Named tokens** are handed to other callers (a dashboard, a teammate's script) with
  ``kernel-magics serve token --new NAME [--scope manage]`` and revoked with ``--revoke NAME``.
  Only their SHA-256 is stored (``home/tokens.json``, mode 0600): the token itself is shown once.

Every token has a **scope**: ``predict`` (predictions, ``/metrics``, ``/v1/status``) or
``manage`` (that and the management routes: deploy, rollback, undeploy, promote). The home
token has ``manage``; a named token has ``predict`` unless created with ``--scope manage``, so
handing a dashboard its token does not let it change what is live. A token whose scope falls
short gets 403 with the scope it needs (``refusal``); no token at all gets 401.

Workers re-read ``tokens.json`` when it changes (checked at most once a second), so a new or
revoked token takes effect without a restart. Nothing here imports IPython or torch.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import secrets
import time

from kernel_magics.config import Settings
from kernel_magics.errors import InvalidInput, NotFound, clip
from kernel_magics.naming import validate_name
from kernel_magics.serving.files import private_home, write_atomic

HOME_TOKEN_NAME = "default"
ANONYMOUS = "anonymous"  # predictions without a token, where the settings allow them
_RECHECK_S = 1.0

PREDICT, MANAGE = "predict", "manage"
SCOPES = (PREDICT, MANAGE)  # each scope allows what the ones before it allow
# The routes ``POST /v1/models/NAME/<action>`` that change what is served (both targets).
MANAGE_ACTIONS = ("deploy", "rollback", "undeploy", "promote")


def ensure_home_token(settings: Settings) -> str:
    """The home token, created (random, mode 0600) if there is none yet."""
    path = settings.token_file
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    private_home(settings.home)
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


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise InvalidInput(f"unknown token scope {scope!r} (choose from {', '.join(SCOPES)})")
    return scope


def allows(scope: str, needed: str) -> bool:
    """Whether a token of ``scope`` may do what needs ``needed``."""
    return scope in SCOPES and SCOPES.index(scope) >= SCOPES.index(needed)


def refusal(name: str, scope: str, needed: str, what: str) -> dict[str, str] | None:
    """The 403 body for a token whose scope falls short of ``needed`` (None: allowed). The
    built-in process answers its management routes through this; Ray's gateway refuses those
    routes to every caller (management runs from the kernel side there)."""
    if allows(scope, needed):
        return None
    return {
        "error": (
            f"token {name!r} has scope {scope!r}; {what} needs a token with scope {needed!r} "
            f"(the home token, or `kernel-magics serve token --new NAME --scope {needed}`)"
        ),
        "required_scope": needed,
    }


def create_token(settings: Settings, name: str, scope: str = PREDICT) -> str:
    """A new named token (returned once; only its hash is kept). Replaces one of that name."""
    check_scope(scope)
    try:
        validate_name(name)
    except InvalidInput:
        raise InvalidInput(
            f"invalid token name {clip(name)!r}: use letters, digits, '-', '_' and '.'"
        ) from None
    if name in (HOME_TOKEN_NAME, ANONYMOUS):
        raise InvalidInput(f"{name!r} is reserved; choose another token name")
    token = secrets.token_urlsafe(32)
    private_home(settings.home)
    named = _read_named(settings)
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    named[name] = {"sha256": _digest(token), "created": created, "scope": scope}
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


def _scope(entry: dict) -> str:
    """A named token's scope; tokens made before scopes existed get the narrow one."""
    scope = entry.get("scope")
    return scope if scope in SCOPES else PREDICT


def list_tokens(settings: Settings) -> list[dict]:
    """Named tokens (never the tokens themselves): ``[{"name", "scope", "created"}]``."""
    return [
        {"name": n, "scope": _scope(d), "created": d.get("created", "")}
        for n, d in _read_named(settings).items()
    ]


class TokenTable:
    """Who an ``Authorization`` header belongs to, for a worker's request path.

    Every token, the home one included, is looked up by its SHA-256 (≈1 µs): no secret is
    ever a dict key or a byte-by-byte comparison, and a revoked token is simply gone from the
    table. ``tokens.json`` is stat'ed at most once a second to pick up changes."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._names: dict[str, str] = {}  # digest → token name
        self._scopes: dict[str, str] = {}  # token name → scope
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
        scopes = {n: _scope(d) for n, d in named.items()}
        if home:  # an empty home token must not make "Bearer " valid
            names[_digest(home)] = HOME_TOKEN_NAME
            scopes[HOME_TOKEN_NAME] = MANAGE
        self._names, self._scopes = names, scopes

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

    def scope(self, name: str) -> str:
        """The scope of a token ``identify`` named (predict for anything unknown)."""
        return self._scopes.get(name, PREDICT)
