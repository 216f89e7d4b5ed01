"""Helm chart helm/neatlogs-proxy: `helm lint` and rendering through helm-sdkpy (Helm v4 as a
library), then schema validation of every rendered object with kubernetes-validate.

Rendering installs the release into an in-memory fake API server (tests/deploy/fake_kube.py), since
helm-sdkpy offers no `helm template`; see tests/deploy/helm_render.py.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy._tools import ROOT, missing, need_module

CHART = ROOT / "helm" / "neatlogs-proxy"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
EXISTING_SECRETS_VALUES = CHART / "ci" / "existing-secrets-values.yaml"
K8S_VERSIONS = ["1.25.0", "1.37.0"]  # the chart's kubeVersion floor and the newest schemas shipped
RELEASE = "rel"
FULLNAME = "rel-neatlogs-proxy"

yaml = need_module("yaml")


def _helm(*args: str) -> dict[str, Any]:
    try:
        import helm_sdkpy  # noqa: F401
    except ImportError:
        missing("helm-sdkpy")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.deploy.helm_render", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def load_values(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) or {}
    assert isinstance(data, dict)
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render(tmp_path: Path, values: dict[str, Any], chart: Path = CHART) -> dict[str, Any]:
    values_file = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.json"
    values_file.write_text(json.dumps(values))
    out = _helm("template", str(chart), str(values_file), RELEASE, "obs")
    assert out["ok"], out.get("error")
    result: dict[str, Any] = out["result"]
    return result


def lint(chart: Path) -> dict[str, Any]:
    out = _helm("lint", str(chart))
    assert out["ok"], out.get("error")
    result: dict[str, Any] = out["result"]
    return result


def chart_with_values(tmp_path: Path, values: dict[str, Any]) -> Path:
    """A copy of the chart whose values.yaml is `values` merged over the defaults (helm-sdkpy's
    Lint takes no values, so `helm lint -f` is emulated this way)."""
    dest = tmp_path / "neatlogs-proxy"
    shutil.copytree(CHART, dest)
    merged = deep_merge(load_values(CHART / "values.yaml"), values)
    (dest / "values.yaml").write_text(yaml.safe_dump(merged, sort_keys=False))
    return dest


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for obj in objects:
        assert obj["kind"] not in kinds, f"two {obj['kind']} objects"
        kinds[obj["kind"]] = obj
    return kinds


def manifest_docs(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(result["manifest"]) if d]


# --------------------------------------------------------------------------- fixtures (rendered once)
@pytest.fixture(scope="module")
def default_render(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return render(tmp_path_factory.mktemp("default"), {})


@pytest.fixture(scope="module")
def full_render(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return render(tmp_path_factory.mktemp("full"), load_values(FULL_VALUES))


@pytest.fixture(scope="module")
def default_objs(default_render: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return by_kind(default_render["objects"])


@pytest.fixture(scope="module")
def full_objs(full_render: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return by_kind(full_render["objects"])


# --------------------------------------------------------------------------- lint
def assert_lint_clean(result: dict[str, Any]) -> None:
    assert result["TotalChartsLinted"] == 1
    assert not result["Errors"], result
    # Severity: 1 info (e.g. "icon is recommended"), 2 warning, 3 error; warnings fail like --strict.
    serious = [m for m in result["Messages"] if m["Severity"] >= 2]
    assert not serious, serious


def test_helm_lint_default_values() -> None:
    assert_lint_clean(lint(CHART))


@pytest.mark.parametrize("values_file", [FULL_VALUES, EXISTING_SECRETS_VALUES], ids=lambda p: p.name)
def test_helm_lint_ci_values(tmp_path: Path, values_file: Path) -> None:
    assert_lint_clean(lint(chart_with_values(tmp_path, load_values(values_file))))


def test_helm_lint_reports_broken_templates(tmp_path: Path) -> None:
    """The lint test can fail: a template error is reported."""
    broken = chart_with_values(tmp_path, {})
    with (broken / "templates" / "service.yaml").open("a") as fh:
        fh.write("{{ .Values.does.not.exist }}\n")
    assert lint(broken)["Errors"]


# --------------------------------------------------------------------------- schema validation
def validate_objects(objects: list[dict[str, Any]]) -> list[str]:
    kv = need_module("kubernetes_validate")
    problems: list[str] = []
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            continue  # a CRD: no schema in kubernetes-validate, checked structurally below
        clean = copy.deepcopy(obj)
        # fields the fake API server adds, as a real one would
        for key in ("uid", "resourceVersion", "creationTimestamp"):
            clean["metadata"].pop(key, None)
        for version in K8S_VERSIONS:
            try:
                kv.validate(clean, version, strict=True)
            except kv.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                problems.append(f"{obj['kind']} @ {version}: {path}: {exc.message}")
    return problems


def test_default_render_validates_against_kubernetes_schemas(default_render: dict[str, Any]) -> None:
    assert not validate_objects(default_render["objects"])


def test_full_render_validates_against_kubernetes_schemas(full_render: dict[str, Any]) -> None:
    assert not validate_objects(full_render["objects"])


def test_validation_catches_a_wrong_field(default_objs: dict[str, dict[str, Any]]) -> None:
    """The schema test can fail: a misspelt field in strict mode is an error."""
    bad = copy.deepcopy(default_objs["Deployment"])
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    assert validate_objects([bad])


def test_existing_secrets_render_validates(tmp_path: Path) -> None:
    result = render(tmp_path, load_values(EXISTING_SECRETS_VALUES))
    assert not validate_objects(result["objects"])
    objs = by_kind(result["objects"])
    assert "Secret" not in objs
    env = {e["name"]: e for e in objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["NEATLOGS_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "neatlogs", "key": "NEATLOGS_API_KEY"}
    assert env["NEATLOGS_PROXY_AUTH_TOKENS"]["valueFrom"]["secretKeyRef"] == {
        "name": "neatlogs-gateway",
        "key": "tokens",
    }


def test_manifest_matches_the_created_objects(default_render: dict[str, Any], full_render: dict[str, Any]) -> None:
    for result in (default_render, full_render):
        docs = {(d["kind"], d["metadata"]["name"]) for d in manifest_docs(result)}
        created = {(o["kind"], o["metadata"]["name"]) for o in result["objects"]}
        assert docs == created


# --------------------------------------------------------------------------- default render
def test_default_resources(default_objs: dict[str, dict[str, Any]]) -> None:
    assert set(default_objs) == {"ServiceAccount", "ConfigMap", "Service", "Deployment"}


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def test_deployment_probes_ports_and_resources(default_objs: dict[str, dict[str, Any]]) -> None:
    dep = default_objs["Deployment"]
    c = container(dep)
    assert c["args"] == ["run"]
    assert c["ports"] == [{"name": "http", "containerPort": 8787, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/_neatlogs/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/_neatlogs/readyz", "port": "http"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert c["image"].endswith(":0.1.0")  # appVersion by default
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_security_context(default_objs: dict[str, dict[str, Any]]) -> None:
    pod = default_objs["Deployment"]["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == 10001
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(default_objs["Deployment"])["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == 10001
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False


def test_volumes_tmp_and_spool(default_objs: dict[str, dict[str, Any]]) -> None:
    pod = default_objs["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in container(default_objs["Deployment"])["volumeMounts"]}
    assert mounts == {"/data": "data", "/tmp": "tmp"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["tmp"] and "emptyDir" in volumes["data"]


def test_configmap_holds_the_non_secret_settings(default_objs: dict[str, dict[str, Any]]) -> None:
    cm = default_objs["ConfigMap"]["data"]
    assert cm["NEATLOGS_ENDPOINT"] == "https://ingest.neatlogs.com"
    assert cm["NEATLOGS_WORKFLOW_NAME"] == "opencode"
    assert cm["NEATLOGS_PROXY_HOST"] == "0.0.0.0"
    assert cm["NEATLOGS_PROXY_PORT"] == "8787"
    assert cm["NEATLOGS_PROXY_DATA_DIR"] == "/data"
    assert cm["NEATLOGS_PROXY_SPOOL_MAX_BYTES"] == "268435456"  # not 2.68435456e+08
    assert cm["NEATLOGS_PROXY_MAX_CAPTURE_BYTES"] == "16777216"
    assert cm["NEATLOGS_PROXY_REDACT"] == "true"
    assert cm["NEATLOGS_PROXY_HTTP_LAYER"] == "fast"
    assert all(isinstance(v, str) for v in cm.values())
    assert not any("API_KEY" in k or "AUTH_TOKENS" in k for k in cm)
    env_from = container(default_objs["Deployment"])["envFrom"]
    assert env_from == [{"configMapRef": {"name": FULLNAME}}]


def test_no_secret_env_without_secrets(default_objs: dict[str, dict[str, Any]]) -> None:
    names = [e["name"] for e in container(default_objs["Deployment"])["env"]]
    assert "NEATLOGS_API_KEY" not in names and "NEATLOGS_PROXY_AUTH_TOKENS" not in names


def test_service(default_objs: dict[str, dict[str, Any]]) -> None:
    svc = default_objs["Service"]["spec"]
    assert svc["ports"] == [{"name": "http", "port": 8787, "targetPort": "http", "protocol": "TCP"}]
    assert svc["selector"] == default_objs["Deployment"]["spec"]["selector"]["matchLabels"]


def test_notes_explain_local_mode(default_render: dict[str, Any]) -> None:
    notes = default_render["notes"]
    assert "port-forward" in notes and "/_neatlogs/healthz" in notes
    assert "no Neatlogs API key" in notes


# --------------------------------------------------------------------------- full render
def test_full_resources(full_objs: dict[str, dict[str, Any]]) -> None:
    assert set(full_objs) == {
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "Ingress",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
    }


def test_secret_created_from_values(full_objs: dict[str, dict[str, Any]]) -> None:
    import base64

    secret = full_objs["Secret"]
    assert secret["type"] == "Opaque"
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {"api-key": "nl-test-key", "auth-tokens": "token-a,token-b"}
    env = {e["name"]: e for e in container(full_objs["StatefulSet"])["env"]}
    assert env["NEATLOGS_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": FULLNAME, "key": "api-key"}
    assert env["NEATLOGS_PROXY_AUTH_TOKENS"]["valueFrom"]["secretKeyRef"] == {"name": FULLNAME, "key": "auth-tokens"}
    assert env["NEATLOGS_PROXY_LOG_LEVEL"] == {"name": "NEATLOGS_PROXY_LOG_LEVEL", "value": "debug"}  # extraEnv
    annotations = full_objs["StatefulSet"]["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" in annotations and "checksum/config" in annotations


def test_persistence_uses_one_claim_per_replica(full_objs: dict[str, dict[str, Any]]) -> None:
    sts = full_objs["StatefulSet"]["spec"]
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert claim["spec"]["storageClassName"] == "standard"
    assert "replicas" not in sts  # the HPA owns the replica count
    volumes = {v["name"] for v in sts["template"]["spec"]["volumes"]}
    assert volumes == {"tmp", "upstream-ca"}  # data comes from the claim template (upstream-ca: full values)
    assert sts["serviceName"] == FULLNAME


def test_routes_rendered_sorted(full_objs: dict[str, dict[str, Any]]) -> None:
    assert full_objs["ConfigMap"]["data"]["NEATLOGS_PROXY_ROUTES"] == (
        "anthropic=https://api.anthropic.com,openai=https://api.openai.com"
    )


def test_ingress_session_affinity(full_objs: dict[str, dict[str, Any]]) -> None:
    ing = full_objs["Ingress"]
    ann = ing["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$http_x_session_id"
    assert ann["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert ann["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ing["spec"]["ingressClassName"] == "nginx"
    assert ing["spec"]["tls"] == [{"hosts": ["proxy.example.com"], "secretName": "proxy-tls"}]
    (rule,) = ing["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": FULLNAME, "port": {"name": "http"}}


def test_hpa_targets_the_workload(full_objs: dict[str, dict[str, Any]]) -> None:
    hpa = full_objs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": FULLNAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    names = {m["resource"]["name"] for m in hpa["spec"]["metrics"]}
    assert names == {"cpu", "memory"}


def test_pdb(full_objs: dict[str, dict[str, Any]]) -> None:
    pdb = full_objs["PodDisruptionBudget"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == full_objs["StatefulSet"]["spec"]["selector"]["matchLabels"]


def test_service_monitor_is_well_formed(full_render: dict[str, Any], full_objs: dict[str, dict[str, Any]]) -> None:
    sm = full_objs["ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["kind"] == "ServiceMonitor"
    assert sm["metadata"]["name"] == FULLNAME
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/_neatlogs/metrics"
    # /_neatlogs/metrics needs the gateway token when auth is on
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "neatlogs-metrics", "key": "token"}}
    assert set(sm["spec"]["selector"]["matchLabels"].items()) <= set(full_objs["Service"]["metadata"]["labels"].items())
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["obs"]}
    (doc,) = [d for d in manifest_docs(full_render) if d["kind"] == "ServiceMonitor"]
    assert doc["spec"] == sm["spec"]


def test_full_notes(full_render: dict[str, Any]) -> None:
    notes = full_render["notes"]
    assert "https://proxy.example.com/<route>" in notes
    assert "WARNING" not in notes and "no Neatlogs API key" not in notes


# --------------------------------------------------------------------------- guard rails
def test_replicas_without_affinity_warn(tmp_path: Path) -> None:
    notes = render(tmp_path, {"replicaCount": 2})["notes"]
    assert "session affinity" in notes


def test_ingress_without_auth_warns(tmp_path: Path) -> None:
    notes = render(tmp_path, {"ingress": {"enabled": True}})["notes"]
    assert "without gateway auth tokens" in notes


def test_secrets_create_without_values_fails(tmp_path: Path) -> None:
    values_file = tmp_path / "v.json"
    values_file.write_text(json.dumps({"secrets": {"create": True}}))
    out = _helm("template", str(CHART), str(values_file))
    assert not out["ok"] and "secrets.create=true needs" in out["error"]


def test_values_are_documented() -> None:
    """Every leaf value in values.yaml has a comment right above it or above one of its parents."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    keys: list[tuple[int, str, bool]] = []  # (indent, key, commented)
    prev = ""
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "-")) and ":" in stripped:
            keys.append((len(line) - len(line.lstrip()), stripped.split(":")[0], prev.startswith("#")))
        if stripped:
            prev = stripped
    undocumented = []
    for i, (indent, key, commented) in enumerate(keys):
        is_leaf = i + 1 == len(keys) or keys[i + 1][0] <= indent
        if not is_leaf:
            continue
        documented = commented
        level = indent
        for j in range(i - 1, -1, -1):  # walk up the parents
            if keys[j][0] < level:
                documented = documented or keys[j][2]
                level = keys[j][0]
        if not documented:
            undocumented.append(key)
    assert not undocumented, undocumented


def test_private_upstream_ca_is_mounted_and_set(full_objs: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    pod = full_objs["StatefulSet"]["spec"]["template"]["spec"]
    c = container(full_objs["StatefulSet"])
    env = {e["name"]: e for e in c["env"]}
    assert env["NEATLOGS_PROXY_UPSTREAM_CA"]["value"] == "/etc/neatlogs-proxy/upstream-ca/corp-root.pem"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/etc/neatlogs-proxy/upstream-ca"] == {"name": "upstream-ca",
                                                         "mountPath": "/etc/neatlogs-proxy/upstream-ca",
                                                         "readOnly": True}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["upstream-ca"]["configMap"] == {"name": "corp-ca",
                                                   "items": [{"key": "corp-root.pem", "path": "corp-root.pem"}]}
    # From a Secret instead; both at once is refused.
    secret = render(tmp_path, {"proxy": {"upstreamCA": {"secret": "corp-ca-secret"}}})
    dep = by_kind(secret["objects"])["Deployment"]
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["upstream-ca"]["secret"] == {"secretName": "corp-ca-secret",
                                             "items": [{"key": "ca.pem", "path": "ca.pem"}]}
    assert not validate_objects(secret["objects"])
    values_file = tmp_path / "both.json"
    values_file.write_text(json.dumps({"proxy": {"upstreamCA": {"configMap": "a", "secret": "b"}}}))
    out = _helm("template", str(CHART), str(values_file))
    assert not out["ok"] and "set configMap or secret, not both" in out["error"]


def test_no_upstream_ca_by_default(default_objs: dict[str, dict[str, Any]]) -> None:
    names = [e["name"] for e in container(default_objs["Deployment"])["env"]]
    assert "NEATLOGS_PROXY_UPSTREAM_CA" not in names
