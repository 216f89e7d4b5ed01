#!/usr/bin/env bash
# Create (or reuse) .venv with a Python >= 3.12 and install the project into it.
# Usage: scripts/venv.sh [extras]   e.g. scripts/venv.sh test
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${NEATLOGS_VENV:-$repo/.venv}"
extras="${1:-}"

find_python() {
  local c
  for c in "${PYTHON:-}" python3.13 python3.12 python3; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  # pyenv installs that are not on PATH (this project's machines ship 3.12/3.13 that way)
  for c in "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
    if [ -x "$c" ] && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
  py="$(find_python)" || { echo "neatlogs-proxy needs Python >= 3.12; install it (e.g. apt-get install python3.12 or pyenv install 3.12) or set PYTHON=/path/to/python3.12" >&2; exit 1; }
  echo "creating $venv with $py" >&2
  "$py" -m venv "$venv"
fi
stamp="$venv/.installed-${extras:-base}"
if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -e "$repo${extras:+[$extras]}" >&2
  touch "$stamp"
fi
echo "$venv"
