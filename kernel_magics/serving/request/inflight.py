"""Counting the requests a model version has accepted and not answered yet."""

from __future__ import annotations

import asyncio


class InFlight:
    """Requests a model version accepted and has not answered yet (loop thread only). A swap
    waits for the old version's count to reach 0 before it answers, so once a deploy or
    rollback returns, the old version has no response left to send."""

    __slots__ = ("count", "_idle")

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Future | None = None

    def enter(self) -> None:
        self.count += 1

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def drained(self, timeout: float) -> bool:
        """Wait until nothing is in flight; False if ``timeout`` passed first."""
        if self.count == 0:
            return True
        if self._idle is None or self._idle.done():
            self._idle = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._idle), timeout)
        except TimeoutError:
            return False
        return True
