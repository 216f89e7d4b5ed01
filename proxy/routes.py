"""Route table: `/NAME/...` on the proxy maps to `URL/...` upstream."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_ROUTES = {
    "openai": "https://api.openai.com",
    "anthropic": "https://api.anthropic.com",
    "google": "https://generativelanguage.googleapis.com",
    "openrouter": "https://openrouter.ai/api",
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    url: str
    scheme: str
    host: str
    port: int
    base_path: str  # upstream path prefix without trailing slash, e.g. "/api" for OpenRouter

    @property
    def origin(self) -> str:
        default = 443 if self.scheme == "https" else 80
        port = "" if self.port == default else f":{self.port}"
        return f"{self.scheme}://{self.host}{port}"

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


def parse_route(spec: str) -> Route:
    """`NAME=URL`; raises ValueError with a message a user can act on."""
    name, sep, url = spec.partition("=")
    name, url = name.strip(), url.strip()
    if not sep or not name or not url:
        raise ValueError(f"route {spec!r} must look like NAME=URL, e.g. fake=http://127.0.0.1:9999")
    if not _NAME.match(name) or name == "_neatlogs":
        raise ValueError(f"route name {name!r} must be letters, digits, '.', '_' or '-' (not _neatlogs)")
    return make_route(name, url)


def make_route(name: str, url: str) -> Route:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"route {name!r}: {url!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError(f"route {name!r}: {url!r} must not have a query or fragment")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Route(name, url.rstrip("/"), parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


def build_routes(specs: list[str], defaults: bool = True) -> dict[str, Route]:
    routes = {n: make_route(n, u) for n, u in DEFAULT_ROUTES.items()} if defaults else {}
    for spec in specs:
        r = parse_route(spec)
        routes[r.name] = r
    return routes


def split_path(path: str) -> tuple[str, str]:
    """`/fake/v1/chat?x=1` → (`fake`, `/v1/chat?x=1`)."""
    rest = path[1:] if path.startswith("/") else path
    name, _, tail = rest.partition("/")
    q = name.find("?")
    if q >= 0:
        name, tail = name[:q], "?" + name[q + 1:]
        return name, tail
    return name, "/" + tail
