"""Hostile connections against the inference process (the README's reliability rows "header
flood" and "idle sockets"):

- header flood: one request with 200,000 (then 400,000) copies of ``X-A: aaaa`` (2.2 / 4.4 MB)
  while another client sends ``/ping`` every 10 ms: what the flood gets back, and the slowest
  ping answered meanwhile;
- idle sockets: the process started with a soft open-file limit of 1024 (the common default),
  1,010 connections that send nothing, then a new client's request: what it gets, and when the
  silent connections are closed.

    .venv/bin/python bench/hostile_http.py [flood] [idle]     (both by default)

Numbers depend on the machine; the verdicts (status codes, a reset or not) do not.
"""

from __future__ import annotations

import resource
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import contextlib

from _procs import private_home, stop_leftover_server

IDLE = 1010
STARTED_WITH = 1024


def ping(port: int, timeout: float = 10.0) -> str:
    """One ``GET /ping`` on a fresh connection: the status, or how it failed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = s.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except TimeoutError:
        return "timeout"
    except OSError as err:
        return type(err).__name__
    return data.split(b" ", 2)[1].decode() if data else "closed without an answer"


def flood(port: int, copies: int) -> str:
    request = b"GET /ping HTTP/1.1\r\nHost: x\r\n" + b"X-A: aaaa\r\n" * copies + b"\r\n"
    slowest = [0.0]
    done = threading.Event()

    def pinger() -> None:
        while not done.is_set():
            t = time.perf_counter()
            ping(port)
            slowest[0] = max(slowest[0], time.perf_counter() - t)
            time.sleep(0.01)

    thread = threading.Thread(target=pinger)
    thread.start()
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        sender = threading.Thread(target=lambda: _send_all(s, request))
        sender.start()
        try:
            answer = s.recv(4096).split(b"\r\n", 1)[0].decode() or "closed"
        except OSError as err:
            answer = type(err).__name__
        took = time.perf_counter() - t
        sender.join(60)
    time.sleep(0.2)
    done.set()
    thread.join()
    return (
        f"{len(request) / 1e6:.1f} MB head: {answer!r} after {took * 1000:.0f} ms; "
        f"slowest /ping meanwhile {slowest[0] * 1000:.0f} ms"
    )


def _send_all(s: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        s.sendall(data)


def idle_sockets(port: int) -> str:
    socks = []
    for _ in range(IDLE):
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        except OSError:
            break
    time.sleep(0.5)
    verdict = ping(port)
    t = time.perf_counter()
    closed, last = 0, 0.0
    for s in socks:  # which of them the server closes within 30 s, and when the last one
        left = 30 - (time.perf_counter() - t)
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data = s.recv(1)
        except ConnectionResetError:
            data = b""
        except OSError:  # still open at the deadline
            continue
        if not data:
            closed, last = closed + 1, time.perf_counter() - t
    for s in socks:
        s.close()
    gone = f"{closed} closed by the server within 30 s (the last after {last:.1f} s)"
    return f"{len(socks)} silent connections: a new client got {verdict!r}; {gone}"


def main() -> int:
    from kernel_magics.config import load_settings
    from kernel_magics.targets.local import LocalTarget

    _, home = private_home("km-hostile-")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(STARTED_WITH, hard), hard))
    target = LocalTarget(load_settings())
    try:
        target.ensure_running(timeout=90)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        port = int(str(target.url).rsplit(":", 1)[1])
        scenarios = sys.argv[1:] or ["flood", "idle"]
        if "flood" in scenarios:
            for copies in (200_000, 400_000):
                print("header flood:", flood(port, copies), flush=True)
        if "idle" in scenarios:
            print("idle sockets:", idle_sockets(port), flush=True)
        print("afterwards /ping:", ping(port))
    finally:
        target.stop()
        stop_leftover_server(home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
