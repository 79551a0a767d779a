#!/usr/bin/env bash
# Set llmstack up for this user: a Docker engine that answers (scripts/setup-host.sh: nothing
# is installed when one does), the package in .venv (no root), and the images: pulled from
# their registries by digest, or, where no registry answers, built here
# (`llmstack images build`: needs debootstrap and root, installed here only on a Debian host
# as root) - or bring a bundle instead (`llmstack images load FILE`).
# LLMSTACK_EXTRAS: pip extras to install too (scripts/test.sh: test,bench).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'install: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

bash scripts/setup-host.sh
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv || die "python3 -m venv failed: install python3-venv (Debian/Ubuntu: sudo apt-get install python3-venv) or use Python >= 3.11 with venv"
fi
target="."
if [ -n "${LLMSTACK_EXTRAS:-}" ]; then target=".[${LLMSTACK_EXTRAS}]"; fi
.venv/bin/pip install --quiet --disable-pip-version-check -e "$target"

if .venv/bin/llmstack images pull; then
    exit 0
fi
log "no images from a registry (above): building them on this engine instead"
if ! command -v debootstrap >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing debootstrap (the local builds start from a Debian rootfs)"
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y debootstrap
    else
        die "building the images needs debootstrap and root; or load a bundle made elsewhere: llmstack images save -o bundle.tar (where a registry answers), then .venv/bin/llmstack images load bundle.tar"
    fi
fi
.venv/bin/llmstack images build
