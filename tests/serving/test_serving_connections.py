"""Many idle connections against the real inference process: it raises its open-file limit at
start, so a few hundred idle clients beyond the soft limit it was started with do not lock
others out; past its connection cap a new client gets a 503 with a JSON body (not a reset), and
is served again once the idle ones are gone."""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from kit.serving import MLP, auth, log_model, rows

from kernel_magics.config import Settings, load_settings
from kernel_magics.serving.process.cleanup import state_pids, stop_pids
from kernel_magics.targets.local import LocalTarget

STARTED_WITH = 256  # the soft open-file limit the process is started with
CAP = 300  # its connection cap (KERNEL_MAGICS_MAX_CONNECTIONS)


@pytest.fixture(scope="module")
def settings(km_home: Path) -> Iterator[Settings]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERNEL_MAGICS_MAX_CONNECTIONS", str(CAP))
        # idle test sockets stay open as long as the tests need them
        mp.setenv("KERNEL_MAGICS_HEADER_TIMEOUT_S", "300")
        mp.setenv("KERNEL_MAGICS_IDLE_TIMEOUT_S", "300")
        yield load_settings()


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[LocalTarget]:
    """The process, started as a login shell would start it: a soft limit of 256 open files
    (the hard limit as it is); it inherits that from this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard > 2 * CAP, "the hard limit is too low here"
    c = LocalTarget(settings)
    resource.setrlimit(resource.RLIMIT_NOFILE, (STARTED_WITH, hard))
    try:
        c.ensure_running(timeout=90)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield c
    finally:
        pids = state_pids(settings.state_file)
        c.stop()
        stop_pids(pids)


@pytest.fixture(scope="module")
def url(client: LocalTarget, settings: Settings) -> str:
    log_model(settings, "crowd", MLP(seed=5), rows(4))
    client.deploy("crowd")
    assert client.url is not None
    return client.url


def predict(url: str, client: LocalTarget) -> int:
    r = requests.post(
        f"{url}/v1/models/crowd:predict",
        json={"instances": rows(2).tolist()},
        headers=auth(client),
        timeout=60,
    )
    return r.status_code


@contextlib.contextmanager
def idle_connections(url: str, n: int) -> Iterator[list[socket.socket]]:
    port = int(url.rsplit(":", 1)[1])
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        yield socks
    finally:
        for s in socks:
            s.close()


def eventually(check, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def test_idle_clients_past_the_soft_open_file_limit_do_not_lock_others_out(url, client):
    with idle_connections(url, STARTED_WITH + 30):
        assert predict(url, client) == 200
        assert requests.get(f"{url}/ping", timeout=30).text == "pong"
    assert predict(url, client) == 200


def test_past_the_connection_cap_a_new_client_gets_503_then_is_served_again(url, client):
    with idle_connections(url, CAP + 20):
        r = requests.get(f"{url}/ping", timeout=30)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert "connections open, its limit" in r.json()["error"]
    assert eventually(lambda: predict(url, client) == 200)
