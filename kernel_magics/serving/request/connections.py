"""The open connections of one public listener: how many may be open, how long a client may take
to send a request head, how long an idle keep-alive connection stays.

Without these a client that opens connections and sends nothing holds one file descriptor each
forever; once the process runs out of them the event loop can no longer accept, and every new
client's connection is reset. Here a new connection past the cap is answered 503 and closed,
and a sweep (one timer per listener, not one per request) closes connections that stall:

- a request head started (or a fresh connection) and not complete within ``header_timeout``:
  408, then closed;
- a connection idle between requests for ``idle_timeout``: closed quietly (RFC 9112 §9.8);
- a connection refused (503, 408, 431, a malformed request) lingers a moment, reading and
  discarding what the client still sends, so that the client reads the answer instead of a
  reset; lingering ones are few (``max_lingering``) and closed at the next sweep.

The request path pays nothing for this beyond a timestamp per answer (``Connection.send``).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from typing import TYPE_CHECKING

from kernel_magics.config import Settings

if TYPE_CHECKING:
    from kernel_magics.serving.request.protocol import Connection

log = logging.getLogger(__name__)
LINGER_S = 1.0  # how long a refused connection is read and discarded before it closes
_SWEEP_MAX_S = 1.0


class Connections:
    """Admission and timeouts for the connections of one listener."""

    def __init__(
        self,
        max_open: int,
        header_timeout: float,
        idle_timeout: float,
        max_lingering: int = 256,
    ) -> None:
        self.max_open = max(1, max_open)
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.max_lingering = max_lingering
        self.open: set[Connection] = set()
        self.lingering: dict[Connection, float] = {}  # connection → when it closes
        self.refused = 0  # connections answered 503 because the cap was reached
        self._interval = min(_SWEEP_MAX_S, max(0.05, min(header_timeout, idle_timeout) / 4))
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def for_settings(cls, settings: Settings, open_files: int) -> Connections:
        """The cap is ``max_connections`` or what ``open_files`` (the process's limit) leaves
        after a reserve for the process's own files and the connections that linger."""
        reserve = min(1024, max(64, open_files // 4))
        max_open = min(settings.max_connections, max(16, open_files - reserve))
        if max_open < settings.max_connections:
            log.info(
                "at most %d open connections (the open-file limit is %d)", max_open, open_files
            )
        return cls(max_open, settings.header_timeout_s, settings.idle_timeout_s, reserve // 2)

    # -- called by Connection ---------------------------------------------------------------
    def admit(self, conn: Connection) -> bool:
        """Count a new connection in; False when the cap is reached (the caller answers 503)."""
        if self._timer is None:
            self._schedule()
        if len(self.open) >= self.max_open:
            self.refused += 1
            return False
        self.open.add(conn)
        return True

    def linger(self, conn: Connection) -> bool:
        """Keep a refused connection open for a moment; False when too many already are."""
        self.open.discard(conn)
        if len(self.lingering) >= self.max_lingering:
            return False
        self.lingering[conn] = time.perf_counter() + LINGER_S
        return True

    def release(self, conn: Connection) -> None:
        self.open.discard(conn)
        self.lingering.pop(conn, None)

    # -- the sweep ----------------------------------------------------------------------------
    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._interval, self.sweep)

    def sweep(self) -> None:
        now = time.perf_counter()
        try:
            if self.lingering:
                for conn, until in list(self.lingering.items()):
                    if now >= until:
                        self.lingering.pop(conn, None)
                        conn.abort()
            head_before = now - self.header_timeout
            idle_before = now - self.idle_timeout
            for conn in list(self.open):
                conn.expire(head_before, idle_before)
        finally:
            self._schedule()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def raise_open_files_limit() -> int:
    """Raise this process's soft open-file limit to its hard limit (children inherit it) and
    return the limit in force. The usual default soft limit (1024) is what a thousand idle
    clients exhaust; the hard limit is what the machine's administrator allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20  # Linux caps it at fs.nr_open
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as err:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, err)
            return soft
        return target
    return soft if soft != resource.RLIM_INFINITY else target
