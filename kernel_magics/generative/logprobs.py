"""The log-probabilities a request asked for, in OpenAI's shape for its route.

``/v1/completions`` (``logprobs: N``) answers the legacy object: ``tokens``,
``token_logprobs``, ``top_logprobs`` (one ``{token: logprob}`` per token, the ``N`` most
likely, fewer where two decode to the same text; null for ``N`` = 0, and for an echoed
prompt's first token, which has no log-probability) and ``text_offset`` (where each token's
text starts in the answer's text). ``/v1/chat/completions`` (``logprobs: true``,
``top_logprobs: N``) answers ``{"content": [{token, logprob, bytes, top_logprobs}]}``, each
alternative a ``{token, logprob, bytes}``. A token's text is the tokenizer's decoding of that
token alone, as vLLM reports it; the numbers are the model's own distribution
(``sampling.logprobs_of``, ``sampling.prompt_logprobs``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from kernel_magics.generative.sampling import TokenLogprob

TokenText = Callable[[int], str]


class Vocabulary(Protocol):
    """The texts of a model's tokens (``loader.Generator``)."""

    def token_text(self, token: int) -> str: ...

    def text(self, tokens: list[int]) -> str: ...


class ChoiceLogprobs:
    """One choice's log-probabilities as its events bring them: the part each streamed chunk
    carries (``add``), and the whole (``whole``)."""

    def __init__(self, chat: bool, token_text: TokenText, alternatives: int) -> None:
        self.chat, self.token_text, self.alternatives = chat, token_text, alternatives
        self.entries: list[TokenLogprob] = []
        self._offset = 0  # characters of the tokens already sent (a stream's text_offset)

    def add(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        """Keep ``entries`` (the tokens of one event) and return their part of a chunk."""
        self.entries.extend(entries)
        part, self._offset = self._render(entries, self._offset)
        return part

    def whole(self) -> dict[str, Any]:
        return self._render(self.entries, 0)[0]

    def _render(self, entries: Iterable[TokenLogprob], offset: int) -> tuple[dict[str, Any], int]:
        text = self.token_text
        if self.chat:
            content = [
                _chat_entry(text(token), logprob)
                | {"top_logprobs": [_chat_entry(text(t), lp) for t, lp in top]}
                for token, logprob, top in entries
            ]
            return {"content": content}, offset
        tokens: list[str] = []
        offsets: list[int] = []
        for token, _, _ in entries:
            tokens.append(text(token))
            offsets.append(offset)
            offset += len(tokens[-1])
        tops = [None if lp is None else _by_text(text, top) for _, lp, top in entries]
        return {
            "tokens": tokens,
            "token_logprobs": [logprob for _, logprob, _ in entries],
            "top_logprobs": tops if self.alternatives else None,
            "text_offset": offsets,
        }, offset


def _by_text(text: TokenText, top: tuple[tuple[int, float], ...]) -> dict[str, float]:
    """``{token text: logprob}``, most likely first; where two tokens decode to the same text
    (byte pieces of a character decode to U+FFFD each), the likelier one's."""
    out: dict[str, float] = {}
    for token, logprob in top:
        out.setdefault(text(token), logprob)
    return out


def _chat_entry(token: str, logprob: float | None) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}
