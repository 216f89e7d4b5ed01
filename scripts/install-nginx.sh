#!/usr/bin/env bash
# Install nginx (Debian package) for the several-replicas end-to-end test (tests/e2e/test_replicas_nginx.py).
# Idempotent: does nothing when nginx is already installed. Needs root (or sudo) only when it installs.
# Debian bookworm: "nginx" is the core server (with the upstream hash module the test needs);
# "nginx-light" is a transitional package on top of it, used only when "nginx" has no candidate.
# The service is never started: the test runs its own nginx with its own config.
# The last line printed on stdout is the path of the nginx binary; progress goes to stderr.
set -euo pipefail

log() { echo "install-nginx: $*" >&2; }

find_nginx() {
  local c
  for c in "$(command -v nginx 2>/dev/null || true)" /usr/sbin/nginx /usr/local/sbin/nginx; do
    if [[ -n "$c" && -x "$c" ]]; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

if bin="$(find_nginx)"; then
  echo "$bin"
  exit 0
fi

SUDO=()
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { log "nginx is missing and installing it needs root (or sudo)"; exit 1; }
  SUDO=(sudo -n)
fi
command -v apt-get >/dev/null 2>&1 || { log "nginx is missing and there is no apt-get to install it"; exit 1; }

# Keep the package's postinst from starting a system nginx on port 80 (Debian's policy-rc.d mechanism).
POLICY=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e "$POLICY" ]]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
  "${SUDO[@]}" chmod +x "$POLICY"
  created_policy=1
fi
cleanup() { [[ "$created_policy" == 1 ]] && "${SUDO[@]}" rm -f "$POLICY"; return 0; }
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
log "apt-get update"
"${SUDO[@]}" apt-get update -qq >&2

candidate() { # $1 = package; prints its candidate version, or nothing when there is none
  apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '(none)' || true
}
pkg=""
for p in nginx nginx-light; do
  if [[ -n "$(candidate "$p")" ]]; then
    pkg="$p"
    break
  fi
done
[[ -n "$pkg" ]] || { log "neither nginx nor nginx-light is available from apt"; exit 1; }

log "apt-get install $pkg"
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$pkg" >&2

bin="$(find_nginx)" || { log "$pkg installed, but no nginx binary was found"; exit 1; }
"$bin" -v >&2
echo "$bin"
