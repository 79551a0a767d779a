#!/usr/bin/env bash
# The tools the test suite needs on a Debian host, and only the tests (never the user setup):
# debootstrap (local image builds), nginx-light and openssl (fixtures), curl, openssh-server
# (the remote-engine tests), docker-compose (the benchmarks' baseline), iproute2 (the
# registry tests' second engine). Then a Docker engine, as for users. Run as root; idempotent.
set -euo pipefail
cd "$(dirname "$0")"

# prometheus: promtool checks `llmstack export prometheus` and the Grafana dashboard queries.
PACKAGES=(debootstrap nginx-light openssl curl openssh-server docker-compose iproute2 prometheus)

log() { printf 'setup-test-host: %s\n' "$*" >&2; }
[[ "$(id -u)" -eq 0 ]] || { log "error: must run as root (apt-get install)"; exit 1; }

missing=()
for pkg in "${PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
else
    log "packages present: ${PACKAGES[*]}"
fi
exec bash ./setup-host.sh
