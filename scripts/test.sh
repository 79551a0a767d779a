#!/usr/bin/env bash
# The whole test suite, integration tests on the real Docker engine included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bash scripts/install-clients.sh  # the real editor clients tests/integration/test_clients.py runs
export TESTCONTAINERS_RYUK_DISABLED=true
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest "$@"
