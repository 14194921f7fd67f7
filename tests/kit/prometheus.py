"""Reading a Prometheus exposition (``/metrics``) the way a scraper does."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def series(text: str, sample: str, **labels: str) -> float:
    """The sum of the samples named ``sample`` (``km_requests_total``, ``km_batch_size_sum``)
    whose labels include ``labels``; 0 when none does."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )
