"""The API contract through nginx on all three listeners, with real clients."""

from __future__ import annotations

import asyncio
import ssl
import time

import httpx
import openai
import pytest
import requests
from openai import AsyncOpenAI, OpenAI

from tests.helpers import Stack

pytestmark = pytest.mark.integration


def _urls(stack: Stack) -> list[tuple[str, bool | str]]:
    """(base_url, verify) for the local, LAN and HTTPS listeners; verify is what `requests`
    takes (the CA file for HTTPS)."""
    return [(stack.base_url, True), (stack.lan_url, True), (stack.https_url, str(stack.ca))]


def _tls(verify: bool | str) -> bool | ssl.SSLContext:
    """The same trust for httpx, which wants an SSLContext rather than a CA path."""
    return ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify


def test_health_needs_no_key_and_shows_details_only_with_one(demo_stack: Stack) -> None:
    for base, verify in _urls(demo_stack):
        url = base.replace("/v1", "/health")
        resp = requests.get(url, verify=verify, timeout=10)
        assert resp.status_code == 200, base
        assert resp.json() == {"status": "ok"}, "no key: the status alone, no service names"
        for wrong in ("Bearer sk-wrong", "Basic dXNlcjpwYXNz"):
            resp = requests.get(url, verify=verify, timeout=10, headers={"Authorization": wrong})
            assert resp.json() == {"status": "ok"}, wrong
        body = requests.get(url, verify=verify, timeout=10,
                            headers={"Authorization": f"Bearer {demo_stack.key}"}).json()
        assert body["status"] == "ok" and body["not_ready"] == []
        assert set(body["services"]) >= {"litellm", "model:deepseek-coder"}


def test_every_listener_serves_models_chat_and_embeddings(demo_stack: Stack) -> None:
    for base, verify in _urls(demo_stack):
        client = OpenAI(api_key=demo_stack.key, base_url=base,
                        http_client=httpx.Client(verify=_tls(verify)))
        assert "deepseek-coder" in {m.id for m in client.models.list().data}
        chat = client.chat.completions.create(
            model="qwen-coder", messages=[{"role": "user", "content": "Hi"}], max_tokens=8)
        assert chat.choices[0].message.content


def test_https_uses_the_generated_certificate_and_hsts(demo_stack: Stack) -> None:
    ctx = ssl.create_default_context(cafile=str(demo_stack.ca))
    resp = httpx.get(demo_stack.https_url.replace("/v1", "/health"), verify=ctx, timeout=10)
    assert resp.status_code == 200
    assert resp.headers["strict-transport-security"].startswith("max-age=63072000")
    with pytest.raises(httpx.ConnectError):  # a client that does not trust our CA refuses
        httpx.get(demo_stack.https_url.replace("/v1", "/health"), timeout=10)


@pytest.mark.parametrize("header", [None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer sk-wrong",
                                    "Bearer  ", "sk-nobearer"])
def test_bad_or_missing_key_is_401_json(demo_stack: Stack, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for path in ("/models", "/chat/completions", "/embeddings"):
        resp = requests.post(demo_stack.base_url + path, headers=headers, timeout=10,
                             json={"model": "deepseek-coder", "input": "x",
                                   "messages": [{"role": "user", "content": "x"}]}) \
            if path != "/models" else requests.get(demo_stack.base_url + path, headers=headers,
                                                   timeout=10)
        assert resp.status_code == 401, (path, header, resp.text)
        assert resp.headers["content-type"].startswith("application/json")
        assert resp.json()["error"]["code"] == "invalid_api_key"


def test_openai_client_raises_authentication_error_for_wrong_key(demo_stack: Stack) -> None:
    client = OpenAI(api_key="sk-" + "x" * 43, base_url=demo_stack.base_url, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_streaming_arrives_chunk_by_chunk(demo_stack: Stack) -> None:
    client = OpenAI(api_key=demo_stack.key, base_url=demo_stack.base_url)
    started = time.monotonic()
    stamps: list[float] = []
    text = ""
    stream = client.chat.completions.create(
        model="deepseek-coder", stream=True, max_tokens=120, temperature=0,
        messages=[{"role": "user", "content": "Count from one to fifty in words."}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.monotonic() - started)
            text += chunk.choices[0].delta.content
    assert len(stamps) >= 20 and text
    # Unbuffered: the first token comes long before the last (a buffering proxy would hand
    # them all over at the end).
    assert stamps[0] < stamps[-1] / 3, (stamps[0], stamps[-1])


def test_completions_and_embeddings(demo_stack: Stack) -> None:
    client = OpenAI(api_key=demo_stack.key, base_url=demo_stack.base_url)
    done = client.completions.create(model="deepseek-coder", prompt="def fibonacci(n):",
                                     max_tokens=16)
    assert done.choices[0].text
    emb = client.embeddings.create(model="smollm2-embed", input=["hello", "world"])
    assert len(emb.data) == 2
    assert all(len(d.embedding) == 576 for d in emb.data)  # SmolLM2-135M hidden size
    assert emb.data[0].embedding != emb.data[1].embedding


def test_async_batch(demo_stack: Stack) -> None:
    async def batch() -> list[str]:
        client = AsyncOpenAI(api_key=demo_stack.key, base_url=demo_stack.base_url)
        replies = await asyncio.gather(*[
            client.chat.completions.create(
                model=m, max_tokens=8, messages=[{"role": "user", "content": p}])
            for m, p in [("deepseek-coder", "sort"), ("qwen-coder", "filter"),
                         ("mistral", "map")]])
        return [r.choices[0].message.content or "" for r in replies]

    assert all(asyncio.run(batch()))


def test_unknown_model_and_oversized_body_are_clear_json_errors(demo_stack: Stack) -> None:
    auth = {"Authorization": f"Bearer {demo_stack.key}"}
    resp = requests.post(demo_stack.base_url + "/chat/completions", headers=auth, timeout=30,
                         json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code in (400, 404)
    assert "gpt-9" in resp.json()["error"]["message"]
    big = b'{"model":"deepseek-coder","messages":[{"role":"user","content":"' + \
        b"a" * (11 * 1024 * 1024) + b'"}]}'
    resp = requests.post(demo_stack.base_url + "/chat/completions", data=big, timeout=30,
                         headers={**auth, "Content-Type": "application/json"})
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"


def test_request_id_is_passed_through_and_logged(demo_stack: Stack) -> None:
    rid = f"test-{time.time_ns()}"
    resp = requests.get(demo_stack.base_url + "/models", timeout=10,
                        headers={"Authorization": f"Bearer {demo_stack.key}",
                                 "X-Request-ID": rid})
    assert resp.headers["x-request-id"] == rid
    generated = requests.get(demo_stack.base_url + "/models", timeout=10,
                             headers={"Authorization": f"Bearer {demo_stack.key}"})
    assert len(generated.headers["x-request-id"]) >= 16  # one is made when none is sent
    from tests.helpers import wait_for
    wait_for(lambda: f"rid={rid}" in demo_stack.cli("logs", "nginx", "--tail", "50").stdout,
             timeout=10, what="request id in nginx log")


def test_unknown_path_is_json_404(demo_stack: Stack) -> None:
    resp = requests.get(demo_stack.base_url.replace("/v1", "/admin"), timeout=10)
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_https_errors_carry_hsts_too(demo_stack: Stack) -> None:
    """A browser that only ever saw an error from the HTTPS listener must still pin HTTPS."""
    base = demo_stack.https_url
    auth = {"Authorization": f"Bearer {demo_stack.key}"}
    with httpx.Client(verify=_tls(str(demo_stack.ca)), timeout=30) as client:
        answers = {
            401: client.get(f"{base}/models"),
            404: client.get(base.replace("/v1", "/nowhere"), headers=auth),
            413: client.post(f"{base}/chat/completions", headers=auth,
                             content=b"x" * (11 * 1024 * 1024)),
            200: client.get(f"{base}/models", headers=auth),
        }
    for code, resp in answers.items():
        assert resp.status_code == code, (code, resp.text)
        assert resp.headers.get("strict-transport-security", "").startswith(
            "max-age=63072000"), code
    plain = requests.get(f"{demo_stack.base_url}/models", timeout=10)
    assert "strict-transport-security" not in plain.headers  # never on plain HTTP


def test_v1_redirect_never_reflects_the_host_header(demo_stack: Stack) -> None:
    resp = requests.get(demo_stack.base_url, allow_redirects=False, timeout=10,
                        headers={"Host": "evil.example.com"})
    assert resp.status_code == 301
    assert resp.headers["location"] == "/v1/"


def test_only_the_contract_routes_reach_litellm(demo_stack: Stack) -> None:
    """LiteLLM serves admin, MCP and agent routes under /v1/ too, and nginx hands it the
    master key: the edge answers those itself, 404 with a key and 401 without."""
    auth = {"Authorization": f"Bearer {demo_stack.key}"}
    for method, path in [("GET", "/mcp/server"), ("POST", "/a2a/discover"),
                         ("GET", "/agents"), ("POST", "/responses"), ("GET", "/models/x/y")]:
        resp = requests.request(method, demo_stack.base_url + path, headers=auth, json={},
                                timeout=10)
        assert resp.status_code == 404, (path, resp.text)
        assert resp.json()["error"]["code"] == "not_found", path
        assert requests.request(method, demo_stack.base_url + path, json={},
                                timeout=10).status_code == 401, path
    listed = requests.get(demo_stack.base_url + "/models/deepseek-coder", headers=auth,
                          timeout=10)
    assert listed.status_code == 200 and listed.json()["id"] == "deepseek-coder"
