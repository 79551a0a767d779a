"""Real editor and command-line clients answer through a live stack, configured only by what
`llmstack connect` wrote or printed (no hand edits): the Continue CLI (`cn -p`), Simon
Willison's `llm`, aider, the OpenAI Python and Node SDKs and curl, over HTTPS with the stack's
own CA where the client supports it (and plain HTTP for Continue too). Continue's config also
passes Continue's own schema (`@continuedev/config-yaml`).

The clients come from their registries at the versions pinned in tests/clients/ (npm lock file,
requirements files), installed into .clients/ by `bash scripts/install-clients.sh` (run by
scripts/test.sh). Each client runs with its own HOME (and LLM_USER_PATH), never the user's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, Stack

pytestmark = pytest.mark.integration

CLIENTS = REPO / ".clients"
CN = CLIENTS / "node" / "node_modules" / ".bin" / "cn"
CONFIG_YAML = CLIENTS / "node" / "node_modules" / ".bin" / "config-yaml"
LLM = CLIENTS / "llm" / "bin" / "llm"
AIDER = CLIENTS / "aider" / "bin" / "aider"
PROMPT = "Say hello in one short sentence."
CHAT_200 = re.compile(r'"POST /v1/chat/completions HTTP/1\.1" 200 ')


@pytest.fixture(scope="module", autouse=True)
def installed() -> None:
    missing = [str(p.relative_to(REPO)) for p in (CN, CONFIG_YAML, LLM, AIDER) if not p.exists()]
    if missing:
        pytest.fail(f"clients missing ({', '.join(missing)}): run bash scripts/install-clients.sh")


def client_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment a client runs in: a HOME of its own, no proxy or CA settings of ours."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
                        "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE")}
    return {**env, "HOME": str(home), **extra}


def run(args: list[str] | str, cwd: Path, env: dict[str, str],
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, shell=isinstance(args, str),
                          executable="/bin/bash" if isinstance(args, str) else None)


def answered(stack: Stack) -> int:
    """Chat completions the stack's edge has answered with 200 so far (its access log)."""
    proc = stack.cli("logs", "nginx", "--tail", "100000", check=True)
    return len(CHAT_200.findall(proc.stdout))


def connect(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    proc = stack.cli("connect", *args, check=True)
    assert stack.key not in proc.stdout + proc.stderr or "--show-key" in args
    return proc


def notes(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line[2:] for line in proc.stderr.splitlines() if line.startswith("# ")]


# --- Continue ---------------------------------------------------------------------------------


@pytest.mark.parametrize("listener", ["local", "https"])
def test_continue_config_passes_continues_own_schema(demo_stack: Stack, tmp_path: Path,
                                                     listener: str) -> None:
    config = tmp_path / "config.yaml"
    connect(demo_stack, "continue", "--listener", listener, "--autocomplete-model",
            "qwen-coder", "--out", str(config))
    proc = run([str(CONFIG_YAML), str(config)], tmp_path, client_env(tmp_path / "home"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout
    # The harness can fail: a config missing a required field is refused.
    broken = tmp_path / "broken.yaml"
    data = yaml.safe_load(config.read_text())
    del data["models"][0]["model"]
    broken.write_text(yaml.safe_dump(data))
    assert run([str(CONFIG_YAML), str(broken)], tmp_path,
               client_env(tmp_path / "home")).returncode != 0


@pytest.mark.parametrize("listener", ["local", "https"])
def test_continue_cli_answers_through_the_stack(demo_stack: Stack, tmp_path: Path,
                                                listener: str) -> None:
    config = tmp_path / "config.yaml"
    connect(demo_stack, "continue", "--listener", listener, "--out", str(config))
    env = client_env(tmp_path / "home")
    before = answered(demo_stack)
    proc = run([str(CN), "-p", "--config", str(config), PROMPT], tmp_path, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() and "error" not in proc.stdout.lower(), proc.stdout
    assert answered(demo_stack) > before
    print(f"cn ({listener}): {proc.stdout.strip()}")
    if listener == "https":
        # Control: without the CA connect put in, Continue cannot verify the stack.
        data = yaml.safe_load(config.read_text())
        for model in data["models"]:
            del model["requestOptions"]
        bare = tmp_path / "no-ca.yaml"
        bare.write_text(yaml.safe_dump(data))
        bare.chmod(0o600)
        failed = run([str(CN), "-p", "--config", str(bare), PROMPT], tmp_path, env)
        assert "Connection error" in failed.stdout + failed.stderr or failed.returncode != 0


# --- llm --------------------------------------------------------------------------------------


def test_llm_answers_over_https_following_connects_notes(demo_stack: Stack,
                                                         tmp_path: Path) -> None:
    user_dir = tmp_path / "llm"
    env = client_env(tmp_path / "home", LLM_USER_PATH=str(user_dir),
                     PATH=f"{LLM.parent}:{os.environ['PATH']}")
    proc = connect(demo_stack, "llm", "--listener", "https", "--out",
                   str(user_dir / "extra-openai-models.yaml"))
    said = notes(proc)
    set_key = next(n.split(": ", 1)[1] for n in said if "llm keys set" in n)
    export = next(n.split(": ", 1)[1].removesuffix(" before running llm")
                  for n in said if "SSL_CERT_FILE" in n)
    assert demo_stack.key not in set_key  # a command that reads .env, not the key
    stored = run(set_key, demo_stack.root, env)
    assert stored.returncode == 0, stored.stderr
    before = answered(demo_stack)
    proc = run(f"{export}\nllm -m deepseek-coder {PROMPT!r}", tmp_path, env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert answered(demo_stack) > before
    print(f"llm: {proc.stdout.strip()}")
    # Control: the same call without the CA is refused by TLS verification.
    bare = run(["llm", "-m", "deepseek-coder", PROMPT], tmp_path, env)
    assert bare.returncode != 0 and "Connection error" in bare.stdout + bare.stderr


# --- aider ------------------------------------------------------------------------------------


def test_aider_answers_over_https_with_its_conf_file(demo_stack: Stack, tmp_path: Path) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    config = work / ".aider.conf.yml"
    connect(demo_stack, "aider", "--listener", "https", "--out", str(config))
    # Offline machine: LiteLLM's model price map from its package, not the network.
    env = client_env(tmp_path / "home", LITELLM_LOCAL_MODEL_COST_MAP="True")
    before = answered(demo_stack)
    proc = run([str(AIDER), "--config", str(config), "--message", PROMPT, "--no-git",
                "--yes-always", "--no-check-update", "--no-analytics", "--no-pretty",
                "--no-stream", "--no-show-release-notes"], work, env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    tokens = re.search(r"Tokens: (\S+) sent, (\S+) received", out)
    assert tokens and tokens.group(2) != "0", out
    assert "openai/deepseek-coder" in out
    assert answered(demo_stack) > before
    print(f"aider: {out[out.find('Repo-map'):].strip()}")


# --- OpenAI SDKs and curl ---------------------------------------------------------------------

PYTHON_SDK = """
from openai import OpenAI
reply = OpenAI().chat.completions.create(
    model="deepseek-coder", messages=[{"role": "user", "content": "Hi"}], max_tokens=20)
print(reply.choices[0].message.content)
"""
NODE_SDK = """
import OpenAI from "openai";
const reply = await new OpenAI().chat.completions.create(
  {model: "deepseek-coder", messages: [{role: "user", content: "Hi"}], max_tokens: 20});
console.log(reply.choices[0].message.content);
"""


def test_openai_sdks_answer_over_https_with_the_printed_environment(demo_stack: Stack,
                                                                    tmp_path: Path) -> None:
    printed = connect(demo_stack, "openai", "--listener", "https").stdout
    (tmp_path / "sdk.py").write_text(PYTHON_SDK)
    node_dir = CLIENTS / "node"
    (tmp_path / "sdk.mjs").write_text(NODE_SDK)
    env = client_env(tmp_path / "home", NODE_PATH=str(node_dir / "node_modules"))
    before = answered(demo_stack)
    py = run(f"{printed}\n{sys.executable} sdk.py", tmp_path, env)
    assert py.returncode == 0 and py.stdout.strip(), py.stderr
    # Node resolves bare imports from the script's folder up: run it beside node_modules.
    script = node_dir / f"sdk-{os.getpid()}.mjs"
    script.write_text(NODE_SDK)
    try:
        js = run(f"{printed}\nnode {script}", tmp_path, env)
    finally:
        script.unlink()
    assert js.returncode == 0 and js.stdout.strip(), js.stderr
    assert answered(demo_stack) >= before + 2
    print(f"python SDK: {py.stdout.strip()}\nnode SDK: {js.stdout.strip()}")


def test_curl_command_answers_over_https(demo_stack: Stack, tmp_path: Path) -> None:
    command = connect(demo_stack, "curl", "--listener", "https").stdout
    proc = run(command, tmp_path, client_env(tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["choices"][0]["message"]["content"]
    assert reply["model"] == "deepseek-coder"
