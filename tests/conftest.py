"""Shared fixtures: the fake LLM, the fake collector, a real opencode and a real proxy process.

End-to-end tests drive the real opencode binary (pinned by scripts/install-opencode.sh) against the
fakes, with a throw-away HOME per run, so what they see is what a user's opencode would send.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.fake_collector import FakeCollector
from tests.fakes.fake_llm import FakeLLM
from tests.fakes.util import free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("NEATLOGS_TEST_CACHE") or REPO / ".cache")
NODE_DIR = CACHE / "node"  # npm packages installed by scripts/install-opencode.sh
OPENCODE_XDG_CACHE = CACHE / "xdg-cache"  # persistent XDG_CACHE_HOME: runtime installs, rg
NPM_CACHE = CACHE / "npm"
OPENCODE_VERSION = "1.18.33"
FAKE_API_KEY = "sk-fake-secret-123"

# Every opencode run gets these: no self-update, no models.dev fetch, no LSP downloads, no sharing,
# nothing read from ~/.claude, no terminal-title escapes; npm (which opencode embeds to install
# config-dir deps and npm plugins) uses the persistent cache and prefers it over the network.
OPENCODE_ENV = {
    "OPENCODE_DISABLE_AUTOUPDATE": "1",
    "OPENCODE_DISABLE_MODELS_FETCH": "1",
    "OPENCODE_DISABLE_LSP_DOWNLOAD": "1",
    "OPENCODE_DISABLE_SHARE": "1",
    "OPENCODE_DISABLE_CLAUDE_CODE": "1",
    "OPENCODE_DISABLE_EXTERNAL_SKILLS": "1",
    "OPENCODE_DISABLE_TERMINAL_TITLE": "1",
    "npm_config_cache": str(NPM_CACHE),
    "npm_config_prefer_offline": "true",
    "npm_config_update_notifier": "false",
    "npm_config_audit": "false",
    "npm_config_fund": "false",
    "NO_COLOR": "1",
    "TERM": "dumb",
}
# Inherited from the test runner's environment; everything else (API keys!) is left out.
_PASSTHROUGH_ENV = ("PATH", "LANG", "LC_ALL", "TMPDIR", "TZ", "SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS")


# --- failure reporting ---------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Remember each phase's report on the item so fixtures can dump logs only when a test failed."""
    rep = yield
    setattr(item, "rep_" + rep.when, rep)
    return rep


def _failed(request: pytest.FixtureRequest) -> bool:
    return any(
        getattr(request.node, f"rep_{when}", None) is not None and getattr(request.node, f"rep_{when}").failed
        for when in ("setup", "call")
    )


# --- fakes ---------------------------------------------------------------------------------------


@pytest.fixture
def fake_llm() -> Iterator[FakeLLM]:
    with FakeLLM() as fake:
        yield fake


@pytest.fixture
def fake_collector() -> Iterator[FakeCollector]:
    collector = FakeCollector().start()
    yield collector
    collector.stop()


# --- opencode ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def opencode_bin() -> Path:
    """The pinned opencode binary; installs it (once, under a lock) if needed. Never skips."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(
            ["bash", str(REPO / "scripts" / "install-opencode.sh")],
            capture_output=True,
            text=True,
            timeout=900,
        )
    if proc.returncode != 0:
        pytest.fail(f"install-opencode.sh failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert path.exists(), f"install-opencode.sh printed {path}, which does not exist"
    return path


@dataclass
class OpencodeRun:
    """Result of one ``opencode run``; unpacks as (returncode, stdout, stderr, duration)."""

    returncode: int
    stdout: str
    stderr: str
    duration: float
    home: Path
    workdir: Path
    cmd: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.returncode, self.stdout, self.stderr, self.duration))

    def logs(self) -> str:
        """opencode's own log file(s) from this run's HOME (written even without --print-logs)."""
        log_dir = self.home / ".local" / "share" / "opencode" / "log"
        return "".join(p.read_text(errors="replace") for p in sorted(log_dir.glob("*.log")))

    def describe(self) -> str:
        return (
            f"opencode exited {self.returncode} after {self.duration:.1f}s: {' '.join(self.cmd)}\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-8000:]}"
        )


class OpencodeTimeout(AssertionError):
    pass


def opencode_config(
    provider_base_url: str, model: str = "fake/fake-model", extra_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The opencode.json for a project talking to an OpenAI-compatible provider named ``fake``.

    ``cost`` is USD per 1M tokens (models.dev convention); ``limit`` is optional for custom models.
    ``extra_config`` is deep-merged in; a ``None`` value there drops the key.
    """
    config: dict[str, Any] = {
        "$schema": "https://opencode.ai/config.json",
        "provider": {
            "fake": {
                "npm": "@ai-sdk/openai-compatible",
                "name": "Fake",
                "options": {"baseURL": provider_base_url, "apiKey": FAKE_API_KEY},
                "models": {
                    "fake-model": {
                        "name": "Fake Model",
                        "cost": {"input": 3, "output": 15, "cache_read": 0.3},
                        "limit": {"context": 128000, "output": 8192},
                    },
                    "fake-small": {"name": "Fake Small"},
                },
            }
        },
        "model": model,
        "small_model": "fake/fake-small",
    }
    return _merge(config, extra_config or {})


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; a ``None`` in ``extra`` removes the key (e.g. ``{"small_model": None}``)."""
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def seed_config_dir(config_dir: Path) -> None:
    """Make opencode's background ``npm install`` of @opencode-ai/plugin in a config dir a no-op.

    opencode installs @opencode-ai/plugin into every config dir (~/.config/opencode, .opencode/)
    that has no node_modules, and waits for it before loading plugins: that is network traffic and
    seconds per run. A package.json/lock that already list it plus a node_modules link to our
    pre-installed packages satisfy its check.
    """
    config_dir.mkdir(parents=True, exist_ok=True)
    deps = {"@opencode-ai/plugin": OPENCODE_VERSION}
    if not (config_dir / "package.json").exists():
        (config_dir / "package.json").write_text(json.dumps({"dependencies": deps}))
    if not (config_dir / "package-lock.json").exists():
        lock = {"lockfileVersion": 3, "requires": True, "packages": {"": {"dependencies": deps}}}
        (config_dir / "package-lock.json").write_text(json.dumps(lock))
    nm = config_dir / "node_modules"
    if not nm.exists() and not nm.is_symlink():
        nm.symlink_to(NODE_DIR / "node_modules", target_is_directory=True)


def opencode_env(home: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    base = {k: os.environ[k] for k in _PASSTHROUGH_ENV if k in os.environ}
    base.update(OPENCODE_ENV)
    base.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        XDG_CACHE_HOME=str(OPENCODE_XDG_CACHE),
    )
    base.update(env or {})
    return base


RunOpencode = Callable[..., OpencodeRun]


@pytest.fixture
def run_opencode(opencode_bin: Path, tmp_path: Path) -> RunOpencode:
    """Factory: ``run_opencode(workdir, prompt, provider_base_url, ...)`` runs ``opencode run`` there.

    Writes ``opencode.json`` into ``workdir`` and uses a fresh HOME per call. ``plugins`` are paths
    (turned into file:// URLs) or npm specs; ``extra_config`` is deep-merged into the config;
    ``print_logs``/``log_level`` send opencode's logs to stderr; ``args`` are appended to the command.
    ``home`` reuses a given HOME instead (created if missing): a later turn of a session
    (``args=["--session", id]``) needs the HOME that holds the session's opencode storage.
    """
    counter = iter(range(1_000_000))

    def run(
        workdir: Path | str,
        prompt: str,
        provider_base_url: str,
        model: str = "fake/fake-model",
        extra_config: dict[str, Any] | None = None,
        plugins: list[str | Path] | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        print_logs: bool = False,
        log_level: str | None = None,
        args: list[str] | tuple[str, ...] = (),
        home: Path | None = None,
    ) -> OpencodeRun:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if home is None:
            home = tmp_path / f"opencode-home-{next(counter)}"
            home.mkdir()
        else:
            home.mkdir(parents=True, exist_ok=True)
        config = opencode_config(provider_base_url, model, extra_config)
        if plugins:
            config["plugin"] = [_plugin_spec(p) for p in plugins]
        (workdir / "opencode.json").write_text(json.dumps(config, indent=2))
        seed_config_dir(home / ".config" / "opencode")
        if (workdir / ".opencode").is_dir():
            seed_config_dir(workdir / ".opencode")

        cmd = [str(opencode_bin), "run"]
        if print_logs:
            cmd.append("--print-logs")
        if log_level:
            cmd += ["--log-level", log_level]
        cmd += [*args, prompt]
        t0 = time.monotonic()
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            env=opencode_env(home, env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # so a timeout can kill opencode and whatever it spawned
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            result = OpencodeRun(-9, out, err, time.monotonic() - t0, home, workdir, cmd)
            raise OpencodeTimeout(f"opencode timed out after {timeout}s\n{result.describe()}") from None
        return OpencodeRun(proc.returncode, out, err, time.monotonic() - t0, home, workdir, cmd)

    return run


def _plugin_spec(p: str | Path) -> str:
    if isinstance(p, Path) or str(p).startswith("/"):
        return Path(p).resolve().as_uri()
    return str(p)


# --- the proxy under test ------------------------------------------------------------------------

PROXY_CMD = [sys.executable, "-m", "proxy.cli"]  # same as .venv/bin/neatlogs-proxy


class ProxyProcess:
    """The real proxy as a subprocess, with its output in files and a health-checked start."""

    def __init__(
        self,
        workdir: Path,
        routes: dict[str, str] | None = None,
        port: int | None = None,
        data_dir: Path | None = None,
        endpoint: str | None = None,
        api_key: str | None = None,
        args: list[str] | tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        health_timeout: float = 30.0,
        command_prefix: list[str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.command_prefix = list(command_prefix or PROXY_CMD)
        self.routes = dict(routes or {})
        self.port = port or free_port()
        self.data_dir = data_dir or workdir / "data"
        self.endpoint = endpoint
        self.api_key = api_key
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.health_timeout = health_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_paths: list[Path] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def route_url(self, name: str) -> str:
        """What a client uses as base URL to reach route ``name`` through the proxy."""
        return f"{self.url}/{name}"

    def command(self) -> list[str]:
        cmd = [*self.command_prefix, "--port", str(self.port), "--data-dir", str(self.data_dir)]
        for name, target in self.routes.items():
            cmd += ["--route", f"{name}={target}"]
        return cmd + self.args

    def env(self) -> dict[str, str]:
        # Never leak a developer's real Neatlogs settings into a test proxy.
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEATLOGS_")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        if self.endpoint is not None:
            env["NEATLOGS_ENDPOINT"] = self.endpoint
        if self.api_key is not None:
            env["NEATLOGS_API_KEY"] = self.api_key
        env.update(self.extra_env)
        return env

    def start(self) -> ProxyProcess:
        assert self.proc is None or self.proc.poll() is not None, "proxy already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        out_path = self.workdir / f"proxy-{self.starts}.out.log"
        err_path = self.workdir / f"proxy-{self.starts}.err.log"
        self.log_paths += [out_path, err_path]
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.command(), cwd=REPO, env=self.env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )
        self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float | None = None) -> None:
        def healthy() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise _ProxyExited(f"proxy exited with {self.proc.returncode}\n{self.logs()}")
            try:
                return httpx.get(f"{self.url}/_neatlogs/healthz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        try:
            wait_until(healthy, timeout or self.health_timeout, interval=0.1, message="proxy /_neatlogs/healthz")
        except AssertionError as exc:
            if isinstance(exc.__cause__, _ProxyExited):
                raise AssertionError(str(exc.__cause__)) from None
            raise AssertionError(f"{exc}\n{self.logs()}") from None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def kill9(self) -> None:
        """Crash it: SIGKILL, no chance to flush anything."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, graceful: bool = True) -> ProxyProcess:
        """Stop (SIGTERM, or SIGKILL when not ``graceful``) and start again: same port, same data dir."""
        if graceful:
            self.stop()
        else:
            self.kill9()
        return self.start()

    def logs(self) -> str:
        parts = []
        for p in self.log_paths:
            if p.exists():
                parts.append(f"--- {p.name} ---\n{p.read_text(errors='replace')}")
        return "\n".join(parts)


class _ProxyExited(Exception):
    pass


def http_connections(proxy: ProxyProcess) -> dict[str, float]:
    """The proxy's own count of client connections by the HTTP layer that served them, and hand-overs."""
    args = proxy.args
    token = args[args.index("--auth-token") + 1] if "--auth-token" in args else ""
    headers = {"x-neatlogs-gateway-token": token} if token else {}
    answer = httpx.get(f"{proxy.url}/_neatlogs/metrics", headers=headers, timeout=5)
    assert answer.status_code == 200, answer.text
    text = answer.text
    out: dict[str, float] = {}
    for line in text.splitlines():
        for key, name in (('neatlogs_proxy_http_connections_total{http_layer="fast"}', "fast"),
                          ('neatlogs_proxy_http_connections_total{http_layer="mitmproxy"}', "mitmproxy"),
                          ("neatlogs_proxy_http_handovers_total", "handovers")):
            if line.startswith(key + " "):
                out[name] = float(line.split()[-1])
    return out


@pytest.fixture(params=["fast", "mitmproxy"])
def http_layer(request: pytest.FixtureRequest) -> str:
    """Every suite that starts the proxy runs against both HTTP layers it can serve clients with."""
    return str(request.param)


@pytest.fixture
def proxy_process(tmp_path: Path, request: pytest.FixtureRequest,
                  http_layer: str) -> Iterator[Callable[..., ProxyProcess]]:
    """Factory: ``proxy_process(routes={"fake": fake_llm.url}, endpoint=..., api_key=...)``.

    Started and health-checked on creation; stopped at teardown; logs printed if the test failed.
    Runs with ``--http-layer`` set to the `http_layer` parameter; at teardown each proxy still
    running must say that layer served every client connection (the other served none).
    """
    procs: list[ProxyProcess] = []

    def make(**kwargs: Any) -> ProxyProcess:
        workdir = tmp_path / f"proxy-{len(procs)}"
        workdir.mkdir()
        env = {"NEATLOGS_PROXY_HTTP_LAYER": http_layer, **(kwargs.pop("env", None) or {})}
        p = ProxyProcess(workdir, env=env, **kwargs)
        procs.append(p)
        return p.start()

    yield make
    other = "mitmproxy" if http_layer == "fast" else "fast"
    counts = [http_connections(p) for p in procs
              if p.running and p.extra_env.get("NEATLOGS_PROXY_HTTP_LAYER") == http_layer and not _failed(request)]
    for p in procs:
        p.stop()
    for c in counts:
        assert c.get(http_layer, 0) > 0 and c.get(other, 0) == 0, f"expected the {http_layer} HTTP layer only: {c}"
    if _failed(request):
        for i, p in enumerate(procs):
            print(f"===== proxy #{i} ({' '.join(p.command())}) =====\n{p.logs()}")
