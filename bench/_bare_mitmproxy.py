"""mitmproxy alone, as neatlogs-proxy runs it but without our addons: the floor for bench/latency.py.

    python bench/_bare_mitmproxy.py --port 0 --upstream 9999

A bare `Master` (core, proxyserver, next_layer, tlsconfig, errorcheck) in `reverse:http` mode to the
upstream, on uvloop, with the same process-wide tuning as `proxy.server.serve` (`tune_mitmproxy`,
`use_hook_cache`), and one addon that streams request and response bodies as capture does. No routing,
capture, correlation or export: "added by proxy" minus "added by mitmproxy" is what those cost.
Prints `PORT <n>` once listening; run it with the proxy checkout on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys

from mitmproxy import http, options
from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig
from mitmproxy.master import Master

from proxy.tuning import tune_mitmproxy, use_hook_cache


class StreamBodies:
    """What capture and routing leave mitmproxy doing: stream both bodies, never buffer."""

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        flow.request.stream = True

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None:
            flow.response.stream = True


class Listening:
    def __init__(self, port: int) -> None:
        self.port = port

    def running(self) -> None:
        print(f"PORT {self.port}", flush=True)


async def serve(port: int, upstream: int, confdir: str, stock: bool = False) -> None:
    if not stock:
        tune_mitmproxy()
    opts = options.Options()
    master = Master(opts, event_loop=asyncio.get_running_loop())
    if not stock:
        use_hook_cache(master)
    master.addons.add(core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), tlsconfig.TlsConfig(),
                      errorcheck.ErrorCheck(), StreamBodies(), Listening(port))
    opts.update(mode=[f"reverse:http://127.0.0.1:{upstream}"], listen_host="127.0.0.1", listen_port=port,
                connection_strategy="lazy", keep_host_header=False, confdir=confdir)
    master.addons.get("tlsconfig").configure({"confdir"})
    await master.run()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0, help="0: pick a free port")
    ap.add_argument("--upstream", type=int, required=True)
    ap.add_argument("--confdir", required=True, help="mitmproxy's CA directory (a temp dir)")
    ap.add_argument("--stock", action="store_true", help="without proxy.tuning: mitmproxy as shipped")
    args = ap.parse_args()
    port = args.port
    if not port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    try:
        import uvloop

        uvloop.run(serve(port, args.upstream, args.confdir, args.stock))
    except ImportError:  # pragma: no cover
        asyncio.run(serve(port, args.upstream, args.confdir, args.stock))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
