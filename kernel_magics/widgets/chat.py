"""``%chat``: a conversation with a served language model.

``ChatSession`` is the conversation itself, no widgets: the turns so far, the messages one turn
sends (the system message, every earlier turn, the new user message: the server renders them
with the tokenizer's chat template), and the transcript as text and HTML. ``ChatWidget`` is
only its face: transcript, input box, Send and Stop. The answer streams on a daemon thread (the
kernel keeps running cells); Stop sets the stream's ``cancel`` event, ``api.chat`` closes the
HTTP stream at the next piece, and the server frees the sequence's slot.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kernel_magics import api, display
from kernel_magics.config import Settings

_MUTED = "color:#57606a"
_ERROR = "color:#cf222e"


@dataclass(frozen=True)
class Turn:
    user: str
    assistant: str
    result: api.Generation

    @property
    def stopped(self) -> bool:
        return self.result.finish_reason == "cancelled"


class ChatSession:
    """One conversation with ``model`` (``NAME`` or ``NAME@VERSION``); ``sampling`` are
    ``api.chat``'s keyword arguments (max_tokens, temperature, top_p, top_k, seed, stop)."""

    def __init__(
        self,
        model: str,
        *,
        system: str | None = None,
        settings: Settings | None = None,
        **sampling: Any,
    ) -> None:
        self.model, self.system, self.settings = model, system, settings
        self.sampling = sampling
        self.turns: list[Turn] = []

    def messages_for(self, text: str) -> list[dict[str, str]]:
        """What the next turn sends: the system message, the turns so far, then ``text``."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for turn in self.turns:
            messages += [
                {"role": "user", "content": turn.user},
                {"role": "assistant", "content": turn.assistant},
            ]
        return [*messages, {"role": "user", "content": text}]

    def send(
        self,
        text: str,
        *,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Turn:
        """One turn: stream the answer to ``text``; the turn is kept, a stopped one with the
        part that arrived (the next turn builds on what the user saw). A failure keeps none."""
        result = api.chat(
            self.model,
            self.messages_for(text),
            on_text=on_text,
            cancel=cancel,
            settings=self.settings,
            **self.sampling,
        )
        turn = Turn(text, result.text, result)
        self.turns.append(turn)
        return turn

    # -- views ----------------------------------------------------------------------------------
    def transcript_text(self) -> str:
        lines = [f"system: {self.system}"] if self.system else []
        for turn in self.turns:
            lines += [f"you: {turn.user}", f"{self.model}: {turn.assistant}"]
            if turn.stopped:
                lines.append("(stopped)")
        return "\n".join(lines)

    def transcript_html(self, pending: str | None = None, partial: str = "") -> str:
        """The transcript; ``pending``: a user message whose answer is still arriving."""
        rows = []
        if self.system:
            rows.append(f"<div style='{_MUTED}'><i>{html.escape(self.system)}</i></div>")
        exchanges = [(t.user, t.assistant, t.stopped) for t in self.turns]
        if pending is not None:
            exchanges.append((pending, partial + "▍", False))
        for user, answer, stopped in exchanges:
            rows.append(f"<div><b>you</b>: {_lines(user)}</div>")
            note = f" <span style='{_MUTED}'>(stopped)</span>" if stopped else ""
            rows.append(f"<div><b>{html.escape(self.model)}</b>: {_lines(answer)}{note}</div>")
        return "<div style='line-height:1.4'>" + "".join(rows) + "</div>"


def _span(style: str, text: str) -> str:
    return f"<span style='{style}'>{html.escape(text)}</span>"


def _lines(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def figures_line(result: api.Generation) -> str:
    """The one line under a generated text: who answered, tokens, time to first token, tokens/s
    (measured here, over HTTP)."""
    return (
        f"[{result.model}: {result.completion_tokens} tokens ({result.finish_reason}), "
        f"time to first token {result.ttft_s * 1000:.0f} ms, {result.tokens_per_s:.0f} tokens/s]"
    )


class ChatWidget:
    """The live face of a ``ChatSession`` (needs a widget front end)."""

    def __init__(self, session: ChatSession) -> None:
        import ipywidgets as widgets

        self.session = session
        self.transcript = widgets.HTML(session.transcript_html())
        self.input = widgets.Textarea(placeholder="Message, then Send")
        self.input.layout.width = "100%"
        self.send_button = widgets.Button(description="Send", icon="paper-plane")
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True)
        self.status = widgets.HTML()
        self.send_button.on_click(lambda _: self.send())
        self.stop_button.on_click(lambda _: self.stop())
        self.box = widgets.VBox(
            [
                self.transcript,
                self.input,
                widgets.HBox([self.send_button, self.stop_button, self.status]),
            ]
        )
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None

    def show(self) -> None:
        from IPython.display import display as show

        show(self.box)

    def send(self, text: str | None = None) -> None:
        text = (self.input.value if text is None else text).strip()
        if not text or (self._thread is not None and self._thread.is_alive()):
            return
        self.input.value = ""
        self._cancel = threading.Event()
        self.send_button.disabled, self.stop_button.disabled = True, False
        self.status.value = ""
        self._thread = threading.Thread(target=self._answer, args=(text,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._cancel.set()

    def _answer(self, text: str) -> None:
        partial: list[str] = []

        def on_text(piece: str) -> None:
            partial.append(piece)
            self.transcript.value = self.session.transcript_html(text, "".join(partial))

        self.transcript.value = self.session.transcript_html(text)
        try:
            turn = self.session.send(text, on_text=on_text, cancel=self._cancel)
            self.status.value = _span(_MUTED, figures_line(turn.result))
        except Exception as err:  # shown under the transcript; the chat goes on
            self.status.value = _span(_ERROR, display.one_line(err))
        self.transcript.value = self.session.transcript_html()
        self.send_button.disabled, self.stop_button.disabled = False, True
