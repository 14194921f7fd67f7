"""A response written in pieces (chunked transfer encoding), for server-sent events.

``Connection.send`` writes a whole response at once; a stream instead writes its head, then one
chunk per ``write``, and ``end`` closes the body and hands the connection back to its next
pipelined request, exactly as ``send`` does when it finishes. While a stream is open the
connection stays busy, so pipelined requests wait behind it in order.
"""

from __future__ import annotations

from kernel_magics.serving.request.protocol import _STATUS_LINES, Connection, Request
from kernel_magics.serving.request.request_ids import request_id

SSE = b"text/event-stream"


class ChunkedResponse:
    __slots__ = ("conn", "keep", "ended")

    def __init__(
        self,
        conn: Connection,
        req: Request,
        status: int = 200,
        content_type: bytes = SSE,
        extra_headers: bytes = b"",
    ) -> None:
        self.conn, self.keep, self.ended = conn, req.keep_alive, False
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        transport.write(
            b"".join(
                (
                    _STATUS_LINES[status],
                    b"content-type: ",
                    content_type,
                    b"\r\ntransfer-encoding: chunked\r\ncache-control: no-cache\r\n",
                    extra_headers,
                    b"x-request-id: ",
                    request_id(req),
                    b"\r\n",
                    b"connection: keep-alive\r\n" if self.keep else b"connection: close\r\n",
                    b"\r\n",
                )
            )
        )

    @property
    def gone(self) -> bool:
        """The client went away (or the stream ended): nothing more can be written."""
        transport = self.conn.transport
        return self.ended or self.conn.closed or transport is None or transport.is_closing()

    def write(self, data: bytes) -> None:
        if data and not self.gone:
            self.conn.transport.write(b"%x\r\n%b\r\n" % (len(data), data))  # type: ignore[union-attr]

    def end(self) -> None:
        """The last chunk; the connection serves its next request (or closes)."""
        if self.ended:
            return
        gone = self.gone
        self.ended = True
        conn = self.conn
        conn.busy = False
        if gone:
            return
        transport = conn.transport
        assert transport is not None
        transport.write(b"0\r\n\r\n")
        if not self.keep:
            transport.close()
            conn.closed = True
        elif conn.queue and not conn._dispatching:
            conn._dispatch()
