"""A served version's counters since the process started, and the latency histograms they
carry (Prometheus's cumulative buckets)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from kernel_magics.errors import InvalidInput
from kernel_magics.records._wire import _count, _float_or_none, _int_or_none, _mapping, _Wire

Buckets = tuple[tuple[float, int], ...]  # Prometheus's cumulative (upper bound s, count)


def bucket_quantile_ms(buckets: Buckets, q: float) -> float | None:
    """The ``q`` quantile in ms of a cumulative histogram, interpolated inside its bucket as
    Prometheus's ``histogram_quantile`` does; None without observations."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):  # beyond the last finite bucket: its bound
                return lower_bound * 1000
            inside = (rank - lower_count) / (count - lower_count) if count > lower_count else 1
            return (lower_bound + (bound - lower_bound) * inside) * 1000
        lower_bound, lower_count = bound, count
    return lower_bound * 1000


def _buckets_since(now: Buckets, earlier: Buckets) -> Buckets:
    before = dict(earlier)
    return tuple((bound, max(0, count - before.get(bound, 0))) for bound, count in now)


def _buckets_from_wire(raw: Any) -> Buckets:
    buckets = []
    for pair in raw or ():
        bound, count = _float_or_none(pair[0], "bucket bound"), _count(pair[1], "bucket")
        buckets.append((float("inf") if bound is None else bound, count))
    return tuple(buckets)


def _buckets_to_wire(buckets: Buckets) -> list[list[Any]]:
    # JSON has no infinity: the last bucket's bound travels as null
    return [[None if bound == float("inf") else bound, count] for bound, count in buckets]


@dataclass(frozen=True)
class VersionStats(_Wire):
    """Counters of one served version since its process started, summed over workers.

    ``latency_buckets`` are Prometheus's cumulative histogram buckets (upper bound in seconds,
    count), so two snapshots subtract into the figures of the time between them (``since``).
    """

    model: str
    version: int
    requests: int = 0
    errors: int = 0  # answered with an error: 4xx (the request's fault) and 5xx
    server_errors: int = 0  # the 5xx among them (the service's fault)
    rows: int = 0  # rows through forward passes
    batches: int = 0  # forward passes
    queue: int = 0  # requests waiting for a forward pass now
    latency_count: int = 0
    latency_sum_s: float = 0.0
    latency_buckets: Buckets = ()
    # a language model: completion tokens generated, time to first token and between tokens
    tokens: int = 0
    ttft_buckets: Buckets = ()
    inter_token_buckets: Buckets = ()

    @property
    def mean_batch_size(self) -> float | None:
        return self.rows / self.batches if self.batches else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    @property
    def client_errors(self) -> int:
        return max(0, self.errors - self.server_errors)

    @property
    def client_error_rate(self) -> float | None:
        return self.client_errors / self.requests if self.requests else None

    @property
    def server_error_rate(self) -> float | None:
        return self.server_errors / self.requests if self.requests else None

    @property
    def p50_ms(self) -> float | None:
        return self.quantile_ms(0.5)

    @property
    def p99_ms(self) -> float | None:
        return self.quantile_ms(0.99)

    def quantile_ms(self, q: float) -> float | None:
        """The ``q`` quantile of the latency in ms (``bucket_quantile_ms``)."""
        return bucket_quantile_ms(self.latency_buckets, q)

    @property
    def ttft_p50_ms(self) -> float | None:
        return bucket_quantile_ms(self.ttft_buckets, 0.5)

    @property
    def ttft_p99_ms(self) -> float | None:
        return bucket_quantile_ms(self.ttft_buckets, 0.99)

    @property
    def inter_token_p99_ms(self) -> float | None:
        return bucket_quantile_ms(self.inter_token_buckets, 0.99)

    def since(self, earlier: VersionStats | None) -> VersionStats:
        """What happened between ``earlier`` (a previous snapshot) and this one; the whole
        count when there is no earlier one or the counters restarted (a process restart)."""
        if earlier is None or earlier.requests > self.requests:
            return self
        return dataclasses.replace(
            self,
            requests=self.requests - earlier.requests,
            errors=max(0, self.errors - earlier.errors),
            server_errors=max(0, self.server_errors - earlier.server_errors),
            rows=max(0, self.rows - earlier.rows),
            batches=max(0, self.batches - earlier.batches),
            latency_count=max(0, self.latency_count - earlier.latency_count),
            latency_sum_s=max(0.0, self.latency_sum_s - earlier.latency_sum_s),
            latency_buckets=_buckets_since(self.latency_buckets, earlier.latency_buckets),
            tokens=max(0, self.tokens - earlier.tokens),
            ttft_buckets=_buckets_since(self.ttft_buckets, earlier.ttft_buckets),
            inter_token_buckets=_buckets_since(
                self.inter_token_buckets, earlier.inter_token_buckets
            ),
        )

    @classmethod
    def from_wire(cls, doc: Any) -> VersionStats:
        doc = _mapping(doc, "version stats")
        version = _int_or_none(doc.get("version"), "version")
        if version is None:
            raise InvalidInput("version stats need a version")
        return cls(
            model=str(doc.get("model") or ""),
            version=version,
            requests=_count(doc.get("requests"), "requests"),
            errors=_count(doc.get("errors"), "errors"),
            server_errors=_count(doc.get("server_errors"), "server_errors"),
            rows=_count(doc.get("rows"), "rows"),
            batches=_count(doc.get("batches"), "batches"),
            queue=_count(doc.get("queue"), "queue"),
            latency_count=_count(doc.get("latency_count"), "latency_count"),
            latency_sum_s=_float_or_none(doc.get("latency_sum_s"), "latency_sum_s") or 0.0,
            latency_buckets=_buckets_from_wire(doc.get("latency_buckets")),
            tokens=_count(doc.get("tokens"), "tokens"),
            ttft_buckets=_buckets_from_wire(doc.get("ttft_buckets")),
            inter_token_buckets=_buckets_from_wire(doc.get("inter_token_buckets")),
        )

    def to_wire(self) -> dict[str, Any]:
        doc = super().to_wire()
        for key in ("latency_buckets", "ttft_buckets", "inter_token_buckets"):
            doc[key] = _buckets_to_wire(getattr(self, key))
        doc.update(mean_batch_size=self.mean_batch_size, p50_ms=self.p50_ms, p99_ms=self.p99_ms)
        doc.update(
            ttft_p50_ms=self.ttft_p50_ms,
            ttft_p99_ms=self.ttft_p99_ms,
            inter_token_p99_ms=self.inter_token_p99_ms,
        )
        return doc
