"""Access: named tokens (created, metered, revoked while the process runs), the home token's
usage in ``%serve status``, and the refusal to bind beyond loopback without ``allow_remote``."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from kit.serving import MLP, log_model, rows

from kernel_magics import api
from kernel_magics.config import Settings
from kernel_magics.display import status as display_status
from kernel_magics.errors import InvalidInput, NotFound
from kernel_magics.records import TokenUsage
from kernel_magics.serving.process.cleanup import state_pids, stop_pids
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
    assert "usage by token:" in text
    assert "dashboard" in text
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


def _manage(client: LocalTarget, token: str, action: str, body: dict | None = None):
    url = f"{client.url}/v1/models/guarded/{action}"
    headers = {"Authorization": f"Bearer {token}"}
    return requests.post(url, json=body or {}, headers=headers, timeout=60)


def test_a_predict_token_cannot_change_what_is_live(deployed, client, settings):
    """Named tokens default to scope predict: every management route answers 403 naming the
    scope it needs, and nothing moves; a manage token (and the home token) may deploy."""
    log_model(settings, "guarded", MLP(seed=8), rows(4))  # a second version to deploy
    live = client.status().models["guarded"].version
    viewer = api.token_create("viewer", settings=settings)  # no scope given: predict
    assert _eventually(lambda: _post(deployed, viewer) == 200)  # a valid token for predictions
    for action, body in (
        ("deploy", {"ref": str(live + 1)}),
        ("rollback", {}),
        ("promote", {}),
        ("undeploy", {}),
    ):
        answer = _manage(client, viewer, action, body)
        assert answer.status_code == 403, (action, answer.text)
        doc = answer.json()
        assert doc["required_scope"] == "manage"
        assert "'viewer'" in doc["error"]
        assert "'manage'" in doc["error"]
    assert client.status().models["guarded"].version == live  # nothing moved
    assert [e.to_version for e in api.history("guarded", settings=settings)][-1] == live

    ops = api.token_create("ops", scope="manage", settings=settings)
    listed = {t["name"]: t["scope"] for t in api.token_list(settings=settings)}
    assert listed["viewer"] == "predict"
    assert listed["ops"] == "manage"
    assert _eventually(lambda: _manage(client, ops, "deploy", {"ref": str(live)}).ok)
    assert _manage(client, ops, "deploy", {"ref": str(live + 1)}).status_code == 200
    assert client.status().models["guarded"].version == live + 1
    assert _manage(client, client.token(), "rollback").status_code == 200  # the home token
    assert client.status().models["guarded"].version == live
    with pytest.raises(InvalidInput, match="scope"):
        api.token_create("admin", scope="root", settings=settings)
    api.token_revoke("viewer", settings=settings)
    api.token_revoke("ops", settings=settings)


def test_token_scope_from_the_command_line(settings, capsys):
    from kernel_magics import cli

    assert cli.main(["serve", "token", "--new", "release", "--scope", "manage"]) == 0
    assert cli.main(["serve", "token", "--new", "board"]) == 0
    capsys.readouterr()
    assert cli.main(["serve", "token", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:3] == ["release", "scope", "manage"] for line in lines)
    assert any(line.split()[:3] == ["board", "scope", "predict"] for line in lines)
    assert cli.main(["serve", "status", "--scope", "manage"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert "--scope goes with token --new" in err
    assert "\n" not in err
    for name in ("release", "board"):
        api.token_revoke(name, settings=settings)


def test_metrics_need_a_token_unless_opened_on_loopback(deployed, client, settings, tmp_path):
    """/metrics labels series with token names: 401 without a valid token (any scope); the
    setting opens it for a scraper on loopback, never beyond."""
    board = api.token_create("board", settings=settings)
    assert _eventually(lambda: _post(deployed, board) == 200)
    url = f"{client.url}/metrics"
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        answer = requests.get(url, headers=headers, timeout=10)
        assert answer.status_code == 401
        assert "board" not in answer.text
        assert "token" in answer.json()["error"]
    for token in (board, client.token()):
        answer = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert answer.status_code == 200
        assert 'km_token_requests_total{token="board"}' in answer.text
    api.token_revoke("board", settings=settings)

    opened = settings.replace(home=tmp_path, metrics_requires_token=False)
    assert not opened.requires_metrics_token
    assert opened.replace(host="0.0.0.0", allow_remote=True).requires_metrics_token
    scraped = LocalTarget(opened)
    scraped.ensure_running(timeout=90)
    try:
        answer = requests.get(f"{scraped.url}/metrics", timeout=10)
        assert answer.status_code == 200
        assert "km_" in answer.text
        assert _post(f"{scraped.url}/v1/models/guarded:predict", None) == 401  # predict: still
    finally:
        pids = state_pids(opened.state_file)
        scraped.stop()
        stop_pids(pids)


def _open_to_others(home: Path) -> list[str]:
    """Entries under ``home`` (itself included) that group or other users may use. An entry
    gone between the listing and its ``lstat`` is left out: SQLite's ``mlflow.db-journal``
    lives only while a write to the store is under way."""
    found = []
    for path in [home, *home.rglob("*")]:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & 0o077:
            found.append(f"{path.relative_to(home)} {stat.S_IMODE(mode):o}")
    return sorted(found)


def test_the_home_is_private_and_old_homes_are_tightened(settings, tmp_path):
    """A new home is 0700 with its files 0600 whatever the caller's umask; what the inference
    process writes is private; an old world-readable home is tightened on the next start, with
    one line saying so."""
    home = tmp_path / "home"
    fresh = settings.replace(home=home)
    previous = os.umask(0o022)  # a common default: files 0644, folders 0755
    target = LocalTarget(fresh)
    try:
        log_model(fresh, "private", MLP(seed=3), rows(4))
        api.token_create("reader", settings=fresh)
        target.ensure_running(timeout=90)
        target.deploy("private")
        assert _post(f"{target.url}/v1/models/private:predict", target.token()) == 200
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        for name in ("mlflow.db", "server.json", "token", "tokens.json", "logs/server.log"):
            assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
        # Only what this (kernel-side) process wrote into artifacts/ may still be wider, and
        # the 0700 home keeps even that from other users; the next start tightens it.
        assert all(e.startswith("artifacts") for e in _open_to_others(home))
        pids = state_pids(fresh.state_file)
        target.stop()
        stop_pids(pids)
        target.ensure_running(timeout=90)  # a start: the inference process tightens the rest
        assert _open_to_others(home) == []
    finally:
        os.umask(previous)
        pids = state_pids(fresh.state_file)
        target.stop()
        stop_pids(pids)

    # A home made before this rule: everything readable by everyone.
    for path in [home, *home.rglob("*")]:
        if not path.is_symlink():
            path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o055)
    assert len(_open_to_others(home)) > 5
    done = subprocess.run(
        [sys.executable, "-m", "kernel_magics.cli", "--home", str(home), "models", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "private" in lines[0], done.stderr
    assert str(home) in lines[0], done.stderr
    assert _open_to_others(home) == []
    # A file a kernel wrote into the private home under its umask: tightened without a word.
    written = home / "artifacts" / "written-by-a-kernel"
    written.write_text("x")
    written.chmod(0o644)
    again = subprocess.run(done.args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert again.stderr == ""
    assert _open_to_others(home) == []
