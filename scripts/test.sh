#!/usr/bin/env bash
# The whole test suite from a clean clone: installs every tool a test needs, lints, type-checks, tests.
# Usage: scripts/test.sh [pytest arguments]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
venv="$(scripts/venv.sh test)"
export PATH="$venv/bin:$PATH"

echo "== tools"
bash scripts/install-opencode.sh >/dev/null
bash scripts/install-nginx.sh >/dev/null
bash scripts/install-deploy-tools.sh "$venv" >/dev/null
( cd plugin && npm ci --no-audit --no-fund --loglevel=error >/dev/null )

echo "== lint"
ruff check proxy addon tests bench
( cd plugin && npx --no-install tsc --noEmit )
mypy --no-error-summary proxy addon || { echo "mypy failed"; exit 1; }

echo "== tests"
python -m pytest -q -p no:cacheprovider "$@"
