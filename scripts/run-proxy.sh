#!/usr/bin/env bash
# Install (first time) and run the proxy: scripts/run-proxy.sh [neatlogs-proxy arguments]
set -euo pipefail
venv="$("$(dirname "$0")/venv.sh")"
exec "$venv/bin/neatlogs-proxy" "$@"
