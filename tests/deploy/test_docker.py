"""Container artifacts: docker/Dockerfile, docker/compose.yaml and .dockerignore.

No Docker engine is needed: the Dockerfile is linted with hadolint and parsed, the compose file is
validated against the Compose Specification schema, and the HEALTHCHECK command is executed for real
against a small local HTTP server.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.deploy._tools import ROOT, find_tool, need_module

DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.schema.json")


# --------------------------------------------------------------------------- Dockerfile parsing
def parse_dockerfile(path: Path = DOCKERFILE) -> list[list[tuple[str, str]]]:
    """Instructions per build stage, as (INSTRUCTION, arguments) with continuations joined.
    Stage 0 holds the global ARGs before the first FROM."""
    stages: list[list[tuple[str, str]]] = [[]]
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # comment inside a continued instruction
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        instr, _, args = logical.partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stages.append([])
        stages[-1].append((instr, args.strip()))
        logical = ""
    assert not logical, "dangling line continuation at the end of the Dockerfile"
    return stages


def instr_args(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [args for instr, args in stage if instr == name]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instr_args(stage, "ENV"):
        for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", args):
            env[key] = value
    return env


def healthcheck_argv(stage: list[tuple[str, str]]) -> list[str]:
    (args,) = instr_args(stage, "HEALTHCHECK")
    cmd = args[args.index("CMD ") + 4 :].strip()
    argv = json.loads(cmd)  # exec form: a JSON array, no shell in the slim image needed
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


@pytest.fixture(scope="module")
def stages() -> list[list[tuple[str, str]]]:
    return parse_dockerfile()


@pytest.fixture(scope="module")
def final(stages: list[list[tuple[str, str]]]) -> list[tuple[str, str]]:
    return stages[-1]


# --------------------------------------------------------------------------- lint
def test_hadolint_is_clean() -> None:
    hadolint = find_tool("hadolint")
    proc = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_problems(tmp_path: Path) -> None:
    """The lint test can fail: a Dockerfile with known violations is rejected."""
    hadolint = find_tool("hadolint")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN cd /tmp\n")
    proc = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout  # latest tag


# --------------------------------------------------------------------------- image structure
def test_multi_stage_slim_images(stages: list[list[tuple[str, str]]]) -> None:
    global_args = dict(a.split("=", 1) for a in instr_args(stages[0], "ARG") if "=" in a)
    froms = [instr_args(stage, "FROM")[0] for stage in stages[1:]]
    assert len(froms) == 2, froms
    resolved = [re.sub(r"\$\{(\w+)\}", lambda m: global_args[m[1]], f.split()[0]) for f in froms]
    assert resolved == ["python:3.12-slim", "python:3.12-slim"]
    assert froms[0].endswith(" AS builder")


def test_final_stage_copies_only_the_venv(final: list[tuple[str, str]]) -> None:
    copies = instr_args(final, "COPY")
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    run = " ".join(instr_args(final, "RUN"))
    for tool in ("apt-get", "pip ", "gcc", "build-essential", "curl"):
        assert tool not in run, f"final stage must not install {tool!r}"


def test_runtime_settings(final: list[tuple[str, str]]) -> None:
    env = env_of(final)
    assert env["NEATLOGS_PROXY_HOST"] == "0.0.0.0"
    assert env["NEATLOGS_PROXY_DATA_DIR"] == "/data"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert instr_args(final, "USER") == ["10001:10001"]
    assert instr_args(final, "VOLUME") == ["/data"]
    assert instr_args(final, "EXPOSE") == ["8787"]
    run = " ".join(instr_args(final, "RUN"))
    assert "--uid 10001" in run and "chown 10001:10001 /data" in run


def test_copied_sources_exist_and_are_not_dockerignored(stages: list[list[tuple[str, str]]]) -> None:
    sources: list[str] = []
    for args in instr_args(stages[1], "COPY"):
        parts = [p for p in args.split() if not p.startswith("--")]
        sources += parts[:-1]
    assert {"pyproject.toml", "proxy", "addon"} <= set(sources)
    allowed = {line[1:].rstrip("/") for line in DOCKERIGNORE.read_text().splitlines() if line.startswith("!")}
    excluded_all = "*" in DOCKERIGNORE.read_text().splitlines()
    for src in sources:
        assert (ROOT / src).exists(), f"COPY source {src} is missing from the repository"
        if excluded_all:
            assert src in allowed, f"{src} is excluded by .dockerignore"


def test_dockerignore_keeps_heavy_and_secret_paths_out() -> None:
    lines = {line.strip() for line in DOCKERIGNORE.read_text().splitlines()}
    assert "*" in lines  # allowlist: .venv, .git, .cache, node_modules, tests, .env ... all out
    assert not any(line.startswith("!") and (".env" in line or "tests" in line) for line in lines)


def project_scripts() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts: dict[str, str] = data["project"]["scripts"]
    return scripts


def test_entrypoint_is_the_console_script(final: list[tuple[str, str]]) -> None:
    (entry,) = instr_args(final, "ENTRYPOINT")
    (cmd,) = instr_args(final, "CMD")
    argv = json.loads(entry) + json.loads(cmd)
    assert argv == ["neatlogs-proxy", "run"]
    scripts = project_scripts()
    assert argv[0] in scripts, f"{argv[0]} is not a [project.scripts] entry: {scripts}"
    module, _, func = scripts[argv[0]].partition(":")
    assert module and func
    # The target must be inside a package that setuptools ships into the image.
    top = module.split(".")[0]
    assert top in {"proxy", "addon"}
    assert f"{top} ./{top}" in instr_args(parse_dockerfile()[1], "COPY")


def test_image_command_parses_with_the_image_env(final: list[tuple[str, str]], tmp_path: Path) -> None:
    """`neatlogs-proxy run --help` with the image's environment: the console script target imports,
    `run` is a subcommand and the settings from ENV are accepted."""
    module, _, func = project_scripts()["neatlogs-proxy"].partition(":")
    env = {k: v for k, v in env_of(final).items() if k.startswith(("NEATLOGS_", "PYTHON"))}
    env |= {"NEATLOGS_PROXY_DATA_DIR": str(tmp_path), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    code = (
        "import sys\n"
        f"from {module} import {func} as main\n"
        "sys.argv = ['neatlogs-proxy', 'run', '--help']\n"
        "sys.exit(main())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--port" in proc.stdout


# --------------------------------------------------------------------------- HEALTHCHECK, for real
class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/_neatlogs/healthz" else 404
        body = b'{"status": "ok"}' if code == 200 else b'{"status": "unavailable"}'
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def run_probe(argv: list[str], port: int) -> int:
    assert argv[0] == "python", "the probe must use the image's python (no curl in slim)"
    proc = subprocess.run(
        [sys.executable, *argv[1:]],
        env={"NEATLOGS_PROXY_PORT": str(port), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    return proc.returncode


def compose_probe() -> list[str]:
    yaml = need_module("yaml")
    test = yaml.safe_load(COMPOSE.read_text())["services"]["proxy"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return list(test[1:])


@pytest.mark.parametrize("source", ["Dockerfile", "compose"])
def test_healthcheck_passes_on_200_and_fails_on_503(
    source: str, final: list[tuple[str, str]], health_server: ThreadingHTTPServer
) -> None:
    argv = healthcheck_argv(final) if source == "Dockerfile" else compose_probe()
    port = health_server.server_address[1]
    _Health.status = 200
    assert run_probe(argv, port) == 0
    _Health.status = 503
    try:
        assert run_probe(argv, port) != 0
    finally:
        _Health.status = 200


def test_healthcheck_fails_when_nothing_listens(final: list[tuple[str, str]]) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    port = server.server_address[1]
    server.server_close()  # the port is now closed
    assert run_probe(healthcheck_argv(final), port) != 0


def test_healthcheck_defaults_to_port_8787(final: list[tuple[str, str]]) -> None:
    (args,) = instr_args(final, "HEALTHCHECK")
    assert "/_neatlogs/healthz" in args and "'8787'" in args
    assert "--timeout=" in args and "--interval=" in args


def test_compose_and_dockerfile_probe_the_same_way(final: list[tuple[str, str]]) -> None:
    assert healthcheck_argv(final)[2].strip() == compose_probe()[2].strip()


# --------------------------------------------------------------------------- compose
@pytest.fixture(scope="module")
def compose() -> dict:  # type: ignore[type-arg]
    yaml = need_module("yaml")
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def compose_validator():  # type: ignore[no-untyped-def]
    jsonschema = need_module("jsonschema")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.FormatChecker())


def test_compose_validates_against_the_compose_spec(compose: dict) -> None:  # type: ignore[type-arg]
    errors = sorted(compose_validator().iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c["services"]["proxy"].__setitem__("restart_policy", "always"),  # unknown key
        lambda c: c["services"]["proxy"].__setitem__("ports", "8787"),  # wrong type
        lambda c: c.__setitem__("volumes", ["neatlogs-data"]),  # wrong shape
    ],
)
def test_compose_schema_rejects_broken_files(compose: dict, mutate) -> None:  # type: ignore[no-untyped-def,type-arg]
    broken = copy.deepcopy(compose)
    mutate(broken)
    assert not compose_validator().is_valid(broken)


def test_compose_service(compose: dict) -> None:  # type: ignore[type-arg]
    proxy = compose["services"]["proxy"]
    assert proxy["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert (COMPOSE.parent / proxy["build"]["context"] / proxy["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert proxy["restart"] == "unless-stopped"
    assert any(str(p).endswith(":8787") for p in proxy["ports"])
    assert "neatlogs-data:/data" in proxy["volumes"]
    assert "neatlogs-data" in compose["volumes"]
    env = proxy["environment"]
    # secrets are pass-through only: never given a default (an empty key would be sent as-is)
    assert "NEATLOGS_API_KEY" in env and "NEATLOGS_PROXY_AUTH_TOKENS" in env
    names = {e.split("=", 1)[0] for e in env}
    assert {"NEATLOGS_ENDPOINT", "NEATLOGS_WORKFLOW_NAME", "NEATLOGS_PROXY_ROUTES"} <= names
    assert "NEATLOGS_PROXY_DATA_DIR=/data" in env
    assert proxy["read_only"] is True and proxy["cap_drop"] == ["ALL"]


def test_env_example_documents_every_compose_setting(compose: dict) -> None:  # type: ignore[type-arg]
    example = (ROOT / "docker" / ".env.example").read_text()
    fixed = {"NEATLOGS_PROXY_HOST", "NEATLOGS_PROXY_PORT", "NEATLOGS_PROXY_DATA_DIR", "NEATLOGS_PROXY_IDLE_TIMEOUT"}
    for entry in compose["services"]["proxy"]["environment"]:
        name = entry.split("=", 1)[0]
        if name not in fixed:
            assert name in example, f"{name} is not documented in docker/.env.example"
