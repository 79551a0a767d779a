#!/usr/bin/env bash
# Prepare a Debian (bookworm) host for llmstack: Docker Engine, debootstrap (base images are
# built locally: there is no registry to pull from), nginx-light, openssl, curl, sshd,
# docker-compose (the benchmarks' baseline).
# Idempotent and non-interactive; run as root. Starts dockerd when no engine answers
# (containers/CI machines have no systemd) and waits for it with a deadline.
set -euo pipefail

DOCKER_WAIT_S="${DOCKER_WAIT_S:-60}"
PACKAGES=(docker.io debootstrap nginx-light openssl curl openssh-server docker-compose)

log() { printf 'setup-host: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$(id -u)" -eq 0 ]] || die "must run as root (apt-get install, dockerd, debootstrap need it)"

missing=()
for pkg in "${PACKAGES[@]}"; do
    # dpkg-query answers "install ok installed" only for a fully installed package.
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

if docker info >/dev/null 2>&1; then
    log "docker engine answers"
    exit 0
fi

# dockerd's pid file tells whether one is already starting (no procps on minimal Debian).
pidfile=/var/run/docker.pid
started_pid=""
if [[ -s "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    log "dockerd is running but not answering yet; waiting"
else
    # A stale pid file from a killed dockerd makes the new one refuse to start.
    rm -f "$pidfile"
    log "starting dockerd (log: /var/log/dockerd.log)"
    nohup dockerd >>/var/log/dockerd.log 2>&1 </dev/null &
    started_pid=$!
    disown || true
fi

deadline=$((SECONDS + DOCKER_WAIT_S))
until docker info >/dev/null 2>&1; do
    # A dockerd that already exited will never answer: fail now, not at the deadline.
    if [[ -n "$started_pid" ]] && ! kill -0 "$started_pid" 2>/dev/null; then
        log "last lines of /var/log/dockerd.log:"
        tail -n 30 /var/log/dockerd.log >&2 || true
        die "dockerd exited at start (see /var/log/dockerd.log)"
    fi
    if ((SECONDS >= deadline)); then
        log "last lines of /var/log/dockerd.log:"
        tail -n 30 /var/log/dockerd.log >&2 || true
        die "docker engine did not answer within ${DOCKER_WAIT_S}s"
    fi
    sleep 1
done
log "docker engine answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
