"""The log-probabilities a request asked for, in OpenAI's shape for its route.

``/v1/completions`` (``logprobs: N``) answers the legacy object: ``tokens``,
``token_logprobs``, ``top_logprobs`` (one ``{token: logprob}`` per token, the ``N`` most
likely and the chosen one, fewer where two decode to the same text; null for an echoed
prompt's first token, which has no log-probability) and ``text_offset`` (where each token's
text starts in the answer's text). ``/v1/chat/completions`` (``logprobs: true``,
``top_logprobs: N``) answers ``{"content": [{token, logprob, bytes, top_logprobs}]}``, each
alternative a ``{token, logprob, bytes}``. A token's text is the tokenizer's decoding of that
token alone, as vLLM reports it; the numbers are the model's own distribution
(``sampling.logprobs_of``, ``sampling.prompt_logprobs``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from kernel_magics.generative.sampling import TokenLogprob

TokenText = Callable[[int], str]


class Vocabulary(Protocol):
    """The texts of a model's tokens (``loader.Generator``)."""

    def token_text(self, token: int) -> str:
        """One token decoded alone (an alternative, which has no text around it)."""
        ...

    def text(self, tokens: list[int]) -> str: ...

    def pieces(self) -> TokenText:
        """A fresh incremental decoder: each call takes the next token and returns the text it
        adds to those before it ("" while a character is incomplete)."""
        ...


class ChoiceLogprobs:
    """One choice's log-probabilities as its events bring them: the part each streamed chunk
    carries (``add``), and the whole (``whole``). A chosen token's text is what it adds to the
    choice's text (an incremental decode of the tokens in order: a word's leading space, a
    character split over tokens, come out as in the text); ``text_offset`` adds them up."""

    def __init__(self, chat: bool, vocabulary: Vocabulary, alternatives: int) -> None:
        self.chat, self.alternatives = chat, alternatives
        self.token_text = vocabulary.token_text
        self._piece = vocabulary.pieces()
        self.entries: list[TokenLogprob] = []
        self.texts: list[str] = []  # each entry's chosen token's text, decoded once, in order
        self._offset = 0  # characters of the tokens already sent (a stream's text_offset)

    def add(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        """Keep ``entries`` (the tokens of one event) and return their part of a chunk."""
        texts = [self._piece(token) for token, _, _ in entries]
        self.entries.extend(entries)
        self.texts.extend(texts)
        part, self._offset = self._render(entries, texts, self._offset)
        return part

    def whole(self) -> dict[str, Any]:
        return self._render(self.entries, self.texts, 0)[0]

    def _render(
        self, entries: list[TokenLogprob], texts: list[str], offset: int
    ) -> tuple[dict[str, Any], int]:
        alone = self.token_text
        if self.chat:
            content = [
                _chat_entry(piece, logprob)
                | {"top_logprobs": [_chat_entry(alone(t), lp) for t, lp in top]}
                for piece, (_, logprob, top) in zip(texts, entries, strict=True)
            ]
            return {"content": content, "refusal": None}, offset
        offsets: list[int] = []
        for piece in texts:
            offsets.append(offset)
            offset += len(piece)
        # OpenAI's legacy top_logprobs hold the chosen token too (up to N + 1 entries)
        tops = [
            None if lp is None else _by_text(alone, (*top, (token, lp)))
            for token, lp, top in entries
        ]
        return {
            "tokens": texts,
            "token_logprobs": [logprob for _, logprob, _ in entries],
            "top_logprobs": tops,
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
