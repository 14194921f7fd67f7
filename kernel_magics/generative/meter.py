"""One generation request's figures, into its version's metrics (``ModelStats`` of
``serving/request/metrics.py``): completion tokens as the engine makes them, the time to the
first text, the gaps between two pieces of one choice, and the request with its latency when it
ends. The built-in worker's routes (``openai_api.py``) and the Ray target's replicas
(``stream.py``) both meter through it, so ``%monitor`` reads the same figures on either."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kernel_magics.generative.openai_protocol import Choices
    from kernel_magics.generative.sequence import Sequence


class Meter:
    """``stats`` None (a version loaded without metrics) meters nothing."""

    __slots__ = ("stats", "t0", "last_text_at", "counted")

    def __init__(self, stats: Any, t0: float) -> None:
        self.stats, self.t0 = stats, t0  # t0: when the request was read (perf_counter)
        self.last_text_at: dict[int, float] = {}  # each choice's previous piece of text
        self.counted = 0  # completion tokens already added to the token counter

    def event(self, choices: Choices, seq: Sequence, delta: str) -> None:
        """An engine event of ``seq``, one of ``choices``, that added ``delta`` to its text."""
        stats = self.stats
        if stats is None:
            return
        completed = choices.completion_tokens
        if completed > self.counted:
            stats.tokens.inc(completed - self.counted)
            self.counted = completed
        if delta:
            now, i = time.perf_counter(), choices.index(seq)
            if i in self.last_text_at:
                stats.inter_token.observe(now - self.last_text_at[i])
            elif not self.last_text_at:
                stats.ttft.observe(now - self.t0)
            self.last_text_at[i] = now

    def end(self) -> None:
        """The request answered (or its client gone): counted, with its latency."""
        if self.stats is not None:
            self.stats.requests.inc()
            self.stats.latency.observe(time.perf_counter() - self.t0)
