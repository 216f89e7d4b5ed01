"""A tiny in-memory Kubernetes API server on 127.0.0.1, just enough for Helm to install into.

helm-sdkpy (Helm v4 as a library) exposes lint/install/upgrade but no `helm template` or dry run,
so to see what a chart renders the tests let Helm *install* the release into this fake server and
keep every object Helm creates. That is exactly the manifest a real cluster would receive (after
Helm's own processing), with no cluster and no network beyond loopback.

It answers discovery (/version, /api, /apis and each group version's resource list), keeps objects
per URL in a dict, and echoes created/updated objects back with the metadata an API server adds.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

# group/version -> [(plural, kind, namespaced)]
RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [
        ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("pods", "Pod", True),
        ("events", "Event", True),
        ("namespaces", "Namespace", False),
    ],
    "apps/v1": [
        ("deployments", "Deployment", True),
        ("statefulsets", "StatefulSet", True),
        ("replicasets", "ReplicaSet", True),
    ],
    "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "networking.k8s.io/v1": [("ingresses", "Ingress", True), ("ingressclasses", "IngressClass", False)],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True)],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def _resource_list(gv: str) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": [
            {"name": plural, "singularName": kind.lower(), "namespaced": namespaced, "kind": kind, "verbs": VERBS}
            for plural, kind, namespaced in RESOURCES[gv]
        ],
    }


def _group_list() -> dict[str, Any]:
    groups = []
    for gv in RESOURCES:
        if "/" not in gv:
            continue
        group, version = gv.split("/")
        ver = {"groupVersion": gv, "version": version}
        groups.append({"name": group, "versions": [ver], "preferredVersion": ver})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


class FakeKube:
    def __init__(self, minor: int = 31) -> None:
        self.minor = minor
        self.objects: dict[str, dict[str, Any]] = {}  # collection path + "/" + name -> object
        self.created: list[dict[str, Any]] = []  # every object POSTed, in order
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def kubeconfig(self, namespace: str = "default") -> str:
        """Kubeconfig as YAML text (helm-sdkpy takes a file path or YAML content)."""
        return (
            "apiVersion: v1\n"
            "kind: Config\n"
            "clusters:\n"
            f"- name: fake\n  cluster:\n    server: {self.url}\n"
            "users:\n"
            "- name: fake\n  user:\n    token: fake\n"
            "contexts:\n"
            f"- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {namespace}\n"
            "current-context: fake\n"
        )

    def rendered(self) -> list[dict[str, Any]]:
        """The chart's objects as created (Helm's own release-record Secrets left out)."""
        return [o for o in self.created if not o.get("metadata", {}).get("name", "").startswith("sh.helm.release.")]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b"{}"
                return json.loads(raw or b"{}")

            def _not_found(self, name: str) -> None:
                self._send(
                    404,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "message": f"{name} not found",
                        "reason": "NotFound",
                        "code": 404,
                    },
                )

            def _split(self) -> tuple[str, list[str], str]:
                path = urlsplit(self.path).path.rstrip("/")
                parts = path.strip("/").split("/")
                if parts[0] == "api":
                    gv, rest = parts[1] if len(parts) > 1 else "", parts[2:]
                else:  # apis/group/version/...
                    gv, rest = "/".join(parts[1:3]), parts[3:]
                return path, rest, gv

            def do_GET(self) -> None:
                path, rest, gv = self._split()
                if path == "/version":
                    return self._send(
                        200,
                        {
                            "major": "1",
                            "minor": str(fake.minor),
                            "gitVersion": f"v1.{fake.minor}.0",
                            "platform": "linux/amd64",
                        },
                    )
                if path == "/api":
                    return self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
                if path == "/apis":
                    return self._send(200, _group_list())
                if not rest and gv in RESOURCES:
                    return self._send(200, _resource_list(gv))
                with fake.lock:
                    if path in fake.objects:
                        return self._send(200, fake.objects[path])
                    items = [o for k, o in fake.objects.items() if k.rsplit("/", 1)[0] == path]
                # a collection (even number of trailing segments after namespaces/NS) lists, else 404
                collection = len(rest) in (1, 3)
                if collection:
                    return self._send(
                        200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}
                    )
                return self._not_found(path)

            def do_POST(self) -> None:
                path, _, _ = self._split()
                obj = self._body()
                meta = obj.setdefault("metadata", {})
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("resourceVersion", str(time.monotonic_ns()))
                meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                key = f"{path}/{meta.get('name', '')}"
                with fake.lock:
                    if key in fake.objects:
                        return self._send(
                            409,
                            {
                                "kind": "Status",
                                "apiVersion": "v1",
                                "status": "Failure",
                                "reason": "AlreadyExists",
                                "code": 409,
                            },
                        )
                    fake.objects[key] = obj
                    fake.created.append(obj)
                self._send(201, obj)

            def do_PUT(self) -> None:
                path, _, _ = self._split()
                obj = self._body()
                obj.setdefault("metadata", {})["resourceVersion"] = str(time.monotonic_ns())
                with fake.lock:
                    fake.objects[path] = obj
                self._send(200, obj)

            def do_PATCH(self) -> None:
                path, _, _ = self._split()
                with fake.lock:
                    current = fake.objects.get(path)
                if current is None:
                    return self._not_found(path)
                self._body()  # merge semantics are not needed by the tests
                self._send(200, current)

            def do_DELETE(self) -> None:
                path, _, _ = self._split()
                with fake.lock:
                    obj = fake.objects.pop(path, None)
                if obj is None:
                    return self._not_found(path)
                self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

        return Handler

    def __enter__(self) -> FakeKube:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def fake_kube(minor: int = 31) -> Iterator[FakeKube]:
    with FakeKube(minor) as kube:
        yield kube
