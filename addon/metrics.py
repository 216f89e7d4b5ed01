"""Prometheus exposition of the proxy's counters (filled in by the gateway work)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry


class _AppCollector(Collector):
    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self):  # type: ignore[no-untyped-def]
        stats = self.app.stats
        for key in sorted(stats):
            c = CounterMetricFamily(f"neatlogs_proxy_{key}", key.replace("_", " "))
            c.add_metric([], stats[key])
            yield c
        g = GaugeMetricFamily("neatlogs_proxy_spool_depth", "spans waiting for delivery")
        g.add_metric([], self.app.spool.depth)
        yield g


def render(app: Any) -> tuple[bytes, str]:
    reg = CollectorRegistry()
    reg.register(_AppCollector(app))
    return generate_latest(reg), CONTENT_TYPE_LATEST
