"""What the engine's sampled tokens become for their requests: each sequence's text (decoded
as it grows), whether it ended (EOS, ``max_tokens``, a stop string), and the events that carry
both to the request's owner, handed over once per step.

Events (text deltas, the finish reason, the log-probabilities a request asked for) are queued
during a step and handed to each sequence's ``post`` callable in one call per sink
(``loop.call_soon_threadsafe`` for HTTP requests), so a step wakes the event loop once, not
once per stream.
"""

from __future__ import annotations

import logging
from typing import Any

from tokenizers.decoders import DecodeStream

from kernel_magics.generative.sampling import TokenLogprob
from kernel_magics.generative.sequence import Event, Sequence, releasable
from kernel_magics.generative.tokens import eos_ids, stream_backend

log = logging.getLogger(__name__)
_ECHO_CONTEXT = 8  # prompt tokens a completion's decoder starts after (enough for a character)


class Outputs:
    """Built once per engine, used by its thread only (``flush`` hands the events over)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos = eos_ids(model, tokenizer)
        self._backend = stream_backend(tokenizer)
        self.generated = 0  # tokens produced since load (status)
        self._events: list[Event] = []

    def append(self, seq: Sequence, token: int, logprob: TokenLogprob | None = None) -> None:
        """Record a sampled token; queue the text it adds and whether the sequence ended."""
        self.generated += 1
        finish = None
        if token in self.eos:
            finish = "stop"
        else:
            seq.tokens.append(token)
            if logprob is not None:
                seq.logprobs.append(logprob)
            seq.text = self._detokenize(seq, token)
            if len(seq.tokens) >= seq.params.max_tokens:
                finish = "length"
        if finish is None and not seq.tokens:
            return
        delta, seq.sent, finish = releasable(seq.text, seq.params.stop, seq.sent, finish)
        if finish is not None:
            seq.finish_reason = finish
        if delta or finish is not None:
            self._event(seq, delta, finish)

    def finish(self, seq: Sequence, reason: str) -> None:
        """End ``seq`` for ``reason`` (aborted, failed) with no more text."""
        seq.finish_reason = reason
        self._event(seq, "", reason)

    def flush(self) -> None:
        """Hand the queued events to their sequences' owners, one call per sink."""
        events, self._events = self._events, []
        by_sink: dict[Any, list] = {}
        for event in events:
            by_sink.setdefault(event[0].post, []).append(event)
        for post, batch in by_sink.items():
            post(_deliver, batch)

    def _detokenize(self, seq: Sequence, token: int) -> str:
        """The completion's text with ``token``: the new token's text appended where the
        tokenizer's decoder can stream (a character split over tokens comes out whole with the
        token that completes it), else the whole completion decoded again."""
        if self._backend is None:
            return str(self.tokenizer.decode(seq.tokens, skip_special_tokens=True))
        if seq.detokenizer is None:
            # an echoed prompt's text comes first: decode on from its last tokens, so that the
            # first piece has the space a word-start token brings (SentencePiece's "▁")
            context = seq.prompt_ids[-_ECHO_CONTEXT:] if seq.params.echo else None
            seq.detokenizer = DecodeStream(ids=context, skip_special_tokens=True)
        piece = seq.detokenizer.step(self._backend, token)
        return seq.text + piece if piece else seq.text

    def _event(self, seq: Sequence, delta: str, finish: str | None) -> None:
        """Queue an event of ``seq``, with the log-probabilities of its tokens since the last
        one where it asked for them."""
        logprobs = None
        if seq.params.logprobs is not None:
            logprobs, seq.logprobs = seq.logprobs, []
        self._events.append((seq, delta, finish, logprobs))


def _deliver(events: list[Event]) -> None:
    for event in events:
        try:
            event[0].on_event(*event)
        except Exception:  # one broken consumer must not stop the others' events
            log.exception("delivering generated text failed")
