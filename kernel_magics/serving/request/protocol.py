"""HTTP/1.1 server side: an asyncio Protocol driving httptools' parser, no framework.

One ``Connection`` per TCP (or unix) connection. Requests are parsed as bytes arrive; complete
ones queue per connection and are handed to the application one at a time, so pipelined
requests are answered in order. The application answers through ``Connection.send`` exactly
once per request, synchronously or later (after a batched forward or a relayed call).
Bodies above the size limit are drained and answered 413 rather than buffered; a request head
(request line and headers) over ``MAX_HEAD_BYTES`` or ``MAX_HEADERS`` is answered 431 as soon as
it is seen, so one client's head costs time and memory in proportion to the limit, never to what
it sends. On the public listener a ``Connections`` (``connections.py``) caps open connections and
times out stalled and idle ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httptools

from kernel_magics.errors import clip
from kernel_magics.serving.request.bodies import JSON, error_body
from kernel_magics.serving.request.request_ids import new_request_id, request_id

if TYPE_CHECKING:
    from kernel_magics.serving.request.connections import Connections

log = logging.getLogger(__name__)

_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
_KEEP = b"connection: keep-alive\r\n"
_CLOSE = b"connection: close\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_MAX_QUEUED = 32  # pipelined requests held per connection before we stop reading from it
_DRAIN_FACTOR = 4  # a declared body this many times over the limit is refused without draining
# A request head (request line and headers): what browsers and HTTP clients send is a few KiB;
# common servers refuse past 8-64 KiB and ~100 header fields.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100


class Request:
    __slots__ = (
        "method",
        "path",
        "query",
        "headers",
        "body",
        "keep_alive",
        "too_large",
        "t0",
        "rid",
    )

    def __init__(self) -> None:
        self.method = b""
        self.path = b""
        self.query = b""
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.keep_alive = True
        self.too_large = False
        self.t0 = 0.0
        self.rid = b""  # the X-Request-ID answered (request_id())


class HeadTooLarge(Exception):
    """Raised from a parser callback: the request head is over a limit (answered 431)."""


class _Discard:
    """Stands in for the parser once a connection is refused: what still arrives is dropped."""

    @staticmethod
    def feed_data(data: bytes) -> None:
        return None


_DISCARD = _Discard()


class Connection(asyncio.Protocol):
    """``handler(request, connection)`` must call ``connection.send`` once per request."""

    __slots__ = (
        "handler",
        "max_body",
        "connections",
        "transport",
        "parser",
        "queue",
        "busy",
        "_dispatching",
        "_req",
        "_url",
        "_chunks",
        "_size",
        "_paused",
        "_early",
        "_head_chunks",
        "_read_len",
        "_repeats",
        "_in_head",
        "_head_began",
        "_in_message",
        "_idle_since",
        "_lingering",
        "closed",
    )

    def __init__(
        self,
        handler: Callable[[Request, Connection], Any],
        max_body: int,
        connections: Connections | None = None,
    ):
        self.handler = handler
        self.max_body = max_body
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Request] = deque()
        self.busy = False
        self._dispatching = False
        self._req = Request()
        self._url = b""
        self._chunks: list[bytes] = []
        self._size = 0
        self._paused = False
        self._early = False
        self._head_chunks = 0  # bytes of whole reads that arrived while the head was incomplete
        self._read_len = 0  # bytes of the read being parsed
        self._repeats: dict[bytes, list[bytes]] | None = None
        self._in_head = False  # between the first byte of a request and the end of its head
        self._head_began = False  # ... and that first byte came in the read being parsed
        self._in_message = False
        self._idle_since = 0.0
        self._lingering: asyncio.Transport | None = None
        self.closed = False

    # -- transport callbacks ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._idle_since = time.perf_counter()
        connections = self.connections
        if connections is not None and not connections.admit(self):
            self._fail(
                503,
                f"the server has {connections.max_open} connections open, its limit: "
                "retry in a moment",
                b"retry-after: 1\r\n",
            )

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self._lingering = None
        self.queue.clear()
        if self.connections is not None:
            self.connections.release(self)

    def data_received(self, data: bytes) -> None:
        self._head_began = False
        self._read_len = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The upgrade request itself was parsed and is answered as plain HTTP (RFC 9110
            # lets a server ignore Upgrade), then the connection closes (keep_alive is False):
            # what follows it is not HTTP. Nothing to answer yet means it never completed.
            if not self.busy and not self.queue:
                self._fail(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as err:
            if isinstance(err.__context__, HeadTooLarge):  # raised by on_headers_complete
                self._fail(431, str(err.__context__))
            else:
                self._fail(400, f"malformed HTTP request: {err}")
            return
        if self._in_head and not self._head_began:
            # A head spread over reads: count whole reads, so that what the parser buffers
            # (an unfinished name or value) and what this connection keeps stay bounded.
            self._head_chunks += len(data)
            if self._head_chunks > MAX_HEAD_BYTES:
                self._fail(431, _head_too_large())

    # -- parser callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._req = Request()
        self._req.t0 = time.perf_counter()
        self._url = b""
        self._chunks = []
        self._size = 0
        self._early = False
        self._head_chunks = 0
        self._in_head = self._head_began = self._in_message = True

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        headers = self._req.headers
        if key in headers:  # repeated: comma-joined once the head is complete (RFC 9110 5.3)
            repeats = self._repeats
            if repeats is None:
                self._repeats = {key: [headers[key], value]}
            elif key in repeats:
                repeats[key].append(value)
            else:
                repeats[key] = [headers[key], value]
        else:
            headers[key] = value

    def on_headers_complete(self) -> None:
        self._in_head = False
        req = self._req
        # The head is measured only when it could be over a limit: a head that came in one read
        # of at most MAX_HEAD_BYTES, without repeated fields, is the common case and costs
        # nothing here. (Whatever its size, a head in one read costs time linear in that read.)
        if (
            self._repeats is not None
            or not self._head_began
            or self._read_len > MAX_HEAD_BYTES
            or len(req.headers) > MAX_HEADERS
        ):
            self._check_head(req)
        req.method = self.parser.get_method()
        path, _, req.query = self._url.partition(b"?")
        req.path = path
        req.keep_alive = self.parser.should_keep_alive() and not self.parser.should_upgrade()
        declared = req.headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            req.too_large = True
            if int(declared) > self.max_body * _DRAIN_FACTOR:
                req.keep_alive = False
                self._answer_early(req)
                return
        if req.headers.get(b"expect", b"").lower() == b"100-continue" and self.transport:
            if req.too_large:
                req.keep_alive = False
                self._answer_early(req)
                return
            self.transport.write(_CONTINUE)

    def _check_head(self, req: Request) -> None:
        """431 for a head over the limits; repeated fields comma-joined (RFC 9110 5.3)."""
        fields, size = len(req.headers), len(self._url)
        for key, value in req.headers.items():
            size += len(key) + len(value) + 4
        if self._repeats is not None:
            for key, values in self._repeats.items():
                fields += len(values) - 1
                size += sum(map(len, values)) - len(values[0]) + (len(key) + 4) * (len(values) - 1)
                req.headers[key] = b",".join(values)
            self._repeats = None
        if size > MAX_HEAD_BYTES or fields > MAX_HEADERS:
            raise HeadTooLarge(_head_too_large())

    def on_body(self, body: bytes) -> None:
        req = self._req
        if req.too_large:
            return
        self._size += len(body)
        if self._size > self.max_body:
            req.too_large = True
            self._chunks = []
            return
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        if self._early:  # already refused in on_headers_complete
            return
        req = self._req
        if not req.too_large:
            chunks = self._chunks
            req.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self.queue.append(req)
        if len(self.queue) > _MAX_QUEUED and self.transport and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._dispatch()

    # -- answering --------------------------------------------------------------------------
    def _answer_early(self, req: Request) -> None:
        """Refuse an oversized body before reading it; the connection closes after."""
        self._early = True
        self.queue.append(req)
        self._dispatch()
        if self.transport:
            self.transport.pause_reading()

    def _dispatch(self) -> None:
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self.queue and not self.busy and not self.closed:
                req = self.queue.popleft()
                self.busy = True
                if req.too_large:
                    req.keep_alive = False
                    self.send(
                        413,
                        error_body(f"request body over the limit of {self.max_body} bytes"),
                        req=req,
                    )
                    continue
                try:
                    self.handler(req, self)
                except Exception as err:  # a bug: answer it, keep the process serving
                    log.exception("unhandled error on %s %s", req.method, clip(req.path))
                    if self.busy:
                        self.send(500, error_body(f"internal error: {type(err).__name__}"), req=req)
            if self._paused and len(self.queue) < _MAX_QUEUED // 2 and self.transport:
                self._paused = False
                self.transport.resume_reading()
        finally:
            self._dispatching = False

    def send(
        self,
        status: int,
        body: bytes | bytearray | memoryview,
        content_type: bytes = JSON,
        extra_headers: bytes = b"",
        req: Request | None = None,
        keep_alive: bool = True,
    ) -> None:
        """Write one response. ``keep_alive=False`` or the request's own wish closes after it."""
        if not self.busy:
            return  # already answered (a late callback after an early error)
        self.busy = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._idle_since = time.perf_counter()
        keep = keep_alive and (req is None or req.keep_alive)
        head = b"".join(
            (
                _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status,
                b"content-type: ",
                content_type,
                b"\r\ncontent-length: %d\r\n" % len(body),
                extra_headers,
                b"x-request-id: ",
                request_id(req) if req is not None else new_request_id(),
                b"\r\n",
                _KEEP if keep else _CLOSE,
                b"\r\n",
            )
        )
        if len(body) < 65536:
            transport.write(head + bytes(body))
        else:  # large bodies: no concatenation copy
            transport.writelines((head, body))
        if not keep:
            transport.close()
            self.closed = True
            return
        if self.queue and not self._dispatching:
            self._dispatch()

    def _fail(self, status: int, message: str, extra_headers: bytes = b"") -> None:
        """Answer ``status`` out of turn and stop reading requests from this connection. On
        the public listener it lingers a moment, discarding what the client still sends, so the
        client reads this answer rather than a reset."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        body = error_body(message)
        transport.write(
            (_STATUS_LINES.get(status) or b"HTTP/1.1 400 Bad Request\r\n")
            + b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
            + extra_headers
            + b"x-request-id: "
            + new_request_id()
            + b"\r\n"
            + _CLOSE
            + b"\r\n"
            + body
        )
        self.closed = True
        self._in_head = False
        self.queue.clear()
        self.parser = _DISCARD  # type: ignore[assignment]
        connections = self.connections
        if connections is not None and transport.can_write_eof() and connections.linger(self):
            transport.write_eof()
            self.transport = None  # nothing else is written; connections closes it later
            self._lingering = transport
        else:
            transport.close()

    # -- called by Connections' sweep -------------------------------------------------------
    def expire(self, head_before: float, idle_before: float) -> None:
        """Close this connection if it stalled: a head started before ``head_before`` and not
        complete (408), or nothing asked since ``idle_before`` (a fresh connection counts
        from ``head_before``)."""
        if self.busy or self.closed:
            return
        if self._in_head:
            if self._req.t0 < head_before:
                self._fail(408, "request head not received in time; the connection is closed")
        elif not self._in_message and not self.queue:
            fresh = self._req.t0 == 0.0  # no request began on this connection yet
            if self._idle_since < (head_before if fresh else idle_before):
                if self.transport is not None:
                    self.transport.close()
                self.closed = True

    def abort(self) -> None:
        """End a lingering connection."""
        transport = self._lingering or self.transport
        if transport is not None:
            transport.abort()


def _head_too_large() -> str:
    return f"request head over the limit of {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} header fields"
