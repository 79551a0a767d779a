#!/usr/bin/env bash
# Make sure a Docker engine answers, and touch nothing when one does.
#
# llmstack needs only a working engine, whatever installed it: Docker CE, Debian's docker.io,
# Docker Desktop, rootless Docker, or a remote engine (DOCKER_HOST / a docker context). When
# one answers this script changes nothing and needs no root. When none answers:
#   - an engine is installed but stopped: as root, start its dockerd (hosts without systemd,
#     such as containers and CI machines); otherwise say how to start it;
#   - no engine is installed at all: as root on Debian/Ubuntu, install Debian's docker.io
#     (LLMSTACK_NO_ENGINE_INSTALL=1 refuses); otherwise say how to install one.
# It never installs an engine beside another one (docker.io conflicts with docker-ce and
# containerd.io: apt would refuse, or replace the user's engine).
set -euo pipefail

DOCKER_WAIT_S="${DOCKER_WAIT_S:-60}"
DOCKERD_LOG="${DOCKERD_LOG:-/var/log/dockerd.log}"
DOCKER_PIDFILE="${DOCKER_PIDFILE:-/var/run/docker.pid}"
# Packages that each provide a Docker engine (or its drop-in replacement).
ENGINE_PACKAGES=(docker-ce docker-ee docker.io moby-engine podman-docker docker-desktop)

log() { printf 'setup-host: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

engine_answers() { command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; }

# The engine package installed on this host, if any (dpkg hosts; empty elsewhere).
installed_engine_package() {
    command -v dpkg-query >/dev/null 2>&1 || return 0
    local pkg
    for pkg in "${ENGINE_PACKAGES[@]}"; do
        if [[ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" == "install ok installed" ]]; then
            printf '%s\n' "$pkg"
            return 0
        fi
    done
}

# What provides an engine here, by package or by binary: "docker-ce", "dockerd", ... or "".
installed_engine() {
    local pkg
    pkg="$(installed_engine_package)"
    if [[ -n "$pkg" ]]; then printf '%s\n' "$pkg"; return 0; fi
    if command -v dockerd >/dev/null 2>&1; then printf 'dockerd\n'; return 0; fi
    if command -v dockerd-rootless.sh >/dev/null 2>&1; then printf 'rootless docker\n'; return 0; fi
    if [[ -d /Applications/Docker.app ]]; then printf 'Docker Desktop\n'; return 0; fi
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }

start_dockerd() {
    local started_pid=""
    if [[ -s "$DOCKER_PIDFILE" ]] && kill -0 "$(cat "$DOCKER_PIDFILE")" 2>/dev/null; then
        log "dockerd is running but not answering yet; waiting"
    else
        # A stale pid file from a killed dockerd makes the new one refuse to start.
        rm -f "$DOCKER_PIDFILE"
        log "starting dockerd (log: $DOCKERD_LOG)"
        nohup dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
        started_pid=$!
        disown || true
    fi
    local deadline=$((SECONDS + DOCKER_WAIT_S))
    until engine_answers; do
        # A dockerd that already exited will never answer: fail now, not at the deadline.
        if [[ -n "$started_pid" ]] && ! kill -0 "$started_pid" 2>/dev/null; then
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            die "dockerd exited at start (see $DOCKERD_LOG)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            die "docker engine did not answer within ${DOCKER_WAIT_S}s"
        fi
        sleep 1
    done
}

main() {
    if engine_answers; then
        log "docker engine answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?')): nothing to install"
        return 0
    fi
    local engine
    engine="$(installed_engine)"
    if [[ -n "$engine" ]]; then
        # systemd manages the engine only where systemd runs (containers and CI machines often
        # have systemctl installed but no systemd): start dockerd directly there.
        if is_root && [[ -d "${SYSTEMD_DIR:-/run/systemd/system}" ]] && command -v systemctl >/dev/null 2>&1 \
                && systemctl start docker 2>/dev/null; then
            log "engine installed ($engine): started it with systemctl"
            local deadline=$((SECONDS + DOCKER_WAIT_S))
            until engine_answers; do ((SECONDS < deadline)) || die "docker did not answer within ${DOCKER_WAIT_S}s"; sleep 1; done
        elif is_root && command -v dockerd >/dev/null 2>&1; then
            log "engine installed ($engine) but not running: starting it"
            start_dockerd
        else
            die "a Docker engine is installed ($engine) but does not answer: start it (sudo systemctl start docker, or open Docker Desktop), and if you are not root, join the docker group (sudo usermod -aG docker \$USER, then log in again) or set DOCKER_HOST"
        fi
    else
        if [[ "${LLMSTACK_NO_ENGINE_INSTALL:-0}" == 1 ]]; then
            die "no Docker engine here and LLMSTACK_NO_ENGINE_INSTALL=1: install one (https://docs.docker.com/engine/install/) or set DOCKER_HOST to a remote engine"
        fi
        if ! is_root || ! command -v apt-get >/dev/null 2>&1; then
            die "no Docker engine here: install one (https://docs.docker.com/engine/install/; on Debian/Ubuntu as root this script installs docker.io), or set DOCKER_HOST to a remote engine"
        fi
        log "no Docker engine installed: installing Debian's docker.io"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io
        engine_answers || start_dockerd
    fi
    log "docker engine answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
}

main "$@"
