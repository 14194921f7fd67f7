"""Inter-process calls: tiny HTTP/1.1 clients for the unix sockets of the inference process
(supervisor → workers, workers → supervisor, kernel → supervisor).

Both ends are ours, so this only needs what they speak: one request per connection with a
Content-Length body and ``Connection: close``. No torch, no numpy: the supervisor and the
kernel side import it.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
from typing import Any


def _encode(method: str, target: str, body: Any) -> bytes:
    if isinstance(body, bytes):
        payload = body
    else:
        payload = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def _decode(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    try:
        status = int(status_line.split()[1])
    except (IndexError, ValueError):
        raise ConnectionError(f"malformed response {status_line[:80]!r}") from None
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is not None:
        body = body[:length]
    return status, body


async def request(
    path: str, method: str, target: str, body: Any = None, timeout: float = 30.0
) -> tuple[int, bytes]:
    """One request over a unix socket; raises ConnectionError / TimeoutError when unreachable."""

    async def go() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 24)
        try:
            writer.write(_encode(method, target, body))
            await writer.drain()
            raw = await reader.read()  # the server closes after its answer
        finally:
            writer.close()
        return _decode(raw)

    try:
        return await asyncio.wait_for(go(), timeout)
    except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, OSError) as err:
        raise ConnectionError(f"unix socket {path}: {err}") from err


async def request_json(
    path: str, method: str, target: str, body: Any = None, timeout: float = 30.0
) -> tuple[int, dict]:
    status, raw = await request(path, method, target, body, timeout)
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {"error": raw.decode(errors="replace")[:500]}
    return status, data if isinstance(data, dict) else {"value": data}


class UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client`` over a unix socket: the kernel side reaches the supervisor with it."""

    def __init__(self, path: str, timeout: float = 10.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request_sync(
    path: str, method: str, target: str, body: Any = None, timeout: float = 10.0
) -> tuple[int, dict]:
    conn = UnixHTTPConnection(path, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Connection": "close"}
        conn.request(method, target, body=payload, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"error": raw.decode(errors="replace")[:500]}
        return resp.status, data if isinstance(data, dict) else {"value": data}
    finally:
        conn.close()
