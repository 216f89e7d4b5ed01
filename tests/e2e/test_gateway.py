"""Issue 6 as a team gateway: auth, per-user Neatlogs keys, redaction, metrics, readiness, JSON logs."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.fakes.fake_collector import FakeCollector
from tests.fakes.fake_llm import FakeLLM, text_step, tool_then_answer
from tests.fakes.util import wait_until

CHAT = "/fake/v1/chat/completions"
BODY = {"model": "m", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}]}


def test_gateway_tokens(fake_llm: FakeLLM, proxy_process, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("# team tokens\ntok-from-file\n")
    fake_llm.script([text_step("a"), text_step("b"), text_step("c")])
    proxy = proxy_process(routes={"fake": fake_llm.url},
                          args=["--auth-token", "tok-1", "--auth-token-file", str(token_file)])
    for headers in ({}, {"authorization": "Bearer sk-provider"}, {"x-neatlogs-gateway-token": "nope"}):
        r = httpx.post(proxy.url + CHAT, json=BODY, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["type"] == "unauthorized"
    assert fake_llm.requests == []  # refused requests never reach the upstream
    assert httpx.post(proxy.url + "/_neatlogs/v1/events", json={"events": []}).status_code == 401
    assert httpx.get(proxy.url + "/_neatlogs/healthz").status_code == 200  # probes stay open

    # Provider credential in Authorization, gateway token in our header: both pass, ours is stripped.
    r = httpx.post(proxy.url + CHAT, json=BODY,
                   headers={"authorization": "Bearer sk-provider", "x-neatlogs-gateway-token": "tok-1"})
    assert r.status_code == 200
    # The gateway token as the bearer: accepted and not forwarded (it is not a provider key).
    assert httpx.post(proxy.url + CHAT, json=BODY, headers={"authorization": "Bearer tok-from-file"}).status_code == 200
    seen = fake_llm.requests
    assert seen[0].headers["authorization"] == "Bearer sk-provider"
    assert "x-neatlogs-gateway-token" not in seen[0].headers
    assert "authorization" not in seen[1].headers
    assert httpx.post(proxy.url + "/_neatlogs/v1/events", json={"events": []},
                      headers={"x-neatlogs-gateway-token": "tok-1"}).status_code == 202


def test_per_user_keys_route_spans(fake_llm: FakeLLM, fake_collector: FakeCollector, proxy_process) -> None:
    fake_llm.script([text_step("one"), text_step("two")])
    proxy = proxy_process(routes={"fake": fake_llm.url}, endpoint=fake_collector.url, api_key="gateway-key")
    httpx.post(proxy.url + CHAT, json=BODY, headers={"x-session-id": "ses_alice", "x-neatlogs-api-key": "alice-key"})
    httpx.post(proxy.url + CHAT, json=BODY, headers={"x-session-id": "ses_bob"})
    assert all("x-neatlogs-api-key" not in r.headers for r in fake_llm.requests)

    def keys_by_session() -> dict[str, set[str]] | None:
        out: dict[str, set[str]] = {}
        for req in fake_collector.requests:
            for s in req.spans:
                out.setdefault(s.attributes["neatlogs.conversation.id"], set()).add(req.headers["x-api-key"])
        return out if len(out) == 2 else None

    got = wait_until(keys_by_session, timeout=15)
    assert got == {"ses_alice": {"alice-key"}, "ses_bob": {"gateway-key"}}


SECRETS = {
    "openai": "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0fGh3iJk",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "github": "ghp_1234567890abcdefghijklmnopqrstuvwxyzAB",
    "env": "hunter2-super-secret-value",
}


def test_secrets_read_by_a_tool_are_not_exported(fake_llm: FakeLLM, fake_collector: FakeCollector,
                                                  proxy_process, run_opencode, tmp_path: Path) -> None:
    wd = tmp_path / "project"
    wd.mkdir()
    (wd / "deploy-secrets.txt").write_text(
        f"OPENAI_API_KEY={SECRETS['openai']}\nAWS_ACCESS_KEY_ID={SECRETS['aws']}\n"
        f"GITHUB_TOKEN={SECRETS['github']}\nDB_PASSWORD={SECRETS['env']}\nDEBUG=true\n")
    fake_llm.script(tool_then_answer("read", {"filePath": str(wd / "deploy-secrets.txt")},
                                     answer=f"The key is {SECRETS['openai']} and DB_PASSWORD={SECRETS['env']}"))
    proxy = proxy_process(routes={"fake": fake_llm.url}, endpoint=fake_collector.url, api_key="k",
                          args=["--idle-timeout", "1"])
    result = run_opencode(wd, "Show me deploy-secrets.txt", proxy.route_url("fake") + "/v1")
    assert result.returncode == 0, result.describe()
    # The client still got the unredacted answer: redaction applies to exported copies only.
    assert SECRETS["openai"] in result.stdout

    def exported() -> dict | None:
        spans = fake_collector.latest_by_span_id()
        return spans if any(s.name == "neatlogs.trace.complete" for s in spans.values()) else None

    spans = wait_until(exported, timeout=20)
    dump = json.dumps([s.attributes for s in spans.values()])
    for name, secret in SECRETS.items():
        assert secret not in dump, name
    assert "[REDACTED" in dump and "DEBUG=true" in dump
    assert any(s.attributes.get("neatlogs.redaction.count", 0) > 0 for s in spans.values())
    local = (proxy.data_dir / "traces.db").read_bytes()
    assert not any(secret.encode() in local for secret in SECRETS.values())


def test_metrics_readyz_and_json_logs(fake_llm: FakeLLM, proxy_process) -> None:
    fake_llm.script([text_step("hello")])
    proxy = proxy_process(routes={"fake": fake_llm.url}, args=["--log-format", "json"])
    assert httpx.get(proxy.url + "/_neatlogs/readyz").json()["status"] == "ready"
    assert httpx.post(proxy.url + CHAT, json=BODY, headers={"x-session-id": "ses_m"}).status_code == 200
    bad = httpx.post(proxy.url + "/_neatlogs/v1/events", content=b"{not json")
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]

    def metrics() -> str | None:
        text = httpx.get(proxy.url + "/_neatlogs/metrics").text
        return text if 'neatlogs_proxy_llm_requests_total{model="fake-model",route="fake",status="200"} 1.0' in text \
            or 'neatlogs_proxy_llm_requests_total{model="m",route="fake",status="200"} 1.0' in text else None

    text = wait_until(metrics, timeout=10, message="request counter did not move")
    assert 'neatlogs_proxy_llm_tokens_total{kind="input"' in text
    assert "neatlogs_proxy_llm_request_duration_seconds_bucket" in text
    assert "neatlogs_proxy_llm_time_to_first_token_seconds_count" in text
    assert "neatlogs_proxy_plugin_events_rejected_total 1.0" in text
    assert "neatlogs_proxy_spool_depth" in text
    lines = [line for line in proxy.logs().splitlines() if line.startswith("{")]
    assert lines and all(json.loads(line)["level"] in {"info", "warning", "error", "debug"} for line in lines)
