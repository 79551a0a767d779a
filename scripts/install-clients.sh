#!/usr/bin/env bash
# The real clients the integration tests drive through a live stack with the configurations
# `llmstack connect` writes (tests/integration/test_clients.py), at the versions pinned in
# tests/clients/: the Continue CLI, its config schema and the OpenAI Node SDK (npm, lock file),
# `llm` and aider (PyPI, each in its own venv: aider pins its own dependencies).
# Everything goes to .clients/ (git-ignored); Node.js and npm come from Debian when missing.
# Test setup only: `llmstack` itself never needs them. Idempotent; run as root on a fresh host.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=tests/clients
DEST=.clients

log() { printf 'install-clients: %s\n' "$*" >&2; }

if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
    [[ "$(id -u)" -eq 0 ]] || { log "error: node/npm missing; run as root (apt-get)"; exit 1; }
    log "installing nodejs npm"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
fi

mkdir -p "$DEST/node"
if cmp -s "$SRC/package-lock.json" "$DEST/node/package-lock.json" && \
        [[ -x "$DEST/node/node_modules/.bin/cn" ]]; then
    log "npm clients present ($(cd "$DEST/node" && node_modules/.bin/cn --version))"
else
    cp "$SRC/package.json" "$SRC/package-lock.json" "$DEST/node/"
    (cd "$DEST/node" && npm ci --no-audit --no-fund --loglevel=error)
fi

for tool in llm aider; do
    if [[ ! -x "$DEST/$tool/bin/python" ]]; then
        python3 -m venv "$DEST/$tool"
    fi
    "$DEST/$tool/bin/pip" install --quiet --disable-pip-version-check \
        -r "$SRC/requirements-$tool.txt"
done
log "clients in $DEST: $(.clients/llm/bin/llm --version), aider $(.clients/aider/bin/aider --version 2>/dev/null | tail -1)"
