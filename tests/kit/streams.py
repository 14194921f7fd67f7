"""Streams in flight while something else happens (a deploy, a rollback): the way a swap under
load is tested on every serving target."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def streams_through(
    open_stream: Callable[[], Iterable[Any]], count: int, during: Callable[[], T]
) -> tuple[list[tuple[str, str | None]], T]:
    """Open ``count`` streams (``open_stream()``: an ``openai`` completion with ``stream=True``),
    run ``during()`` once all of them have their head, read each to its end on its own thread;
    each stream's last chunk's ``(model, finish_reason)`` and what ``during`` returned. A
    stream that failed fails here, with its error."""
    results: list[tuple[str, str | None]] = []
    failures: list[BaseException] = []
    started = threading.Barrier(count + 1)

    def read() -> None:
        try:
            chunks = open_stream()
            started.wait(60)
            pieces = list(chunks)
            results.append((pieces[-1].model, pieces[-1].choices[0].finish_reason))
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=read) for _ in range(count)]
    for t in threads:
        t.start()
    started.wait(60)
    outcome = during()
    for t in threads:
        t.join(120)
    if failures:
        raise failures[0]
    return results, outcome
