"""Prometheus metrics of a worker, labelled by model and version.

With one worker the default registry is exposed as is. With several, ``/metrics`` on any worker
must show them all, so the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` (a folder under the run
dir, wiped at start) before the workers import prometheus_client, and ``/metrics`` aggregates the
per-process files with ``MultiProcessCollector``. Label children are resolved once per model
version (``ModelStats``) so the hot path only calls ``inc``/``observe``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
_LABELS = ("model", "version")
_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)

REQUESTS = Counter("km_requests", "Prediction requests answered", _LABELS)
ERRORS = Counter("km_request_errors", "Prediction requests answered with an error", _LABELS)
# The 5xx among them (the service's fault); the rest are 4xx (the client's request).
SERVER_ERRORS = Counter(
    "km_request_server_errors", "Prediction requests answered with a 5xx error", _LABELS
)
LATENCY = Histogram(
    "km_request_latency_seconds",
    "Time from a prediction request being parsed to its answer being written",
    _LABELS,
    buckets=_LATENCY_BUCKETS,
)
BATCH = Histogram(
    "km_batch_size", "Rows per forward pass of the dynamic batcher", _LABELS, buckets=_BATCH_BUCKETS
)
QUEUE = Gauge(
    "km_queue_depth",
    "Requests waiting for a forward pass",
    _LABELS,
    multiprocess_mode="livesum",
)
# generative models: time to first token (request parsed → first text written) and between
# two tokens of one stream
TTFT = Histogram(
    "km_generation_ttft_seconds",
    "Time from a generation request being parsed to its first text",
    _LABELS,
    buckets=_LATENCY_BUCKETS,
)
INTER_TOKEN = Histogram(
    "km_generation_inter_token_seconds",
    "Time between two pieces of text of one generation",
    _LABELS,
    buckets=_LATENCY_BUCKETS,
)
GEN_TOKENS = Counter("km_generation_tokens", "Completion tokens generated", _LABELS)
# A language model's engine now, set from ``Engine.describe()`` when /metrics or /v1/status is
# read (``ModelStats.set_generation``): sequences running and queued, KV-cache tokens reserved
# and the budget.
GEN_RUNNING = Gauge(
    "km_generation_running",
    "Sequences in the running batch of a language model",
    _LABELS,
    multiprocess_mode="livesum",
)
GEN_QUEUED = Gauge(
    "km_generation_queued",
    "Generation requests waiting for a running slot",
    _LABELS,
    multiprocess_mode="livesum",
)
GEN_KV_USED = Gauge(
    "km_generation_kv_cache_reserved_tokens",
    "KV-cache tokens reserved by the running sequences",
    _LABELS,
    multiprocess_mode="livesum",
)
GEN_KV_BUDGET = Gauge(
    "km_generation_kv_cache_budget_tokens",
    "KV-cache budget in tokens (setting gen_kv_cache_tokens)",
    _LABELS,
    multiprocess_mode="livesum",
)
LOADS = Counter("km_model_loads", "Model versions loaded into a worker", _LABELS)
# The inference log (kernel_magics/quality/log_writer.py): samples written, and samples dropped
# because the writer's queue was full or the write failed (the requests were answered anyway)
LOG_WRITTEN = Counter("km_inference_log_written", "Requests written to the inference log")
LOG_DROPPED = Counter(
    "km_inference_log_dropped", "Sampled requests the inference log dropped (queue full, disk)"
)
# Usage metering per bearer token name ("default" = the home token, "anonymous" = no token
# where predictions allow it); never the token itself.
TOKEN_REQUESTS = Counter("km_token_requests", "Prediction requests per token", ("token",))
TOKEN_ROWS = Counter("km_token_rows", "Rows sent for inference per token", ("token",))
# generative models: what each API token asked of them, in the model's tokens
TOKEN_PROMPT = Counter(
    "km_token_prompt_tokens", "Prompt tokens generated from, per token", ("token",)
)
TOKEN_COMPLETION = Counter(
    "km_token_completion_tokens", "Completion tokens generated, per token", ("token",)
)


class Usage:
    """Per-token counters with their label children cached (the hot path only calls ``inc``)."""

    __slots__ = ("_requests", "_rows", "_prompt", "_completion")

    def __init__(self) -> None:
        self._requests: dict[str, Any] = {}
        self._rows: dict[str, Any] = {}
        self._prompt: dict[str, Any] = {}
        self._completion: dict[str, Any] = {}

    def tokens(self, token: str, prompt: int, completion: int) -> None:
        """A generation's prompt and completion tokens, metered for the API token."""
        if token not in self._prompt:
            self._prompt[token] = TOKEN_PROMPT.labels(token)
            self._completion[token] = TOKEN_COMPLETION.labels(token)
        self._prompt[token].inc(prompt)
        self._completion[token].inc(completion)

    def request(self, token: str) -> None:
        child = self._requests.get(token)
        if child is None:
            child = self._requests[token] = TOKEN_REQUESTS.labels(token)
        child.inc()

    def rows(self, token: str, n: int) -> None:
        child = self._rows.get(token)
        if child is None:
            child = self._rows[token] = TOKEN_ROWS.labels(token)
        child.inc(n)


class ModelStats:
    __slots__ = (
        "requests",
        "errors",
        "server_errors",
        "model_errors",
        "latency",
        "batch",
        "queue",
        "ttft",
        "inter_token",
        "tokens",
        "gen_running",
        "gen_queued",
        "kv_used",
        "kv_budget",
    )

    def __init__(self, model: str, version: int):
        labels = (model, str(version))
        self.requests = REQUESTS.labels(*labels)
        self.errors = ERRORS.labels(*labels)
        self.server_errors = SERVER_ERRORS.labels(*labels)
        # the errors the model itself caused (its forward raised, its output could not be
        # encoded): the same series as ``errors``; a judged canary's arms count them apart
        # (request/canary.py)
        self.model_errors = self.errors
        self.latency = LATENCY.labels(*labels)
        self.batch = BATCH.labels(*labels)
        self.queue = QUEUE.labels(*labels)
        self.ttft = TTFT.labels(*labels)
        self.inter_token = INTER_TOKEN.labels(*labels)
        self.tokens = GEN_TOKENS.labels(*labels)
        self.gen_running = GEN_RUNNING.labels(*labels)
        self.gen_queued = GEN_QUEUED.labels(*labels)
        self.kv_used = GEN_KV_USED.labels(*labels)
        self.kv_budget = GEN_KV_BUDGET.labels(*labels)

    def set_generation(self, engine: dict[str, Any]) -> None:
        """The gauges of a language model from its engine's ``describe()``."""
        self.gen_running.set(engine["running"])
        self.gen_queued.set(engine["queued"])
        self.kv_used.set(engine["kv_cache_reserved"])
        self.kv_budget.set(engine["kv_cache_tokens"])

    def clear_generation(self) -> None:
        """A language model unloaded: its gauges read 0, not its last state."""
        for gauge in (self.gen_running, self.gen_queued, self.kv_used, self.kv_budget):
            gauge.set(0)


def unknown_model_errors() -> Counter:
    """Errors for names that are not deployed go to one series, not one per attacker string."""
    return ERRORS.labels("", "")


# Every family of ours: what ``/v1/status`` sums per version (``status.collect``) and what a
# Ray replica hands its gateway's ``/metrics``.
_OURS = (
    REQUESTS,
    ERRORS,
    SERVER_ERRORS,
    LATENCY,
    BATCH,
    QUEUE,
    TTFT,
    INTER_TOKEN,
    GEN_TOKENS,
    GEN_RUNNING,
    GEN_QUEUED,
    GEN_KV_USED,
    GEN_KV_BUDGET,
    LOADS,
    TOKEN_REQUESTS,
    TOKEN_ROWS,
    TOKEN_PROMPT,
    TOKEN_COMPLETION,
    LOG_WRITTEN,
    LOG_DROPPED,
)


def families() -> list[Metric]:
    """Our metric families: summed over every worker's files in multiprocess mode, else this
    process's own collectors (not the whole default registry: no process or GC collectors)."""
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        return list(multiprocess.MultiProcessCollector(registry, path=folder).collect())
    return [family for metric in _OURS for family in metric.collect()]


def merged(groups: Iterable[Iterable[Metric]]) -> bytes:
    """The exposition of several processes' families (the Ray target's replicas) as one:
    a family once, a sample of the same name and labels summed over the processes (a
    ``_created`` time: the earliest), as Prometheus reads one series once."""
    by_name: dict[str, Metric] = {}
    samples: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], Sample]] = {}
    for group in groups:
        for family in group:
            if family.name not in by_name:
                by_name[family.name] = Metric(family.name, family.documentation, family.type)
                samples[family.name] = {}
            into = samples[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                seen = into.get(key)
                if seen is None:
                    into[key] = sample
                elif sample.name.endswith("_created"):  # a creation time: the earliest
                    into[key] = seen._replace(value=min(seen.value, sample.value))
                else:
                    into[key] = seen._replace(value=seen.value + sample.value)
    for name, family in by_name.items():
        family.samples = list(samples[name].values())
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(by_name.values())))
    return generate_latest(registry)


class _Families(Collector):
    def __init__(self, items: list[Metric]) -> None:
        self.items = items

    def collect(self) -> Iterable[Metric]:
        return self.items


def render() -> bytes:
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)
        return generate_latest(registry)
    return generate_latest()
