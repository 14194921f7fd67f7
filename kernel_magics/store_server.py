"""A lean MLflow tracking server for a team: ``kernel-magics store serve``.

Every kernel then sets ``%config KernelMagics.tracking_uri = "http://host:port"`` (or
``MLFLOW_TRACKING_URI``) and shares runs, versions, the live alias and the deployment history.
The server proxies artifacts (``--artifacts-destination``), so clients need no access to the
artifact folder: the kernel side and the inference process download a version into
``home/cache/`` before its hash check (``Store.local_path``).

MLflow's default server form spawns a job-execution runner and several workers (≈ 15 processes,
3.3 GB here); one worker without the job runner is ≈ 0.5 GB and enough for a team's notebooks.

The database URL often carries a password, and every user of the machine can read every
process's command line (``ps``): the URL comes from ``MLFLOW_BACKEND_STORE_URI`` or a file
(``--backend-file``), never from argv unless it has no password, and the ``mlflow server``
child gets it through its environment (which MLflow's server reads), not its arguments.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from kernel_magics.config import LOOPBACK_HOSTS
from kernel_magics.errors import InvalidInput, ServiceUnavailable
from kernel_magics.serving.files import PRIVATE_UMASK, open_private_append

BACKEND_SCHEMES = ("postgresql", "mysql", "sqlite", "mssql")
READY_TIMEOUT_S = 120.0
BACKEND_ENV = "MLFLOW_BACKEND_STORE_URI"  # MLflow's own name: ``mlflow server`` reads it too


@dataclass(frozen=True)
class ServerOptions:
    backend: str  # a SQLAlchemy URL: postgresql://user@host:port/db (psycopg 3)
    artifacts: Path
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 1
    allow_remote: bool = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def backend_url(
    argument: str | None, file: str | None, environ: Mapping[str, str] = os.environ
) -> str:
    """The database URL from ``--backend-file``, else ``MLFLOW_BACKEND_STORE_URI``, else
    ``--backend`` when it carries no password (a command line is public: ``ps``)."""
    if sum(bool(x) for x in (argument, file)) > 1:
        raise InvalidInput("give one of --backend and --backend-file")
    if file:
        path = Path(file).expanduser()
        try:
            mode = path.stat().st_mode
            url = path.read_text().strip()
        except OSError as err:
            raise InvalidInput(f"cannot read --backend-file {file}: {err.strerror}") from None
        if mode & 0o077 and _has_password(url):
            raise InvalidInput(
                f"--backend-file {file} holds a password and other users may read it: "
                f"chmod 600 {file}"
            )
        return url
    if argument:
        if _has_password(argument):
            raise InvalidInput(
                f"--backend {_redacted(argument)} puts a password on the command line, where "
                f"`ps` shows it to every user: set {BACKEND_ENV} or use --backend-file PATH"
            )
        return argument
    url = environ.get(BACKEND_ENV, "").strip()
    if not url:
        raise InvalidInput(
            f"no database URL: set {BACKEND_ENV}=postgresql://USER:PASSWORD@HOST:PORT/DB, or "
            "use --backend-file PATH (or --backend URL without a password)"
        )
    return url


def check_options(options: ServerOptions) -> None:
    scheme = options.backend.split(":", 1)[0].split("+", 1)[0]
    if scheme not in BACKEND_SCHEMES:
        raise InvalidInput(
            f"backend {_redacted(options.backend)!r} is not a database URL "
            "(use postgresql://USER@HOST:PORT/DB, or mysql://, sqlite:///PATH)"
        )
    if not 0 < options.port < 65536:
        raise InvalidInput(f"--port must be in 1..65535, got {options.port}")
    if options.workers < 1:
        raise InvalidInput(f"--workers must be >= 1, got {options.workers}")
    # The tracking server has no authentication of its own: reachable from the network, anyone
    # there may register and overwrite the production alias. Say so by a flag.
    if options.host not in LOOPBACK_HOSTS and not options.allow_remote:
        raise InvalidInput(
            f"--host {options.host!r} exposes the store (no authentication) beyond this machine: "
            "add --allow-remote to mean it, behind a firewall or an authenticating proxy"
        )


def server_command(options: ServerOptions) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` command line and environment for ``options``."""
    check_options(options)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--artifacts-destination",
        str(Path(options.artifacts).expanduser().resolve()),
        "--host",
        options.host,
        "--port",
        str(options.port),
        "--workers",
        str(options.workers),
    ]
    env = dict(os.environ)
    env[BACKEND_ENV] = options.backend  # not an argument: ps shows arguments to everyone
    # The job-execution runner (MLflow 3) is what makes the default form heavy; the lifecycle
    # never submits jobs.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    return command, env


def start(options: ServerOptions, *, log_file: Path | None = None) -> subprocess.Popen[bytes]:
    """Start the server in its own process group (``stop`` ends the group) and wait until it
    answers ``/health``."""
    command, env = server_command(options)
    Path(options.artifacts).expanduser().mkdir(mode=0o700, parents=True, exist_ok=True)
    out = os.fdopen(open_private_append(log_file), "ab") if log_file else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            umask=PRIVATE_UMASK,  # the artifacts it writes are for this user alone
        )
    finally:
        if log_file:
            out.close()  # type: ignore[union-attr]
    try:
        wait_ready(options.url, proc)
    except BaseException:
        stop(proc)
        raise
    return proc


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceUnavailable(
                f"mlflow server exited with code {proc.returncode} before it answered {url}"
            )
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise ServiceUnavailable(f"mlflow server did not answer {url}/health within {timeout:.0f} s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """TERM the server's process group (the server and its uvicorn worker), then KILL: the
    ``mlflow server`` parent can outlive its TERMed worker for a long while."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            continue
        with contextlib.suppress(ProcessLookupError):  # what the leader left behind
            os.killpg(proc.pid, signal.SIGKILL)
        return


def serve(options: ServerOptions) -> int:
    """Run the server in the foreground until it exits, Ctrl-C, SIGTERM or SIGHUP; the server
    runs in a process group of its own, so it is stopped here whichever way this ends."""

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(0)

    # Installed before the start: a TERM while it waits for /health stops the server too.
    previous = {sig: signal.signal(sig, _exit) for sig in (signal.SIGTERM, signal.SIGHUP)}
    proc = None
    try:
        proc = start(options)
        print(
            f"MLflow tracking server at {options.url} (backend {_redacted(options.backend)}, "
            f"artifacts {options.artifacts}); set MLFLOW_TRACKING_URI={options.url}",
            flush=True,
        )
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc is not None:
            stop(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _has_password(url: str) -> bool:
    creds, at, _ = url.partition("://")[2].rpartition("@")
    return bool(at) and ":" in creds


def _redacted(url: str) -> str:
    """A backend URL without its password, for printing."""
    if not _has_password(url):
        return url
    scheme, sep, rest = url.partition("://")
    creds, _, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
