"""Prometheus metrics for `/_neatlogs/metrics`: LLM traffic per route/model, capture and export health.

Call metrics are observed on the pipeline thread after each exchange is parsed (prometheus_client is
thread-safe); the proxy's counters dict and the spool depth are read at scrape time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from addon.model import Usage

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 300)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        labels = ["route", "model"]
        self.requests = Counter("neatlogs_proxy_llm_requests", "LLM calls proxied", [*labels, "status"], registry=r)
        self.latency = Histogram("neatlogs_proxy_llm_request_duration_seconds", "request start to last byte",
                                 labels, buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("neatlogs_proxy_llm_time_to_first_token_seconds", "request start to first token",
                              labels, buckets=_TTFT_BUCKETS, registry=r)
        self.tokens = Counter("neatlogs_proxy_llm_tokens", "tokens by kind", [*labels, "kind"], registry=r)
        self.cost = Counter("neatlogs_proxy_llm_cost_usd", "cost of LLM calls in USD", labels, registry=r)
        self.errors = Counter("neatlogs_proxy_llm_errors", "LLM calls that failed", [*labels, "type"], registry=r)

    def observe_call(self, route: str, model: str, status: int | None, duration_s: float, ttft_s: float | None,
                     usage: Usage | None, cost: float | None, error_type: str | None) -> None:
        # A label the exposition can't encode (a lone surrogate in a model name) would break every scrape.
        route, model = _label(route), _label(model)
        error_type = _label(error_type) if error_type else error_type
        self.requests.labels(route, model, str(status or 0)).inc()
        self.latency.labels(route, model).observe(max(duration_s, 0.0))
        if ttft_s is not None:
            self.ttft.labels(route, model).observe(max(ttft_s, 0.0))
        if usage is not None:
            for kind, n in (("input", usage.input_tokens), ("output", usage.output_tokens),
                            ("cache_read", usage.cache_read_tokens), ("cache_write", usage.cache_write_tokens),
                            ("reasoning", usage.reasoning_tokens)):
                if n:
                    self.tokens.labels(route, model, kind).inc(n)
        if cost:
            self.cost.labels(route, model).inc(cost)
        if error_type:
            self.errors.labels(route, model, error_type).inc()

    def attach(self, app: Any) -> None:
        self.registry.register(_AppCollector(app))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _AppCollector(Collector):
    """Counters kept as plain ints by the pipeline/exporter threads, plus queue depths."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        stats = dict(self.app.stats)
        for key in ("capture_errors", "spans_exported", "export_failures", "export_refused", "plugin_events",
                    "plugin_events_rejected"):
            c = CounterMetricFamily(f"neatlogs_proxy_{key}", key.replace("_", " "))
            c.add_metric([], stats.get(key, 0))
            yield c
        conns = CounterMetricFamily("neatlogs_proxy_http_connections", "client connections by the HTTP layer "
                                    "that took them (fast: the proxy's own; mitmproxy: its stock layer)",
                                    labels=["http_layer"])
        for layer in ("fast", "mitmproxy"):
            conns.add_metric([layer], stats.get(f"http_connections_{layer}", 0))
        yield conns
        h = CounterMetricFamily("neatlogs_proxy_http_handovers", "fast-path connections handed to mitmproxy's "
                                "HTTP layer for a request it does not handle (Upgrade, Expect, HTTP/1.0, malformed)")
        h.add_metric([], stats.get("http_handovers", 0))
        yield h
        spool = self.app.spool
        for name, value, doc in (("spool_depth", spool.depth, "spans waiting for delivery"),
                                 ("spool_bytes", spool.bytes, "bytes waiting for delivery"),
                                 ("pipeline_queue", self.app.pipeline.q.qsize(), "captures not processed yet")):
            g = GaugeMetricFamily(f"neatlogs_proxy_{name}", doc)
            g.add_metric([], value)
            yield g
        d = CounterMetricFamily("neatlogs_proxy_spool_dropped", "spans dropped because the spool was full")
        d.add_metric([], spool.dropped)
        yield d


def _label(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return value
