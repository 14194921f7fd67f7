"""Access: named tokens (created, metered, revoked while the process runs), the home token's
usage in ``%serve status``, and the refusal to bind beyond loopback without ``allow_remote``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import pytest
import requests
from kit.serving import MLP, log_model, rows

from kernel_magics import api, display_status
from kernel_magics.config import Settings
from kernel_magics.errors import InvalidInput, NotFound
from kernel_magics.records import TokenUsage
from kernel_magics.targets.local import LocalTarget


@pytest.fixture(scope="module")
def deployed(client: LocalTarget, settings: Settings) -> str:
    log_model(settings, "guarded", MLP(seed=7), rows(4))
    client.deploy("guarded")
    return f"{client.url}/v1/models/guarded:predict"


def _post(url: str, token: str | None, n_rows: int = 1) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body = {"instances": rows(n_rows).tolist()}
    return requests.post(url, json=body, headers=headers, timeout=10).status_code


def _eventually(check, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_named_token_is_metered_then_revoked(deployed, client, settings):
    token = api.token_create("dashboard", settings=settings)
    assert token not in settings.tokens_file.read_text()  # only its hash is kept
    assert stat.S_IMODE(settings.tokens_file.stat().st_mode) == 0o600
    assert _eventually(lambda: _post(deployed, token) == 200)  # picked up without a restart
    before = api.server_status(settings=settings).usage.get("dashboard", TokenUsage())
    for n in (3, 5):
        assert _post(deployed, token, n) == 200
    assert _post(deployed, client.token(), 2) == 200
    usage = api.server_status(settings=settings).usage
    assert usage["dashboard"].requests == before.requests + 2
    assert usage["dashboard"].rows == before.rows + 8
    assert usage["default"].rows >= 2
    text = display_status.status_text(api.server_status(settings=settings))
    assert "usage by token:" in text and "dashboard" in text
    assert [t["name"] for t in api.token_list(settings=settings)] == ["dashboard"]

    api.token_revoke("dashboard", settings=settings)
    assert _eventually(lambda: _post(deployed, token) == 401)
    assert _post(deployed, client.token()) == 200  # the home token is untouched


def test_bad_tokens_and_token_names(deployed, settings):
    assert _post(deployed, None) == 401
    assert _post(deployed, "not-a-token") == 401
    assert _post(deployed, "x" * 2000) == 401
    for name in ("default", "anonymous", "../etc", ""):
        with pytest.raises(InvalidInput):
            api.token_create(name, settings=settings)
    with pytest.raises(NotFound):
        api.token_revoke("never-made", settings=settings)


def test_binding_beyond_loopback_needs_allow_remote(settings, tmp_path):
    with pytest.raises(InvalidInput, match="allow_remote"):
        api.server_start(host="0.0.0.0", settings=settings)
    # The process itself refuses too (a start that bypasses the kernel-side check).
    env = {**os.environ, **settings.replace(home=tmp_path, host="0.0.0.0").as_env()}
    done = subprocess.run(
        [sys.executable, "-m", "kernel_magics.serving"], env=env, timeout=60, capture_output=True
    )
    assert done.returncode == 1
    assert not (tmp_path / "server.json").exists()
    # Allowed on purpose, predictions need a token even where the settings would waive it.
    remote = settings.replace(host="0.0.0.0", allow_remote=True, predict_requires_token=False)
    remote.check_bind()
    assert remote.requires_predict_token
    assert not settings.replace(predict_requires_token=False).requires_predict_token
