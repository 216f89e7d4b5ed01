"""mitmproxy bootstrap: a bare Master with only the addons the proxy needs, on uvloop.

DumpMaster loads ~30 addons (and a console log); a bare Master with core, proxyserver, nextlayer,
tlsconfig and errorcheck forwards ~1.7x faster. Capture state, the pipeline thread and the exporter
are built here and torn down in order on SIGTERM/SIGINT: stop accepting, let in-flight streams
finish (bounded), flush the pipeline, final export attempt, spool keeps the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import time
from pathlib import Path

import certifi
from mitmproxy import options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

from addon.capture import Capture
from addon.correlate import Correlator
from addon.endpoints import Endpoints
from addon.export import Exporter
from addon.metrics import Metrics
from addon.pipeline import Pipeline
from addon.spans import Content
from addon.spool import Spool
from addon.store import LocalStore
from addon.transport import OTLPTransport
from proxy.errors import install_json_errors
from proxy.fastpath import FastPath
from proxy.settings import Settings
from proxy.tuning import tune_mitmproxy, use_hook_cache

log = logging.getLogger("neatlogs.proxy")


def scrubber(enabled: bool):  # type: ignore[no-untyped-def]
    if not enabled:
        return None
    try:
        from addon.redact import redact
    except ImportError:  # pragma: no cover - redaction module ships with the package
        log.warning("redaction module missing: content is exported unscrubbed")
        return None
    return redact


def cost_function():  # type: ignore[no-untyped-def]
    try:
        from addon.cost import compute_cost
    except ImportError:  # pragma: no cover
        return None
    return compute_cost


def upstream_trust_bundle(extra: Path, directory: Path) -> Path:
    """The public CAs (certifi, what mitmproxy trusts by default) plus `extra`, in one PEM file:
    mitmproxy's `ssl_verify_upstream_trusted_ca` replaces its default store instead of adding to it."""
    directory.mkdir(parents=True, exist_ok=True)
    bundle = directory / "upstream-trust.pem"
    tmp = bundle.with_suffix(".tmp")
    tmp.write_bytes(Path(certifi.where()).read_bytes().rstrip(b"\n") + b"\n" + extra.read_bytes())
    tmp.replace(bundle)
    return bundle


def listen_problem(host: str, port: int) -> str | None:
    """Why the proxy could not listen on host:port, found before mitmproxy tries (its own message
    talks about its `--mode` option, which our users never set); None when it can."""
    if port == 0:
        return None
    try:
        family, stype, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror}"
    with socket.socket(family, stype, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the real listener does
        try:
            sock.bind(addr)
        except OSError as exc:
            in_use = exc.errno == errno.EADDRINUSE
            hint = " (is another neatlogs-proxy running? choose another --port)" if in_use else ""
            return f"cannot listen on {host}:{port}: {(exc.strerror or str(exc)).lower()}{hint}"
    return None


class Started:
    """Addon: set once mitmproxy runs, i.e. its listeners are up (the `running` hook)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def running(self) -> None:
        self.event.set()


class App:
    """Everything one proxy process owns, wired together."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats: dict[str, int] = {}
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self.store = LocalStore(data / "traces.db")
        self.spool = Spool(data / "spool.db", settings.spool_max_bytes)
        self.transport = OTLPTransport(settings.traces_url, settings.export_timeout)
        self.exporter = Exporter(self.store, self.spool, self.transport, settings.workflow_name,
                                 settings.api_key, self.stats)
        content = Content(settings.max_attribute_bytes, scrubber(settings.redact))
        self.metrics = Metrics()
        self.correlator = Correlator(self.exporter.submit, content,
                                     capture_system_prompt=settings.capture_system_prompt,
                                     idle_timeout=settings.idle_timeout, cost_fn=cost_function(),
                                     observe=self.metrics.observe_call, history=self.store.session_history)
        self.pipeline = Pipeline(self.correlator, self.stats)
        self.metrics.attach(self)
        self.endpoints = Endpoints(self)
        self.started = time.time()

    def addons(self) -> list[object]:
        from addon.router import Router

        return [Router(self.endpoints.handlers()), Capture(self.pipeline, self.stats)]

    def where(self) -> str:
        s = self.settings
        local = f"local store {s.data_dir / 'traces.db'}"
        if s.api_key:
            return f"Neatlogs at {s.traces_url} (and a copy in the {local})"
        return f"the {local} (no NEATLOGS_API_KEY; per-user keys from x-neatlogs-api-key still export)"

    def close(self) -> None:
        self.transport.close()
        self.spool.close()
        self.store.close()


async def serve(settings: Settings) -> int:
    problem = listen_problem(settings.host, settings.port)
    if problem:
        log.error("%s", problem)
        return 1
    install_json_errors()
    tune_mitmproxy()
    app = App(settings)
    opts = options.Options()
    master = Master(opts, event_loop=asyncio.get_running_loop())
    use_hook_cache(master)
    started = Started()
    # FastPath before NextLayer: mitmproxy's own choice only fills in a layer nobody chose.
    master.addons.add(core.Core(), proxyserver.Proxyserver(), FastPath(app.stats), next_layer.NextLayer(),
                      tlsconfig.TlsConfig(), errorcheck.ErrorCheck(), *app.addons(), started)
    opts.update(
        mode=["reverse:http://127.0.0.1:9"],  # placeholder: the router picks the upstream per request
        listen_host=settings.host,
        listen_port=settings.port,
        connection_strategy="lazy",
        keep_host_header=False,
        ssl_insecure=False,
        neatlogs_routes=settings.routes,
        neatlogs_auth_tokens=settings.all_auth_tokens(),
        neatlogs_max_capture_bytes=settings.max_capture_bytes,
        neatlogs_fast_http1=settings.http_layer == "fast",
        confdir=str(settings.data_dir / "mitmproxy"),  # mitmproxy's CA files: ours, not ~/.mitmproxy
    )
    if settings.upstream_ca:
        bundle = upstream_trust_bundle(settings.upstream_ca, settings.data_dir / "mitmproxy")
        opts.update(ssl_verify_upstream_trusted_ca=str(bundle))
        log.info("upstream HTTPS also trusts the CA certificates in %s", settings.upstream_ca)
    # mitmproxy opens its listeners before the `running` hook loads tlsconfig's CA store; a request in
    # between crashed tlsconfig.request. Load the store now, before anything listens.
    master.addons.get("tlsconfig").configure({"confdir"})
    app.pipeline.start()
    app.exporter.start()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    hurry = asyncio.Event()  # a second signal: stop waiting for in-flight requests

    def on_signal() -> None:
        (hurry if stopping.is_set() else stopping).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal)

    run = asyncio.create_task(master.run())
    stopper = asyncio.create_task(stopping.wait())
    ready = asyncio.create_task(started.event.wait())
    done, _ = await asyncio.wait({run, stopper, ready}, return_when=asyncio.FIRST_COMPLETED)
    if ready in done:  # said only once it is true
        log.info("neatlogs-proxy listening on http://%s:%d; routes: %s", settings.host, settings.port,
                 ", ".join(f"/{n}→{r.url}" for n, r in sorted(app.endpoints.routes().items())))
        log.info("traces go to %s", app.where())
        done, _ = await asyncio.wait({run, stopper}, return_when=asyncio.FIRST_COMPLETED)
    else:
        ready.cancel()
    code = 0
    deadline = time.monotonic() + settings.shutdown_timeout
    if run in done:
        exc = run.exception()
        if exc is not None:
            log.error("the proxy stopped: %s: %s", type(exc).__name__, exc)
        code = 1 if exc is not None or not started.event.is_set() else 0
    else:
        log.info("shutting down: finishing in-flight requests (up to %.0fs)", settings.shutdown_timeout)
        ps = master.addons.get("proxyserver")
        with contextlib.suppress(Exception):
            await ps.servers.update([])  # stop accepting new connections; open ones carry on
        capture = master.addons.get("capture")
        while capture is not None and capture.inflight and time.monotonic() < deadline and not hurry.is_set():
            await asyncio.sleep(0.05)
        if capture is not None and capture.inflight:
            log.warning("%d requests still in flight at the shutdown deadline: closing them", capture.inflight)
        master.shutdown()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(run, timeout=5)
    # Capture → spans → spool, then a last delivery attempt; what is not acknowledged stays spooled.
    await asyncio.to_thread(app.pipeline.stop, max(deadline - time.monotonic(), 2.0))
    await asyncio.to_thread(app.exporter.stop, max(deadline - time.monotonic(), 2.0))
    app.close()
    log.info("stopped")
    return code
