"""Loopback HTTP helpers shared by both servers' measurements."""

from __future__ import annotations

import http.client
import socket
import subprocess
import time

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def post(
    port: int, path: str, body: bytes, ctype: str, headers: dict[str, str], timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes]:
    """One POST on a fresh connection: (status, lower-cased headers, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": ctype, **headers})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def wait_200(
    port: int,
    path: str,
    body: bytes,
    ctype: str,
    headers: dict[str, str],
    timeout: float,
    proc: subprocess.Popen | None = None,
    interval: float = 0.02,
) -> float | None:
    """perf_counter() of the first 200 answer, polling every ``interval``; None on timeout, or
    as soon as ``proc`` (the server being waited for) has exited."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if proc is not None and proc.poll() is not None:
            return None
        try:
            status, _, _ = post(port, path, body, ctype, headers, timeout=5.0)
            if status == 200:
                return time.perf_counter()
        except OSError:
            pass
        time.sleep(interval)
    return None
