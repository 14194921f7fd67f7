"""The whole lifecycle on a shared store: a real PostgreSQL cluster, a real ``mlflow server`` on
it started by ``kernel-magics store serve`` (artifacts proxied by the server), and the real
inference process reading versions through that server alone.

PostgreSQL refuses to run as root, so the cluster runs as the ``postgres`` user (``runuser``),
in a temp folder, on a free loopback port, with ``fsync=off`` (a throwaway cluster). Everything
started here listens on 127.0.0.1 and is stopped by PID (process group) at the end.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from kit.children import TRAIN_SCRIPT, child_env, clean_env, last_json
from kit.home import stop_inference_process
from kit.net import free_port

from kernel_magics import api, store_server
from kernel_magics.config import Settings, load_settings
from kernel_magics.errors import InvalidInput
from kernel_magics.serving.process.cleanup import stop_pids
from kernel_magics.store import Store

# Debian's postgresql (`make setup-system`); the newest installed major version.
PG_BIN = max(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
# The cluster trusts loopback (any password is accepted), so a URL can carry one to show where
# it travels: never on a command line.
PG_PASSWORD = secrets.token_hex(12)


def _as_postgres(*command: str) -> None:
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", *command], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster; yields its SQLAlchemy URL (psycopg 3)."""
    # Not under pytest's tmp folder: that one is private to root, and the cluster runs as
    # postgres, which must reach its data folder.
    root = Path(tempfile.mkdtemp(prefix="km-pg-"))
    root.chmod(0o755)
    shutil.chown(root, "postgres", "postgres")  # its log and socket are written there too
    data, port = root / "data", free_port()
    subprocess.run(["install", "-d", "-o", "postgres", "-g", "postgres", str(data)], check=True)
    _as_postgres(
        str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync"
    )
    options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off"
    _as_postgres(
        str(PG_BIN / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(root / "log"),
        "-w",
        "-o",
        options,
        "start",
    )
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop_pids([pid], only_ours=False)  # the postmaster ends its backends on TERM
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def tracking_url(postgres: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``kernel-magics store serve`` on the cluster, the URL (with a password) in the
    environment; yields the server's URL."""
    artifacts, port = tmp_path_factory.mktemp("server-artifacts"), free_port()
    log = tmp_path_factory.mktemp("server-log") / "server.log"
    command = [
        sys.executable, "-m", "kernel_magics.cli", "store", "serve",
        "--artifacts", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = clean_env()
    env[store_server.BACKEND_ENV] = postgres.replace("postgres@", f"postgres:{PG_PASSWORD}@", 1)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        store_server.wait_ready(url, proc)  # type: ignore[arg-type]
        yield url
    finally:
        # The command stops its server on TERM; KILL after 20 s if it did not.
        store_server.stop(proc, timeout=20)  # type: ignore[arg-type]
        # The command stopped its server (a process group of its own) before it exited.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


@pytest.fixture(scope="module")
def settings(tracking_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("km-remote")
    s = load_settings(home=home, tracking_uri=tracking_url, autostart=False)
    try:
        yield s
    finally:
        stop_inference_process(s)


def _mlp(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))


def _outputs(model: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(X)).numpy()


def test_lifecycle_through_the_tracking_server(
    settings: Settings, digits: tuple[np.ndarray, np.ndarray], tracking_url: str
) -> None:
    X, y = digits
    r1 = api.train(_mlp(0), X, y, name="team", epochs=2, progress="none", settings=settings)
    own = _mlp(1)
    r2 = api.register(own, X[:4], name="team", task="classification", settings=settings)
    assert (r1.version, r2.version) == (1, 2)

    store = Store(settings)
    assert store.uri == tracking_url
    info = store.resolve("team", 1)
    assert info.sha256
    assert not info.source.startswith(("file:", "/"))
    local = Path(store.local_path(info))  # downloaded through the server into home/cache
    assert settings.cache_dir in local.parents or local == settings.cache_dir
    assert store.resolve("team", 1).run_id == r1.run_id
    assert store.run_metrics([r1.run_id])[r1.run_id]["accuracy"] > 0.3

    api.deploy("team@1", settings=settings)
    np.testing.assert_allclose(
        api.predict("team", X[:8], raw=True, settings=settings),
        _outputs(r1.model, X[:8]),
        rtol=1e-5,
        atol=1e-5,
    )
    api.deploy("team@2", settings=settings)
    np.testing.assert_allclose(
        api.predict("team", X[:8], raw=True, settings=settings), _outputs(own, X[:8]), atol=1e-5
    )
    result = api.rollback("team", settings=settings)
    assert (result.previous_version, result.version) == (2, 1)
    assert store.live_version("team") == 1
    events = api.history("team", settings=settings)
    assert [(e.action, e.from_version, e.to_version) for e in events] == [
        ("deploy", None, 1),
        ("deploy", 1, 2),
        ("rollback", 2, 1),
    ]


def test_restart_serves_what_was_live_from_the_store_alone(
    settings: Settings, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    X, _ = digits
    before = api.predict("team", X[:8], raw=True, settings=settings)
    assert api.server_stop(settings=settings)
    shutil.rmtree(settings.cache_dir, ignore_errors=True)  # nothing local left to load from
    status = api.server_start(settings=settings)
    assert status is not None
    deadline = time.monotonic() + 60
    while (status is None or "team" not in status.models) and time.monotonic() < deadline:
        time.sleep(0.5)
        status = api.server_status(settings=settings)
    assert status is not None
    assert status.models["team"].version == 1
    np.testing.assert_allclose(
        api.predict("team", X[:8], raw=True, settings=settings), before, atol=1e-6
    )


def test_four_parallel_trainings_lose_nothing(
    settings: Settings, tracking_url: str, tmp_path: Path
) -> None:
    env = child_env(tmp_path, MLFLOW_TRACKING_URI=tracking_url, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TRAIN_SCRIPT, str(seed), "parallel"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    results: list[dict[str, Any]] = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        results.append(last_json(out))
    versions = Store(settings).versions("parallel")
    assert sorted(v.version for v in versions) == [1, 2, 3, 4]
    assert sorted(r["version"] for r in results) == [1, 2, 3, 4]
    assert {v.run_id for v in versions} == {r["run_id"] for r in results}
    assert all(v.sha256 for v in versions)


def _readable(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # gone meanwhile
        return b""


def test_the_database_password_is_on_no_command_line(tracking_url: str) -> None:
    """``ps`` shows every process's arguments to every user: the password travels in the
    environment of the command and of its ``mlflow server`` (readable by their owner only)."""
    secret = PG_PASSWORD.encode()
    procs = [p for p in Path("/proc").iterdir() if p.name.isdigit()]
    assert not [p.name for p in procs if secret in _readable(p / "cmdline")]
    holders = [p for p in procs if secret in _readable(p / "environ")]
    commands = [_readable(p / "cmdline").replace(b"\0", b" ") for p in holders]
    assert any(b"kernel_magics.cli store serve" in c for c in commands), commands
    assert any(b"mlflow server" in c for c in commands), commands


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--backend", "nonsense"], "is not a database URL"),
        (["--backend", "postgresql://u@db/x", "--host", "0.0.0.0"], "--allow-remote"),
        (["--backend", "postgresql://u@db/x", "--port", "0"], "--port must be"),
        (["--backend", "postgresql://u:hunter2@db/x"], "MLFLOW_BACKEND_STORE_URI"),
        ([], "no database URL: set MLFLOW_BACKEND_STORE_URI"),
        (["--backend-file", "/nonexistent/url"], "cannot read --backend-file"),
        (["--backend", "postgresql://u@db/x", "--backend-file", "f"], "one of --backend and"),
    ],
)
def test_store_serve_refuses_bad_options_in_one_line(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    from kernel_magics import cli

    monkeypatch.delenv(store_server.BACKEND_ENV, raising=False)
    assert cli.main(["store", "serve", *argv]) == cli.EXIT_ERROR
    err = capsys.readouterr().err.strip()
    assert expected in err
    assert "\n" not in err
    assert "hunter2" not in err


def test_the_backend_url_from_a_file_or_the_environment(tmp_path: Path) -> None:
    url = "postgresql://u:hunter2@db:5432/x"
    file = tmp_path / "backend"
    file.write_text(url + "\n")
    file.chmod(0o644)
    with pytest.raises(InvalidInput, match="chmod 600") as refused:
        store_server.backend_url(None, str(file), {})
    assert "hunter2" not in str(refused.value)
    file.chmod(0o600)
    assert store_server.backend_url(None, str(file), {}) == url
    assert store_server.backend_url(None, None, {store_server.BACKEND_ENV: url}) == url
    options = store_server.ServerOptions(backend=url, artifacts=tmp_path)
    command, env = store_server.server_command(options)
    assert not [arg for arg in command if "hunter2" in arg]
    assert env[store_server.BACKEND_ENV] == url


def test_quickstart_runs_unchanged_against_the_tracking_server(
    settings: Settings, tracking_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quickstart notebook, not one cell changed, with MLFLOW_TRACKING_URI pointing at the
    team's server: every cell runs, and the server's registry ends as the notebook left it."""
    import papermill

    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_url)
    monkeypatch.setenv("KERNEL_MAGICS_HOME", str(settings.home))  # its process: stopped above
    monkeypatch.setenv("KERNEL_MAGICS_PROGRESS", "text")
    papermill.execute_notebook(
        str(notebook),
        str(tmp_path / "out.ipynb"),
        parameters={"epochs": 2, "name": "quick-pg"},
        kernel_name="python3",
        progress_bar=False,
    )
    store = Store(settings)
    assert [v.version for v in store.versions("quick-pg")] == [1, 2]
    assert store.live_version("quick-pg") == 1  # deployed v1, v2, rolled back to v1
