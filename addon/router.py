"""Routing addon: `/NAME/...` → the route's upstream; `/_neatlogs/...` answered by the proxy itself.

Runs before capture. Decisions are made in `requestheaders` (so a routed request can stream its
body); refusals (unknown route, missing gateway token) and local endpoints are answered in
`request`, which mitmproxy does without ever connecting upstream.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Sequence

from mitmproxy import ctx, exceptions, http

from addon.headers import OUR_PREFIX_B
from proxy.routes import Route, build_routes, split_path

log = logging.getLogger(__name__)

INTERNAL = "/_neatlogs/"
Handler = Callable[[http.HTTPFlow], None]


def json_response(status: int, body: object, headers: dict[str, str] | None = None) -> http.Response:
    return http.Response.make(status, json.dumps(body).encode(),
                              {"content-type": "application/json", **(headers or {})})


def error_response(status: int, etype: str, message: str, **extra: object) -> http.Response:
    """Errors in the shape OpenAI-style clients already display: {"error": {"type", "message"}}."""
    return json_response(status, {"error": {"type": etype, "message": message, **extra}})


def retarget(req: http.Request, route: Route, tail: str) -> None:
    """Point the request at the route's upstream: scheme, host, port, path and Host header."""
    data = req.data
    if data.authority or req.is_http2 or req.is_http3:
        req.scheme, req.host, req.port = route.scheme, route.host, route.port
        req.path = route.base_path + tail
        req.host_header = route.host_header
        return
    # An HTTP/1 origin-form request (what every LLM SDK sends): the same result as the setters above
    # with one Host header write instead of three (mitmproxy's host and port setters each re-derive
    # and rewrite it). This runs before every routed request goes upstream.
    data.scheme = route.scheme.encode()
    data.host = route.host
    data.port = route.port
    data.path = (route.base_path + tail).encode("utf-8", "surrogateescape")
    req.headers["Host"] = route.host_header


class Router:
    def __init__(self, internal: dict[tuple[str, str], Handler] | None = None) -> None:
        self.routes: dict[str, Route] = {}
        self.tokens: list[bytes] = []
        self.internal = internal or {}

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option("neatlogs_routes", Sequence[str], [], "Extra routes, NAME=URL (repeatable).")
        loader.add_option("neatlogs_default_routes", bool, True, "Include the built-in provider routes.")
        loader.add_option("neatlogs_auth_tokens", Sequence[str], [], "Gateway tokens; empty disables auth.")

    def configure(self, updated: set[str]) -> None:
        if updated & {"neatlogs_routes", "neatlogs_default_routes"}:
            try:
                self.routes = build_routes(list(ctx.options.neatlogs_routes), ctx.options.neatlogs_default_routes)
            except ValueError as exc:
                raise exceptions.OptionsError(str(exc)) from None
        if "neatlogs_auth_tokens" in updated:
            self.tokens = [t.encode() for t in ctx.options.neatlogs_auth_tokens if t]

    # ---- hooks ----

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        path = flow.request.path
        if path.startswith(INTERNAL):
            flow.metadata["neatlogs.internal"] = True
            return
        if self.tokens and not self._authorized(flow):
            flow.metadata["neatlogs.refuse"] = error_response(
                401, "unauthorized", "missing or invalid gateway token: send 'Authorization: Bearer <token>' "
                "or 'x-neatlogs-gateway-token: <token>'")
            return
        name, tail = split_path(path)
        route = self.routes.get(name)
        if route is None:
            flow.metadata["neatlogs.refuse"] = error_response(
                404, "unknown_route", f"no route named {name!r}; point the provider's baseURL at "
                f"http://<proxy>/<route>/...", routes={n: r.url for n, r in sorted(self.routes.items())})
            return
        req = flow.request
        retarget(req, route, tail)
        flow.metadata["neatlogs.route"] = route
        # Keep the headers as received (an immutable tuple: capture reads session hints and the header
        # record from it off the event loop), then strip ours before the request goes upstream.
        fields = req.headers.fields
        flow.metadata["neatlogs.request_fields"] = fields
        if any(k[:11].lower() == OUR_PREFIX_B for k, _ in fields):
            req.headers.fields = tuple(f for f in fields if f[0][:11].lower() != OUR_PREFIX_B)

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Routed answers always stream: if capture fails to install its tap, traffic still flows
        unbuffered (mitmproxy would otherwise hold an SSE answer until its end)."""
        if flow.response is not None and "neatlogs.route" in flow.metadata and not flow.response.stream:
            flow.response.stream = True

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            return
        refuse = flow.metadata.pop("neatlogs.refuse", None)
        if refuse is not None:
            flow.response = refuse
            return
        if not flow.metadata.get("neatlogs.internal"):
            return
        path = flow.request.path.split("?", 1)[0]
        handler = self.internal.get((flow.request.method, path))
        public = path in ("/_neatlogs/healthz", "/_neatlogs/readyz")
        if self.tokens and not public and not self._authorized(flow):
            flow.response = error_response(401, "unauthorized", "missing or invalid gateway token")
        elif handler is None:
            flow.response = error_response(404, "not_found", f"no proxy endpoint {flow.request.method} {path}",
                                           endpoints=sorted(f"{m} {p}" for m, p in self.internal))
        else:
            try:
                handler(flow)
            except Exception as exc:
                log.exception("endpoint %s failed", path)
                flow.response = error_response(500, "internal_error", str(exc))

    def _authorized(self, flow: http.HTTPFlow) -> bool:
        h = flow.request.headers
        candidates = [h.get("x-neatlogs-gateway-token", "")]
        auth = h.get("authorization", "")
        bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        candidates.append(bearer)
        ok = False
        for cand in candidates:
            c = cand.encode()
            for t in self.tokens:
                ok |= hmac.compare_digest(c, t)  # no early exit: constant time over the token list
        if ok and bearer and any(hmac.compare_digest(bearer.encode(), t) for t in self.tokens):
            del h["authorization"]  # the gateway token is ours, not the provider's credential
        return ok
