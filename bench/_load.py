"""A bounded HTTP/1.1 keep-alive load client in pure Python (one thread, non-blocking sockets).

Two uses in the serving benchmark:

* the fallback load generator when ``wrk`` is not on PATH (``run(...)``);
* the swap-under-load recorder (``python bench/_load.py ...`` as a subprocess): it keeps
  ``--conns`` connections busy until its stdin closes (or ``--max-seconds``), records every
  response's send and receive times (``time.monotonic()``, comparable across processes on Linux),
  status and ``X-Model-Version`` header (status 0 = connection error), then writes them as JSON.

Each connection sends one request, waits for the whole response, then sends the next one
(closed loop, like wrk). Responses must carry ``Content-Length`` (both servers under test do).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import selectors
import socket
import sys
import time

RECONNECT_DELAY_S = 0.01


def build_request(
    host: str, port: int, path: str, body: bytes, content_type: str, headers: dict[str, str]
) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive",
    ]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Conn:
    __slots__ = ("sock", "out", "buf", "sent_at", "need", "status", "version", "retry_at")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.out = memoryview(b"")
        self.buf = bytearray()
        self.sent_at = 0.0
        self.need = -1  # total bytes (head + body) of the response being read; -1: head unknown
        self.status = 0
        self.version = ""
        self.retry_at = 0.0


class Load:
    """Closed-loop load on ``conns`` keep-alive connections; see ``run``."""

    def __init__(self, host: str, port: int, request: bytes, conns: int, record: bool) -> None:
        self.host, self.port, self.request = host, port, request
        self.sel = selectors.DefaultSelector()
        self.conns = [_Conn() for _ in range(conns)]
        self.record = record
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.conn_errors = 0
        # (send time, receive time, status, version); a connection error has status 0
        self.events: list[tuple[float, float, int, str]] = []

    # -- connection handling -----------------------------------------------------------------
    def _open(self, c: _Conn, now: float) -> None:
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            err = sock.connect_ex((self.host, self.port))
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                raise OSError(err, os.strerror(err))
        except OSError:
            self._fail(c, now, opened=False)
            return
        c.sock = sock
        self.sel.register(sock, selectors.EVENT_WRITE, c)
        self._send(c, now)

    def _send(self, c: _Conn, now: float) -> None:
        c.out = memoryview(self.request)
        c.buf.clear()
        c.need = -1
        c.sent_at = time.monotonic()
        assert c.sock is not None
        self.sel.modify(c.sock, selectors.EVENT_WRITE, c)

    def _fail(self, c: _Conn, now: float, opened: bool = True) -> None:
        self.conn_errors += 1
        if self.record:
            self.events.append((c.sent_at, now, 0, ""))
        if c.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(c.sock)
            c.sock.close()
            c.sock = None
        c.retry_at = now + RECONNECT_DELAY_S

    def _on_write(self, c: _Conn, now: float) -> None:
        assert c.sock is not None
        try:
            n = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError:
            self._fail(c, now)
            return
        c.out = c.out[n:]
        if not c.out:
            self.sel.modify(c.sock, selectors.EVENT_READ, c)

    def _on_read(self, c: _Conn, now: float) -> None:
        assert c.sock is not None
        try:
            data = c.sock.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError:
            self._fail(c, now)
            return
        if not data:
            self._fail(c, now)
            return
        c.buf += data
        if c.need < 0:
            end = c.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(c.buf[:end]).decode("latin-1").split("\r\n")
            try:
                c.status = int(head[0].split(" ", 2)[1])
            except (IndexError, ValueError):
                self._fail(c, now)
                return
            length, c.version = 0, ""
            for line in head[1:]:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "content-length":
                    length = int(value.strip())
                elif key == "x-model-version":
                    c.version = value.strip()
            c.need = end + 4 + length
        if len(c.buf) < c.need:
            return
        self.latencies.append(now - c.sent_at)
        self.statuses[c.status] = self.statuses.get(c.status, 0) + 1
        if self.record:
            self.events.append((c.sent_at, now, c.status, c.version))
        self._send(c, now)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, seconds: float, stop_fd: int | None = None) -> float:
        """Drive the load until ``seconds`` pass or ``stop_fd`` becomes readable (EOF)."""
        start = time.monotonic()
        if stop_fd is not None:
            self.sel.register(stop_fd, selectors.EVENT_READ, None)
        for c in self.conns:
            self._open(c, start)
        deadline = start + seconds
        stopped = False
        while not stopped:
            now = time.monotonic()
            if now >= deadline:
                break
            for c in self.conns:
                if c.sock is None and now >= c.retry_at:
                    self._open(c, now)
            ready = self.sel.select(timeout=min(0.05, deadline - now))
            # One stamp per wake-up: the data of every ready socket had arrived by then, so it is
            # the tightest receive time this loop can know (later events are not stamped later
            # just because they were handled after others).
            now = time.monotonic()
            for key, mask in ready:
                c = key.data
                if c is None:  # stdin: parent closed it
                    stopped = True
                    break
                if c.sock is None:
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._on_write(c, now)
                elif mask & selectors.EVENT_READ:
                    self._on_read(c, now)
        elapsed = time.monotonic() - start
        for c in self.conns:
            if c.sock is not None:
                c.sock.close()
        self.sel.close()
        return elapsed


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * len(ordered)) - 1))
    return ordered[index]


def run(
    host: str,
    port: int,
    path: str,
    body: bytes,
    content_type: str,
    headers: dict[str, str],
    conns: int,
    seconds: float,
) -> dict:
    """One bounded closed-loop run; the same summary shape as the wrk runner's."""
    load = Load(host, port, build_request(host, port, path, body, content_type, headers), conns, 0)
    elapsed = load.run(seconds)
    ok = load.statuses.get(200, 0)
    total = sum(load.statuses.values())
    lat = load.latencies
    return {
        "tool": "python",
        "requests": total,
        "seconds": elapsed,
        "req_s": ok / elapsed if elapsed else 0.0,
        "errors": (total - ok) + load.conn_errors,
        "p50_ms": (percentile(lat, 50) or 0.0) * 1e3,
        "p99_ms": (percentile(lat, 99) or 0.0) * 1e3,
        "mean_ms": (sum(lat) / len(lat) * 1e3) if lat else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--body-file", required=True)
    p.add_argument("--content-type", default="application/json")
    p.add_argument("--header", action="append", default=[], help="'Name: value'")
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--max-seconds", type=float, default=60.0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    with open(args.body_file, "rb") as fh:
        body = fh.read()
    request = build_request(args.host, args.port, args.path, body, args.content_type, headers)
    load = Load(args.host, args.port, request, args.conns, record=True)
    print("started", flush=True)
    elapsed = load.run(args.max_seconds, stop_fd=sys.stdin.fileno())
    with open(args.out, "w") as fh:
        json.dump(
            {
                "seconds": elapsed,
                "events": load.events,
                "statuses": load.statuses,
                "conn_errors": load.conn_errors,
                "p99_ms": (percentile(load.latencies, 99) or 0.0) * 1e3,
            },
            fh,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
