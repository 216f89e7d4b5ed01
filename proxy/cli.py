"""`neatlogs-proxy`: run the proxy (default), list captured sessions, show one session's span tree."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from proxy import __version__
from proxy.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neatlogs-proxy", description=__doc__)
    p.add_argument("--version", action="version", version=f"neatlogs-proxy {__version__}")
    sub = p.add_subparsers(dest="command")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--data-dir", type=Path, help="where the local store and spool live "
                        "(env NEATLOGS_PROXY_DATA_DIR)")

    run = sub.add_parser("run", help="run the proxy (the default)")
    add_run_args(run)
    common(run)
    ls = sub.add_parser("sessions", help="list captured sessions from the local store")
    common(ls)
    ls.add_argument("--limit", type=int, default=50)
    show = sub.add_parser("show", help="print one session's span tree")
    common(show)
    show.add_argument("session_id")
    # `neatlogs-proxy --port 8787 ...` without a subcommand means `run`.
    add_run_args(p)
    common(p)
    return p


def add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="listen address (env NEATLOGS_PROXY_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (env NEATLOGS_PROXY_PORT, default 8787)")
    p.add_argument("--route", action="append", dest="routes", metavar="NAME=URL",
                   help="map /NAME/... to URL/... (repeatable; env NEATLOGS_PROXY_ROUTES, comma-separated)")
    p.add_argument("--idle-timeout", type=float, help="quiet seconds that end a turn without the plugin")
    p.add_argument("--auth-token", action="append", dest="auth_tokens", metavar="TOKEN",
                   help="require this gateway token (repeatable; env NEATLOGS_PROXY_AUTH_TOKENS)")
    p.add_argument("--auth-token-file", type=Path, help="file with one gateway token per line")
    p.add_argument("--upstream-ca", type=Path, metavar="PEM",
                   help="extra CA certificates trusted for upstream HTTPS, besides the public ones "
                        "(env NEATLOGS_PROXY_UPSTREAM_CA)")
    p.add_argument("--http-layer", choices=["fast", "mitmproxy"],
                   help="which HTTP layer serves clients: the proxy's lean HTTP/1.1 path (default; anything it "
                        "does not handle goes to mitmproxy's) or mitmproxy's own (env NEATLOGS_PROXY_HTTP_LAYER)")
    p.add_argument("--log-format", choices=["text", "json"])
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for key in ("host", "port", "data_dir", "idle_timeout", "auth_token_file", "upstream_ca", "http_layer",
                "log_format", "log_level"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    base = Settings()
    if getattr(args, "routes", None):
        overrides["routes"] = [*base.routes, *args.routes]
    if getattr(args, "auth_tokens", None):
        overrides["auth_tokens"] = [*base.auth_tokens, *args.auth_tokens]
    return Settings.model_validate({**base.model_dump(), **overrides})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
        if args.command in (None, "run"):
            from proxy.routes import build_routes

            build_routes(settings.routes)  # fail fast with a readable message
            settings.all_auth_tokens()
    except (ValidationError, ValueError, OSError) as exc:
        print(f"neatlogs-proxy: invalid settings: {exc}", file=sys.stderr)
        return 2
    if args.command == "sessions":
        return cmd_sessions(settings, args.limit)
    if args.command == "show":
        return cmd_show(settings, args.session_id)
    return cmd_run(settings)


def cmd_run(settings: Settings) -> int:
    from proxy import logs
    from proxy.server import serve

    logs.setup(settings.log_format, settings.log_level)
    try:
        import uvloop

        return uvloop.run(serve(settings))
    except ImportError:
        return asyncio.run(serve(settings))


def _store(settings: Settings):  # type: ignore[no-untyped-def]
    from addon.store import LocalStore

    path = settings.data_dir / "traces.db"
    if not path.exists():
        print(f"no captured sessions yet ({path} does not exist)", file=sys.stderr)
        return None
    return LocalStore(path)


def _ts(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def cmd_sessions(settings: Settings, limit: int) -> int:
    store = _store(settings)
    if store is None:
        return 0
    rows = store.sessions(limit)
    head = ("SESSION", "TITLE", "STARTED", "LLM", "TOOLS", "TOKENS", "COST USD")
    table = [head] + [
        (r.session_id + (" (sub)" if r.parent_id else ""), (r.title or "-")[:40], _ts(r.start_ns), str(r.llm_calls),
         str(r.tool_calls), str(r.tokens), "-" if r.cost_usd is None else f"{r.cost_usd:.6f}")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        cells = zip(row, widths, strict=True)
        print("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(cells)))
    if not rows:
        print("(no sessions)")
    return 0


def cmd_show(settings: Settings, session_id: str) -> int:
    store = _store(settings)
    if store is None:
        return 1
    spans = store.trace_spans(session_id)
    if not spans:
        print(f"no session {session_id!r} in {store.path}", file=sys.stderr)
        return 1
    children: dict[str | None, list[Any]] = {}
    ids = {s.span_id for s in spans}
    for s in spans:
        parent = s.parent_span_id if s.parent_span_id in ids else None
        children.setdefault(parent, []).append(s)
    t0 = min(s.start_ns for s in spans)

    def line(s: Any, depth: int) -> None:
        a = s.attributes
        bits = [f"+{(s.start_ns - t0) / 1e6:.0f}ms", f"{(s.end_ns - s.start_ns) / 1e6:.0f}ms"]
        if "neatlogs.llm.token_count.total" in a:
            bits.append(f"{a['neatlogs.llm.token_count.total']} tok")
        if "neatlogs.llm.cost_usd" in a:
            bits.append(f"${a['neatlogs.llm.cost_usd']:.6f}")
        if a.get("neatlogs.llm.purpose"):
            bits.append(str(a["neatlogs.llm.purpose"]))
        if a.get("neatlogs.tool.title"):
            bits.append(repr(a["neatlogs.tool.title"]))
        if s.status_code == 2:
            bits.append(f"ERROR {s.status_message}")
        print(f"{'  ' * depth}{s.name}  [{', '.join(bits)}]")
        if s.name == "opencode.session":
            for key in ("neatlogs.session.title", "input.value", "output.value"):
                if a.get(key):
                    print(f"{'  ' * depth}  {key}: {str(a[key])[:100]!r}")
        for c in sorted(children.get(s.span_id, []), key=lambda x: x.start_ns):
            line(c, depth + 1)

    for root in sorted(children.get(None, []), key=lambda x: x.start_ns):
        line(root, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
