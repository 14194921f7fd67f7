"""A worker's Prometheus families as ``/v1/status`` sums them per version (``status.collect``),
and several processes' families merged into one exposition (the Ray gateway's ``/metrics``)."""

from __future__ import annotations

from kit.prometheus import series
from prometheus_client.parser import text_string_to_metric_families

from kernel_magics.serving.request import metrics
from kernel_magics.serving.request.status import collect


def test_a_versions_counters_reach_its_status_snapshot() -> None:
    stats = metrics.ModelStats("collected", 3)
    stats.requests.inc(4)
    stats.errors.inc(2)
    stats.server_errors.inc()  # a 5xx: the service's fault, apart from the request's
    stats.tokens.inc(17)
    stats.ttft.observe(0.003)
    (version,) = [v for v in collect()[0] if (v.model, v.version) == ("collected", 3)]
    assert (version.requests, version.errors, version.server_errors) == (4, 2, 1)
    assert (version.client_errors, version.tokens) == (1, 17)
    assert version.ttft_buckets[-1][1] == 1


def test_families_of_several_processes_merge_into_one_series_each() -> None:
    stats = metrics.ModelStats("merged", 1)
    stats.requests.inc(3)
    stats.latency.observe(0.004)
    one = metrics.families()
    text = metrics.merged([one, one]).decode()  # two replicas with the same figures
    assert series(text, "km_requests_total", model="merged", version="1") == 6
    assert series(text, "km_request_latency_seconds_count", model="merged", version="1") == 2
    assert series(text, "km_request_latency_seconds_bucket", model="merged", le="+Inf") == 2
    created = series(text, "km_requests_created", model="merged", version="1")
    assert created == series(metrics.merged([one]).decode(), "km_requests_created", model="merged")
    names = [family.name for family in text_string_to_metric_families(text)]
    assert len(names) == len(set(names))  # each family once, as a scraper requires
    assert text.count("# TYPE km_requests_total counter") == 1
