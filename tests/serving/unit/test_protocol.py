"""The HTTP/1.1 server side (``request/protocol.py``): a real ``Connection`` on a loopback
socket in this process, fed raw bytes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from kit.model_dirs import run_loop

from kernel_magics.serving.request.bodies import describe_error
from kernel_magics.serving.request.protocol import Connection, Request

MAX_BODY = 1024


def echo(req: Request, conn: Connection) -> None:
    """Answers what it parsed; ``/later`` answers after 50 ms, ``/boom`` raises."""
    doc = {
        "method": req.method.decode(),
        "path": req.path.decode(),
        "query": req.query.decode(),
        "body": req.body.decode("latin-1"),
        "headers": {k.decode(): v.decode() for k, v in req.headers.items()},
    }
    if req.path == b"/boom":
        raise RuntimeError("handler bug")
    if req.path == b"/later":
        asyncio.get_running_loop().call_later(
            0.05, lambda: conn.send(200, orjson.dumps(doc), req=req)
        )
        return
    conn.send(200, orjson.dumps(doc), req=req)


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return orjson.loads(self.body)


def parse_responses(raw: bytes) -> list[Response]:
    """Split a byte stream into responses (each with a Content-Length, as ours always have)."""
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, raw[:200]
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if status == 100:
            out.append(Response(100, headers, b""))
            raw = rest
            continue
        length = int(headers["content-length"])
        out.append(Response(status, headers, rest[:length]))
        raw = rest[length:]
    return out


def exchange(
    data: bytes | list[bytes],
    handler: Callable[[Request, Connection], None] = echo,
    max_body: int = MAX_BODY,
    responses: int | None = None,
) -> tuple[list[Response], bool]:
    """Send ``data`` (chunks sent one by one) to a fresh server; read until the server closes
    or ``responses`` answers arrived. Returns (answers, whether the server closed)."""

    async def go() -> tuple[list[Response], bool]:
        server = await asyncio.get_running_loop().create_server(
            lambda: Connection(handler, max_body), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for chunk in data if isinstance(data, list) else [data]:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.01)
        raw, closed = b"", False
        try:
            while True:
                chunk = await asyncio.wait_for(reader.read(1 << 16), 2.0)
                if not chunk:
                    closed = True
                    break
                raw += chunk
                if responses is not None and _complete(raw) >= responses:
                    break
        except (TimeoutError, ConnectionResetError):
            pass
        writer.close()
        server.close()
        return parse_responses(raw), closed

    return run_loop(go())


def _complete(raw: bytes) -> int:
    try:
        return len([r for r in parse_responses(raw) if r.status != 100])
    except (AssertionError, KeyError, ValueError, IndexError):
        return 0


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


GET = b"GET /ping?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"


def test_a_request_is_parsed_and_the_connection_kept_alive():
    (r,), closed = exchange(post("/v1/p", b"hello", "X-Thing: a\r\nX-Thing: b\r\n"), responses=1)
    assert r.status == 200
    assert r.headers["connection"] == "keep-alive"
    assert not closed
    doc = r.json()
    assert doc["method"] == "POST"
    assert doc["path"] == "/v1/p"
    assert doc["body"] == "hello"
    assert doc["headers"]["x-thing"] == "a,b"  # repeated headers are comma-joined, names lowered
    (g,), _ = exchange(GET, responses=1)
    assert g.json()["query"] == "x=1"
    assert g.json()["path"] == "/ping"


def test_pipelined_requests_are_answered_in_order_even_when_the_first_answers_late():
    late = b"GET /later HTTP/1.1\r\nHost: x\r\n\r\n"
    answers, _ = exchange(late + GET + post("/third", b"3"), responses=3)
    assert [a.json()["path"] for a in answers] == ["/later", "/ping", "/third"]


def test_many_pipelined_requests_pause_reading_and_all_get_answers():
    answers, _ = exchange(b"".join([post(f"/r{i}", b"x") for i in range(100)]), responses=100)
    assert [a.json()["path"] for a in answers] == [f"/r{i}" for i in range(100)]


def test_a_request_split_across_packets_and_a_chunked_body():
    raw = post("/split", b"0123456789")
    answers, _ = exchange([raw[:7], raw[7:30], raw[30:]], responses=1)
    assert answers[0].json()["body"] == "0123456789"
    chunked = (
        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    (r,), _ = exchange([chunked[:40], chunked[40:]], responses=1)
    assert r.json()["body"] == "hello world"


def test_connection_close_and_http_1_0_close_after_the_answer():
    (r,), closed = exchange(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert r.status == 200
    assert r.headers["connection"] == "close"
    assert closed
    (r,), closed = exchange(b"GET /a HTTP/1.0\r\n\r\n")
    assert r.headers["connection"] == "close"
    assert closed


def test_oversized_bodies_are_refused_with_413():
    # declared over the limit (but within 4×): drained, answered 413, then closed
    (r,), closed = exchange(post("/big", b"x" * (MAX_BODY + 1)))
    assert r.status == 413
    assert "limit" in r.json()["error"]
    assert closed
    # declared far over: refused at the headers, without reading the body
    head = f"POST /huge HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY * 100}\r\n\r\n"
    (r,), closed = exchange(head.encode() + b"x" * 10)
    assert r.status == 413
    assert closed
    # chunked, so only counted while reading
    chunk = b"x" * 600
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
    chunked = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    (r,), closed = exchange(chunked)
    assert r.status == 413
    assert closed


def test_expect_100_continue():
    head = b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    answers, _ = exchange([head, b"ok"], responses=1)
    assert [a.status for a in answers] == [100, 200]
    assert answers[1].json()["body"] == "ok"
    big = f"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY + 1}\r\n"
    answers, closed = exchange((big + "Expect: 100-continue\r\n\r\n").encode())
    assert [a.status for a in answers] == [413]
    assert closed


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
    ],
    ids=["garbage", "bad-length", "bad-header"],
)
def test_malformed_requests_get_400_and_the_connection_closes(raw):
    (r,), closed = exchange(raw)
    assert r.status == 400
    assert r.json()["error"]
    assert closed


def test_an_upgrade_is_answered_as_plain_http_once_then_the_connection_closes():
    upgrade = b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    for handler_answers_late in (False, True):
        path = b"/later" if handler_answers_late else b"/u"
        (r,), closed = exchange(upgrade.replace(b"/u", path) + b"\x81\x05hello")
        assert r.status == 200
        assert r.headers["connection"] == "close"
        assert closed


def test_a_handler_bug_is_a_500_and_the_connection_keeps_serving():
    answers, closed = exchange(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n" + GET, responses=2)
    assert [a.status for a in answers] == [500, 200]
    assert not closed
    assert answers[0].json()["error"] == "internal error: RuntimeError"


def test_describe_error_quotes_the_first_line_only():
    assert describe_error(ValueError("bad\nsecond line")) == "ValueError: bad"
    assert describe_error(KeyError()) == "KeyError"
    assert describe_error(RuntimeError("x" * 500), 10) == "RuntimeError: " + "x" * 10


@pytest.mark.parametrize(
    "data",
    [
        b"GET /x HTTP/1.1\r\nHost: a\r\n" + b"X-A: aaaa\r\n" * 101 + b"\r\n",
        b"GET /" + b"u" * 70_000 + b" HTTP/1.1\r\n\r\n",
        # one value too long, arriving in pieces: the parser buffers it until it ends
        [b"GET /x HTTP/1.1\r\nHost: a\r\nX-Big: ", b"b" * 40_000, b"b" * 40_000, b"b" * 40_000],
    ],
    ids=["fields", "url", "one-value-in-pieces"],
)
def test_request_heads_over_the_limits_get_431_and_the_connection_closes(data):
    (answer,), closed = exchange(data)
    assert answer.status == 431
    assert closed
    assert "request head over the limit" in answer.json()["error"]


def test_repeated_header_fields_are_comma_joined():
    data = b"GET /x HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nx-b: 2\r\nX-A: 3\r\nX-A: 4\r\nX-B: 5\r\n\r\n"
    (answer,), _ = exchange(data, responses=1)
    headers = answer.json()["headers"]
    assert (headers["x-a"], headers["x-b"]) == ("1,3,4", "2,5")
