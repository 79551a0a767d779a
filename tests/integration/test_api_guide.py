"""Every example of the users' API guide, run as a user would, against a stack llmstack
brought up: only the key (from .env) and the port (the test stack's) are substituted.

Each runs on both routes: the demo stack (every model behind LiteLLM) and one more stack,
the same models with `route: direct` (nginx straight to the model containers), so a user
cannot tell which route a model takes. The direct stack's own edge behaviour (team-key
model lists, alias names, the route in the access log) is checked here too, on that stack."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import REPO, Stack, make_stack, wait_for

pytestmark = pytest.mark.integration

SHARED_GUIDE = REPO.parent / "shared" / "reference" / "API_USAGE.md"
VENDORED_GUIDE = REPO / "tests" / "contract" / "API_USAGE.reference.md"
NODE_OPENAI = "openai@7.57.0"
# Not runnable here: no Go module proxy or crates.io on these machines. Their HTTP requests are
# the chat-completion request that test_go_and_rust_requests replays byte for byte.
NOT_RUNNABLE = {"go", "rust"}
DIRECT_N_PREDICT = 24  # tokens an answer of the direct stack may have at most


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
def direct_stack(tmp_path_factory: pytest.TempPathFactory, docker_client: object
                 ) -> Iterator[Stack]:
    """The demo stack's models, every one on `route: direct`. Answers are capped shorter than
    the demo's (--n-predict, the server's own cap, which a request's max_tokens cannot
    raise): the examples run unchanged, and the second route costs the suite less time."""
    stack = make_stack(tmp_path_factory.mktemp("direct"), prefix="t-direct")
    data = stack.spec()
    for model in data["models"]:
        model["route"] = "direct"
        args = model.get("args", [])
        if "--n-predict" in args:
            args[args.index("--n-predict") + 1] = str(DIRECT_N_PREDICT)
    stack.write_spec(data)
    stack.cli("up", check=True)
    yield stack
    stack.cli("down", "--volumes")


@pytest.fixture(scope="module", params=["gateway", "direct"])
def guide_stack(request: pytest.FixtureRequest) -> Stack:
    stack: Stack = request.getfixturevalue("demo_stack" if request.param == "gateway"
                                           else "direct_stack")
    return stack


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
def test_guide_example_runs_unchanged(index: int, lang: str, code: str, guide_stack: Stack,
                                      request: pytest.FixtureRequest, tmp_path: Path) -> None:
    kind = _kind(lang, code)
    if kind == "skip":
        pytest.skip(f"no {lang} toolchain packages reachable here; covered by "
                    "test_go_and_rust_requests")
    demo_stack = guide_stack
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


def test_go_and_rust_requests(guide_stack: Stack) -> None:
    """The Go and Rust examples send these requests; replay them as their clients would."""
    go_body = {"model": "deepseek-coder", "messages": [
        {"role": "user", "content": "Write a Go function to reverse a string"}]}
    rust_body = {"model": "deepseek-coder", "temperature": 0.7, "max_tokens": 500, "messages": [
        {"role": "user", "content": "Write a Rust function to sort a vector"}]}
    demo_stack = guide_stack
    for body in (go_body, rust_body):
        resp = requests.post(f"{demo_stack.base_url}/chat/completions", json=body, timeout=120,
                             headers={"Authorization": f"Bearer {demo_stack.key}"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"]


# --- the direct route's edge ---------------------------------------------------------------------


def _chat(stack: Stack, key: str, model: str, **extra: object) -> requests.Response:
    return requests.post(f"{stack.base_url}/chat/completions", timeout=120,
                         headers={"Authorization": f"Bearer {key}"},
                         json={"model": model, "max_tokens": 4,
                               "messages": [{"role": "user", "content": "hi"}], **extra})


def _log_line(stack: Stack, request_id: str) -> str:
    def find() -> str:
        logs = stack.cli("logs", "nginx", "--tail", "200").stdout
        return next((line for line in logs.splitlines() if f"rid={request_id}" in line), "")
    line: str = wait_for(find, 30, what=f"nginx log line of request {request_id}")
    return line


def test_direct_route_serves_from_the_model_and_lists_models_as_the_gateway(
        direct_stack: Stack, demo_stack: Stack) -> None:
    def listed(stack: Stack) -> list[str]:
        return [m["id"] for m in requests.get(f"{stack.base_url}/models", timeout=30, headers={
            "Authorization": f"Bearer {stack.key}"}).json()["data"]]
    assert listed(direct_stack) == listed(demo_stack)
    for model in ("deepseek-coder", "mistral"):
        resp = _chat(direct_stack, direct_stack.key, model)
        assert resp.status_code == 200, resp.text
        assert resp.json()["model"] == model  # an alias answers under its own name
        line = _log_line(direct_stack, resp.headers["X-Request-ID"])
        assert " route=llmstack_direct_" in line and " key=master " in line, line
    stream = _chat(direct_stack, direct_stack.key, "qwen-coder", stream=True)
    chunks = [json.loads(line[6:]) for line in stream.text.splitlines()
              if line.startswith("data: {")]
    assert chunks and {c["model"] for c in chunks} == {"qwen-coder"}
    # A model no stack.yaml names: the gateway answers, with its own JSON error.
    unknown = _chat(direct_stack, direct_stack.key, "no-such-model")
    assert unknown.status_code == 400 and "no-such-model" in unknown.json()["error"]["message"]
    assert " route=litellm" in _log_line(direct_stack, unknown.headers["X-Request-ID"])


def test_direct_route_keeps_team_key_model_lists_and_key_checks(direct_stack: Stack) -> None:
    proc = direct_stack.cli("keys", "add", "guide-bot", "--models", "qwen-coder", check=True)
    key = re.search(r"sk-llmstack-[A-Za-z0-9_-]+", proc.stdout + proc.stderr)
    assert key, proc.stdout
    try:
        allowed = _chat(direct_stack, key.group(0), "qwen-coder")
        assert allowed.status_code == 200, allowed.text
        assert " key=guide-bot " in _log_line(direct_stack, allowed.headers["X-Request-ID"])
        for other in ("deepseek-coder", "smollm2-embed"):
            refused = _chat(direct_stack, key.group(0), other)
            assert refused.status_code == 403, refused.text
            assert "may use: qwen-coder" in refused.json()["error"]["message"]
        wrong = _chat(direct_stack, "sk-" + "x" * 43, "deepseek-coder")
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    finally:
        direct_stack.cli("keys", "revoke", "guide-bot")
