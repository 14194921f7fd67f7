"""Reading the inference process's Prometheus text (``/metrics``) on the kernel side."""

from __future__ import annotations

from kernel_magics.records import TokenUsage

_USAGE = {"km_token_requests_total": "requests", "km_token_rows_total": "rows"}


def usage_from_text(text: str) -> dict[str, TokenUsage]:
    """Requests and rows per token name, summed over workers."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[str, dict[str, int]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = _USAGE.get(sample.name)
            if key is not None:
                entry = counts.setdefault(
                    sample.labels.get("token", ""), {"requests": 0, "rows": 0}
                )
                entry[key] += int(sample.value)
    return {name: TokenUsage(**c) for name, c in counts.items()}
