#!/usr/bin/env bash
# From a fresh machine to a real chat answer: install, init, up, ask the demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/llmstack init .
.venv/bin/llmstack up
.venv/bin/python - <<'PY'
from pathlib import Path

import httpx

key = next(line.split("=", 1)[1] for line in Path(".env").read_text().splitlines()
           if line.startswith("LITELLM_MASTER_KEY="))
reply = httpx.post(
    "http://localhost:4000/v1/chat/completions",
    headers={"Authorization": f"Bearer {key}"},
    json={"model": "deepseek-coder", "max_tokens": 60,
          "messages": [{"role": "user", "content": "Write a haiku about containers."}]},
    timeout=120,
)
reply.raise_for_status()
print("\ndeepseek-coder says:\n" + (reply.json()["choices"][0]["message"]["content"] or "").strip())
PY
