#!/usr/bin/env bash
# From a fresh machine to a real chat answer: install, init, up, ask the demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/llmstack init .
.venv/bin/llmstack up
.venv/bin/python - <<'PY'
from pathlib import Path

from openai import OpenAI

key = next(line.split("=", 1)[1] for line in Path(".env").read_text().splitlines()
           if line.startswith("LITELLM_MASTER_KEY="))
client = OpenAI(api_key=key, base_url="http://localhost:4000/v1")
reply = client.chat.completions.create(
    model="deepseek-coder",
    messages=[{"role": "user", "content": "Write a haiku about containers."}],
    max_tokens=60,
)
print("\ndeepseek-coder says:\n" + (reply.choices[0].message.content or "").strip())
PY
