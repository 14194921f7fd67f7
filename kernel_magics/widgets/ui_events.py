"""Widget clicks while a cell is still running (the training widget's Stop button).

A kernel runs one shell message at a time on its main thread: a button click (a ``comm_msg``
from the front end) waits behind the executing cell, so a Stop button would act only once the
training it should stop has ended. ``jupyter_ui_poll`` and older recipes call
``kernel.do_one_iteration()`` from the loop, which ipykernel 7 no longer has. Here is the
ipykernel 7 way: the shell channel thread forwards every message for the main shell through an
in-process socket pair (``manager.get_shell_channel_to_subshell_pair(None)``); while the cell
blocks the main thread, nothing reads it. ``poll()`` reads what is queued there, handles widget
messages at once with the kernel's own ``comm_msg`` handler, and holds every other message
(an ``execute_request`` the user queued, a completion request); ``release()`` hands those back
to the kernel in their order, to run after the cell, exactly as they would have.

Outside such a kernel (plain IPython, papermill's kernel without a front end, ipykernel 6)
``attach()`` answers None and a widget there only reacts between cells.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)
_HANDLED = frozenset({"comm_msg"})


def _kernel() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return None
    shell = get_ipython()
    return getattr(shell, "kernel", None)


class UiEvents:
    """Handles the front end's widget messages for the main shell from inside a running cell."""

    def __init__(self, kernel: Any, pair: Any) -> None:
        self._kernel = kernel
        self._pair = pair
        self._held: list[Any] = []
        self.handled = 0  # widget messages handled while the cell ran

    @classmethod
    def attach(cls) -> UiEvents | None:
        """For the kernel running this code, or None where it cannot work (see the module)."""
        kernel = _kernel()
        manager = getattr(getattr(kernel, "shell_channel_thread", None), "manager", None)
        if manager is None or getattr(kernel, "session", None) is None:
            return None
        try:
            pair = manager.get_shell_channel_to_subshell_pair(None)
        except Exception as err:  # a future ipykernel may rearrange this
            log.debug("no widget messages during cells: %s", err)
            return None
        return cls(kernel, pair)

    def poll(self) -> int:
        """Handle the widget messages queued for the main shell now; hold the others.
        Returns how many widget messages were handled. Cheap when nothing is queued."""
        import zmq

        socket = self._pair.to_socket
        handled = 0
        while socket.poll(0, zmq.POLLIN):
            frames = socket.recv_multipart(copy=False)
            if self._handle(frames):
                handled += 1
            else:
                self._held.append(frames)
        self.handled += handled
        return handled

    def _handle(self, frames: list[Any]) -> bool:
        session = self._kernel.session
        try:
            idents, rest = session.feed_identities(frames, copy=False)
            # Peek first (content=False checks the signature without recording it): a full
            # deserialize records the HMAC signature, and the kernel would refuse the held
            # message as a "Duplicate Signature" when it is handed back after the cell.
            header = session.deserialize(rest, content=False, copy=False)["header"]
        except Exception:
            return False  # not ours to judge: the kernel sees it after the cell
        if header.get("msg_type") not in _HANDLED:
            return False
        handler = self._kernel.shell_handlers.get("comm_msg")
        if handler is None:
            return False
        try:  # ours from here on: consumed, so recording its signature is right
            msg = session.deserialize(rest, content=True, copy=False)
        except Exception:
            log.warning("a widget message with a bad signature was dropped")
            return True
        stream = self._kernel.shell_channel_thread.manager.get_subshell_to_shell_channel_socket(
            None
        )
        try:
            handler(stream, idents, msg)  # the comm manager's comm_msg: synchronous
        except Exception:
            log.exception("a widget message failed")
        return True

    async def _dispatch(self, frames: list[Any]) -> None:
        # The same two hops as a message the kernel reads itself (its stream's callback is
        # ``_async_in_context(shell_main)``: a future that creates the shell_main task). A message
        # the kernel read before this cell began may still be on its way through those hops;
        # with as many hops, it reaches the shell's lock first, so the order stays the order sent.
        await asyncio.create_task(self._kernel.shell_main(None, frames))

    def release(self) -> None:
        """Give the held messages back to the kernel in their order: they run once the cell is
        over (each waits for the shell's lock, as it would have), then let the kernel read on."""
        held, self._held = self._held, []
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            if held:
                log.warning("%d kernel messages could not be handed back", len(held))
            return
        for frames in held:
            asyncio.ensure_future(self._dispatch(frames))
        # Reading the socket here may have used up its edge-triggered readiness signal: flush
        # whatever arrived since, through the stream's own callback, once the loop runs again.
        stream = getattr(self._pair, "to_stream", None)
        if stream is not None:
            import zmq

            loop.call_soon(lambda: stream.flush(zmq.POLLIN))
