"""Run Helm (helm-sdkpy) on the chart, out of process, and print the result as JSON.

    python -m tests.deploy.helm_render lint CHART_DIR
    python -m tests.deploy.helm_render template CHART_DIR VALUES.json [RELEASE] [NAMESPACE]

helm-sdkpy has no `helm template`; "template" installs the release into tests/deploy/fake_kube.py
with Helm's in-memory release storage (HELM_DRIVER=memory, so release records need no protobuf
Secrets) and reports the release manifest, its NOTES and the objects the fake API server received.

Each call runs in a fresh process: the Go runtime inside helm-sdkpy reads the environment when it
loads and keeps global state, so the tests never load it into the pytest process.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any


def lint(chart: str) -> dict[str, Any]:
    import helm_sdkpy

    config = helm_sdkpy.Configuration(namespace="default")
    result: dict[str, Any] = asyncio.run(helm_sdkpy.Lint(config).run(chart))
    # Messages carry Go error values that serialise as {}; keep what is readable.
    return result


def template(chart: str, values: dict[str, Any], release: str, namespace: str) -> dict[str, Any]:
    import helm_sdkpy

    from tests.deploy.fake_kube import fake_kube

    with fake_kube() as kube:
        config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=kube.kubeconfig(namespace))
        result = asyncio.run(
            helm_sdkpy.Install(config).run(release, chart, values=values or None, wait=False, timeout=60)
        )
        return {
            "manifest": result.get("manifest", ""),
            "notes": result.get("info", {}).get("notes", ""),
            "status": result.get("info", {}).get("status", ""),
            "objects": kube.rendered(),
        }


def main(argv: list[str]) -> int:
    if os.environ.get("HELM_DRIVER") != "memory":
        os.execve(
            sys.executable,
            [sys.executable, "-m", "tests.deploy.helm_render", *argv],
            {**os.environ, "HELM_DRIVER": "memory"},
        )
    try:
        if argv[0] == "lint":
            out: dict[str, Any] = {"ok": True, "result": lint(argv[1])}
        elif argv[0] == "template":
            with open(argv[2]) as fh:
                values = json.load(fh)
            release = argv[3] if len(argv) > 3 else "rel"
            namespace = argv[4] if len(argv) > 4 else "default"
            out = {"ok": True, "result": template(argv[1], values, release, namespace)}
        else:
            raise SystemExit(f"unknown command {argv[0]!r}")
    except Exception as exc:  # reported to the test, which shows the message
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
