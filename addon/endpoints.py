"""The proxy's own HTTP endpoints under /_neatlogs/: health, readiness, metrics, plugin events."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mitmproxy import http

from addon.events import BadEvents, parse_batch
from addon.router import Handler, error_response, json_response

if TYPE_CHECKING:
    from proxy.routes import Route
    from proxy.server import App

log = logging.getLogger(__name__)


class Endpoints:
    def __init__(self, app: App) -> None:
        self.app = app

    def handlers(self) -> dict[tuple[str, str], Handler]:
        return {
            ("GET", "/_neatlogs/healthz"): self.healthz,
            ("GET", "/_neatlogs/readyz"): self.readyz,
            ("GET", "/_neatlogs/metrics"): self.metrics,
            ("POST", "/_neatlogs/v1/events"): self.events,
        }

    def routes(self) -> dict[str, Route]:
        from proxy.routes import build_routes

        return build_routes(self.app.settings.routes)

    def healthz(self, flow: http.HTTPFlow) -> None:
        flow.response = json_response(200, {"status": "ok"})

    def readyz(self, flow: http.HTTPFlow) -> None:
        app = self.app
        problems = []
        if not app.pipeline.alive:
            problems.append("capture pipeline stopped")
        if app.settings.api_key and not app.exporter.alive:
            problems.append("exporter stopped")
        if problems:
            flow.response = json_response(503, {"status": "not ready", "problems": problems})
        else:
            flow.response = json_response(200, {"status": "ready", "spool_depth": app.spool.depth})

    def metrics(self, flow: http.HTTPFlow) -> None:
        body, ctype = self.app.metrics.render()
        flow.response = http.Response.make(200, body, {"content-type": ctype})

    def events(self, flow: http.HTTPFlow) -> None:
        body = flow.request.raw_content or b""
        if "json" not in flow.request.headers.get("content-type", "application/json"):
            flow.response = error_response(415, "unsupported_media_type", "send application/json")
            return
        try:
            batch = parse_batch(body)
        except BadEvents as exc:
            self.app.stats["plugin_events_rejected"] = self.app.stats.get("plugin_events_rejected", 0) + 1
            status = 413 if "larger than" in str(exc) else 400
            flow.response = error_response(status, "invalid_events", str(exc))
            return
        key = flow.request.headers.get("x-neatlogs-api-key") or None
        self.app.pipeline.submit_events(list(batch.events), key)
        self.app.stats["plugin_events"] = self.app.stats.get("plugin_events", 0) + len(batch.events)
        flow.response = json_response(202, {"accepted": len(batch.events)})
