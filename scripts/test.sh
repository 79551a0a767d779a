#!/usr/bin/env bash
# The whole test suite, integration tests on the real Docker engine included: the test-only
# tools (scripts/setup-test-host.sh), the user setup with the test extras, the real editor
# clients tests/integration/test_clients.py runs, ruff, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-test-host.sh
LLMSTACK_EXTRAS=test,bench bash scripts/install.sh
bash scripts/install-clients.sh
export TESTCONTAINERS_RYUK_DISABLED=true
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest --durations=25 "$@"
