#!/usr/bin/env bash
# Install everything llmstack and its tests need on a fresh Debian machine (as root):
# Docker engine (started), debootstrap, nginx, the package in .venv, the images and the
# demo model. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
.venv/bin/llmstack images build
