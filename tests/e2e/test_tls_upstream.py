"""HTTPS upstreams, as every real provider is: verified by default, an extra CA trusted on request.

The fake LLM serves HTTPS with a certificate from a throwaway CA (`tests.fakes.tls`). Through the real
proxy process: with `--upstream-ca` the stream arrives whole and is captured; without it the proxy
refuses the upstream (never falls back to an unverified connection) and says why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_resilience import FAST, store_spans
from tests.fakes.fake_llm import FakeLLM, Step
from tests.fakes.tls import client_context, make_test_pki
from tests.fakes.util import wait_until

REPO = Path(__file__).resolve().parents[2]
BODY = {"model": "fake-model", "stream": True, "messages": [{"role": "user", "content": "hi over tls"}]}


@pytest.fixture
def tls_llm(tmp_path: Path) -> Iterator[tuple[FakeLLM, Path]]:
    ca, server_context = make_test_pki(tmp_path / "pki")
    llm = FakeLLM()
    llm.title_step = Step(text="answer over tls in several chunks", text_chunks=5)
    llm.tls = server_context
    llm.start()
    try:
        yield llm, ca
    finally:
        llm.stop()


def sse_text(raw: bytes) -> str:
    """The assistant text of a Chat Completions SSE body (ids differ per call; the text does not)."""
    out = []
    for line in raw.split(b"\n"):
        if line.startswith(b"data: {"):
            for choice in json.loads(line[6:]).get("choices", []):
                out.append(choice.get("delta", {}).get("content") or "")
    return "".join(out)


def test_https_upstream_with_a_trusted_extra_ca_streams_and_is_captured(tls_llm, proxy_process) -> None:
    llm, ca = tls_llm
    direct = httpx.post(llm.url + "/v1/chat/completions", json=BODY, verify=client_context(ca), timeout=10)
    assert direct.status_code == 200
    proxy = proxy_process(routes={"secure": llm.url}, args=[*FAST, "--upstream-ca", str(ca)])
    r = httpx.post(proxy.route_url("secure") + "/v1/chat/completions", json=BODY, timeout=10,
                   headers={"x-session-id": "ses_tls", "authorization": "Bearer sk-upstream"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    assert sse_text(r.content) == sse_text(direct.content) == "answer over tls in several chunks"
    assert r.content.endswith(b"data: [DONE]\n\n")
    seen = llm.requests[-1]
    assert seen.headers["host"] == f"127.0.0.1:{llm.port}"  # the upstream's own name, over TLS
    assert seen.headers["authorization"] == "Bearer sk-upstream"
    spans = wait_until(lambda: [s for s in store_spans(proxy.data_dir).values()
                                if s["name"].startswith("opencode.llm.") and s["session_id"] == "ses_tls"],
                       timeout=15)
    attrs = spans[0]["attributes"]
    assert "answer over tls in several chunks" in attrs["output.value"]
    assert "upstream HTTPS also trusts the CA certificates in" in proxy.logs()
    # The public CAs stay trusted next to the extra one: the bundle holds both.
    bundle = (proxy.data_dir / "mitmproxy" / "upstream-trust.pem").read_bytes()
    assert ca.read_bytes() in bundle and bundle.count(b"BEGIN CERTIFICATE") > 100


def test_https_upstream_with_an_unknown_ca_is_refused_with_a_clear_error(tls_llm, proxy_process) -> None:
    llm, _ = tls_llm
    proxy = proxy_process(routes={"secure": llm.url}, args=FAST)
    r = httpx.post(proxy.route_url("secure") + "/v1/chat/completions", json=BODY, timeout=10,
                   headers={"x-session-id": "ses_untrusted"})
    assert r.status_code == 502
    err = r.json()["error"]
    assert err["route"] == "secure"
    assert "certificate verify failed" in err["message"], err
    assert err["message"].endswith("(does the upstream use a private CA? trust it with --upstream-ca / "
                                   "NEATLOGS_PROXY_UPSTREAM_CA)"), err
    assert not llm.requests  # nothing was sent over the unverified connection
    assert httpx.get(proxy.url + "/_neatlogs/healthz").status_code == 200


@pytest.mark.parametrize("content, problem", [(None, "No such file"), (b"not a certificate\n", "no PEM certificate")])
def test_a_bad_upstream_ca_file_stops_the_start_with_a_clear_message(tmp_path: Path, content: bytes | None,
                                                                       problem: str) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    out = subprocess.run([sys.executable, "-m", "proxy.cli", "--port", "0", "--data-dir", str(tmp_path / "d"),
                          "--upstream-ca", str(path)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2
    assert "invalid settings" in out.stderr and problem in out.stderr and str(path) in out.stderr
