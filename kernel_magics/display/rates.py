"""What the service monitor shows, computed from two status snapshots (no widgets here).

The inference process keeps counters since it started; rates (requests/s, rows/s), the error
rate, the mean batch size and the latency quantiles *of the last seconds* are the differences
between two snapshots (``VersionStats.since``). Without an earlier snapshot the figures are
those since the process started and the rates are unknown.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from kernel_magics.records import ModelState, ServerStatus, VersionStats


@dataclass(frozen=True)
class ModelRates:
    name: str
    version: int
    state: str
    requests: int  # since the process started
    client_errors: int  # 4xx since the process started: the request's fault (a wrong shape)
    server_errors: int  # 5xx since the process started: the service's fault
    requests_s: float | None
    rows_s: float | None
    # Shares of the window's requests; latency and batch figures of the window too. A window
    # without requests keeps the figures since the process started, so the widget shows the
    # same numbers as the text view of one snapshot, never "–" for a quiet minute.
    client_error_rate: float | None
    server_error_rate: float | None
    mean_batch: float | None
    p50_ms: float | None
    p99_ms: float | None
    queue: int


@dataclass(frozen=True)
class GenerationRates:
    """A served language model's figures: tokens/s and the latency quantiles of the window
    (since the process started without one, or when the window generated nothing), and its
    engine now."""

    name: str
    version: int
    tokens: int  # completion tokens since the process started
    tokens_s: float | None
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    inter_token_p99_ms: float | None
    running: int
    queued: int
    max_running: int
    kv_cache_reserved: int
    kv_cache_tokens: int
    kv_cache_use: float | None
    dtype: str  # the precision its weights are served in (gen_dtype)
    threads: int  # its engine's torch threads (gen_threads)


@dataclass(frozen=True)
class TokenRates:
    name: str
    requests: int
    rows: int
    requests_s: float | None


def _window_s(earlier: ServerStatus | None, now: ServerStatus) -> float | None:
    if earlier is None or earlier.snapshot_at is None or now.snapshot_at is None:
        return None
    seconds = now.snapshot_at - earlier.snapshot_at
    return seconds if seconds > 0 else None


def _live_windows(
    earlier: ServerStatus | None, now: ServerStatus, only: str | None
) -> Iterator[tuple[str, ModelState, VersionStats, VersionStats, float | None]]:
    """Per deployed model (``only``: that one), sorted by name: its state, its live version's
    counters since the process started, their difference over the window since ``earlier``
    (the totals when there is no window), and the window's seconds."""
    seconds = _window_s(earlier, now)
    before: dict[tuple[str, int], VersionStats] = {}
    if earlier is not None:
        before = {(v.model, v.version): v for v in earlier.versions}
    for name, state in sorted(now.models.items()):
        if only is not None and name != only:
            continue
        total = state.stats or VersionStats(name, state.version)
        window = total.since(before.get((name, state.version))) if seconds else total
        yield name, state, total, window, seconds


def model_rates(
    earlier: ServerStatus | None, now: ServerStatus, only: str | None = None
) -> list[ModelRates]:
    """One row per deployed model (``only``: that one), figures of its live version."""
    rows = []
    for name, state, total, window, seconds in _live_windows(earlier, now, only):
        figures = window if window.requests else total
        rows.append(
            ModelRates(
                name=name,
                version=state.version,
                state=state.state,
                requests=total.requests,
                client_errors=total.client_errors,
                server_errors=total.server_errors,
                requests_s=window.requests / seconds if seconds else None,
                rows_s=window.rows / seconds if seconds else None,
                client_error_rate=figures.client_error_rate,
                server_error_rate=figures.server_error_rate,
                mean_batch=figures.mean_batch_size,
                p50_ms=figures.p50_ms,
                p99_ms=figures.p99_ms,
                queue=total.queue,
            )
        )
    return rows


def generation_rates(
    earlier: ServerStatus | None, now: ServerStatus, only: str | None = None
) -> list[GenerationRates]:
    """One row per deployed language model (``only``: that one), of its live version."""
    rows = []
    for name, state, total, window, seconds in _live_windows(earlier, now, only):
        engine = state.generation
        if engine is None:
            continue
        figures = window if window.tokens else total
        rows.append(
            GenerationRates(
                name=name,
                version=state.version,
                tokens=total.tokens,
                tokens_s=window.tokens / seconds if seconds else None,
                ttft_p50_ms=figures.ttft_p50_ms,
                ttft_p99_ms=figures.ttft_p99_ms,
                inter_token_p99_ms=figures.inter_token_p99_ms,
                running=engine.running,
                queued=engine.queued,
                max_running=engine.max_running,
                kv_cache_reserved=engine.kv_cache_reserved,
                kv_cache_tokens=engine.kv_cache_tokens,
                kv_cache_use=engine.kv_cache_use,
                dtype=engine.dtype,
                threads=engine.threads,
            )
        )
    return rows


def token_rates(earlier: ServerStatus | None, now: ServerStatus) -> list[TokenRates]:
    """Usage per token name, busiest first, with its request rate over the window."""
    seconds = _window_s(earlier, now)
    rows = []
    for name, usage in now.usage.items():
        rate = None
        if seconds and earlier is not None:
            previous = earlier.usage.get(name)
            delta = usage.requests - (previous.requests if previous else 0)
            rate = max(0, delta) / seconds
        rows.append(TokenRates(name, usage.requests, usage.rows, rate))
    return sorted(rows, key=lambda r: -r.requests)
