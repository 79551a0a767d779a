"""Every example of the users' API guide, run as a user would, against a stack llmstack
brought up: only the key (from .env) and the port (the test stack's) are substituted."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.helpers import REPO, Stack

pytestmark = pytest.mark.integration

SHARED_GUIDE = REPO.parent / "shared" / "reference" / "API_USAGE.md"
VENDORED_GUIDE = REPO / "tests" / "contract" / "API_USAGE.reference.md"
NODE_OPENAI = "openai@7.57.0"
# Not runnable here: no Go module proxy or crates.io on these machines. Their HTTP requests are
# the chat-completion request that test_go_and_rust_requests replays byte for byte.
NOT_RUNNABLE = {"go", "rust"}


def guide_text() -> str:
    return (SHARED_GUIDE if SHARED_GUIDE.exists() else VENDORED_GUIDE).read_text()


def blocks() -> list[tuple[int, str, str]]:
    return [(i, lang, code) for i, (lang, code) in
            enumerate(re.findall(r"```(\w+)\n(.*?)```", guide_text(), re.S))]


def test_vendored_guide_matches_shared_reference() -> None:
    if not SHARED_GUIDE.exists():
        pytest.skip("shared/reference is not beside this checkout")
    assert VENDORED_GUIDE.read_text() == SHARED_GUIDE.read_text()


def _localize(code: str, stack: Stack) -> str:
    return (code.replace("YOUR_API_KEY", stack.key)
                .replace("http://localhost:4000", f"http://127.0.0.1:{stack.local_port}"))


def _kind(lang: str, code: str) -> str:
    if lang in NOT_RUNNABLE:
        return "skip"
    if lang == "bash":
        if code.strip().startswith("Authorization:"):
            return "header"  # a fragment showing the header, not a command
        if "docker-compose" in code:
            return "compose"  # the guide's pre-llmstack restart hint; see docs/API_USAGE.md
        return "bash"
    return lang


def _ids() -> list[str]:
    return [f"{i:02d}-{lang}" for i, lang, _ in blocks()]


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not shutil.which("npm"):
        pytest.fail("npm is needed for the guide's JavaScript examples (Debian nodejs/npm)")
    path = tmp_path_factory.mktemp("node")
    (path / "package.json").write_text('{"type": "module", "private": true}\n')
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent", NODE_OPENAI],
                   cwd=path, check=True, timeout=300, capture_output=True)
    return path


@pytest.mark.parametrize(("index", "lang", "code"), blocks(), ids=_ids())
def test_guide_example_runs_unchanged(index: int, lang: str, code: str, demo_stack: Stack,
                                      request: pytest.FixtureRequest, tmp_path: Path) -> None:
    kind = _kind(lang, code)
    if kind == "skip":
        pytest.skip(f"no {lang} toolchain packages reachable here; covered by "
                    "test_go_and_rust_requests")
    code = _localize(code, demo_stack)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if kind == "header":
        resp = requests.get(f"{demo_stack.base_url}/models", timeout=30,
                            headers=dict([code.strip().replace("YOUR_API_KEY", demo_stack.key)
                                          .split(": ", 1)]))
        assert resp.status_code == 200
        return
    if kind == "compose":
        pytest.skip("docker-compose restart is replaced by `llmstack up` (docs/API_USAGE.md)")
    if kind == "bash":
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=demo_stack.root,
                              capture_output=True, text=True, timeout=180, env=env)
        assert proc.returncode == 0, proc.stderr
        if "curl" in code:
            assert '"error"' not in proc.stdout, proc.stdout
            assert ("choices" in proc.stdout) or ('"data"' in proc.stdout), proc.stdout[:500]
        else:
            assert "LITELLM_MASTER_KEY=" in proc.stdout
        return
    if kind == "python":
        if "client." in code and "client = " not in code and "OpenAI(" not in code:
            # Later sections reuse the `client` made in the first example, as a reader would.
            code = _localize('client = OpenAI(api_key="YOUR_API_KEY",'
                             ' base_url="http://localhost:4000/v1")\n', demo_stack) + code
        if "OpenAI(" in code and "import OpenAI" not in code:
            code = "from openai import OpenAI\n" + code  # the import of the first example
        script = tmp_path / "example.py"
        script.write_text(code)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=300, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return
    if kind == "javascript":
        node = request.getfixturevalue("node_dir")
        script = node / f"example{index}.mjs"
        script.write_text(code)
        proc = subprocess.run(["node", str(script)], capture_output=True, text=True,
                              timeout=300, cwd=node)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.strip(), "the example printed no answer"
        return
    pytest.fail(f"unhandled example language {lang!r}")


def test_go_and_rust_requests(demo_stack: Stack) -> None:
    """The Go and Rust examples send these requests; replay them as their clients would."""
    go_body = {"model": "deepseek-coder", "messages": [
        {"role": "user", "content": "Write a Go function to reverse a string"}]}
    rust_body = {"model": "deepseek-coder", "temperature": 0.7, "max_tokens": 500, "messages": [
        {"role": "user", "content": "Write a Rust function to sort a vector"}]}
    for body in (go_body, rust_body):
        resp = requests.post(f"{demo_stack.base_url}/chat/completions", json=body, timeout=120,
                             headers={"Authorization": f"Bearer {demo_stack.key}"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"]
