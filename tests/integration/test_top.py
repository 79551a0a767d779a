"""`llmstack top` against a real stack: it counts exactly the requests sent (streams
included, aliases counted for their model; a `route: direct` model's too, which LiteLLM never
sees), nginx's own counts per listener, status and key (an edge 401 included), its decode
speed matches what the responses' own timings say, and a model stopped by hand shows as down
(and `top --once` exits 2). One stack for all of it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmstack import names
from tests.helpers import Stack, free_port, make_stack, wait_for

pytestmark = pytest.mark.integration

MODEL = "deepseek-coder"  # the demo stack's chat model; aliases qwen-coder and mistral
DIRECT = "direct-coder"  # the same weights on `route: direct`: nginx straight to its container


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, docker_client: object) -> Iterator[Stack]:
    stack = make_stack(tmp_path_factory.mktemp("top"), prefix="t-top", embed=False)
    data = stack.spec()
    direct = {k: v for k, v in data["models"][0].items() if k != "aliases"}
    data["models"].append({**direct, "name": DIRECT, "route": "direct"})
    data["observability"] = {"prometheus": True, "prometheus_port": free_port()}
    stack.write_spec(data)
    stack.cli("up", check=True)
    yield stack
    stack.cli("down", "--volumes")


def top(stack: Stack, exit_code: int = 0) -> dict[str, Any]:
    proc = stack.cli("top", "--once", "--json", "--interval", "0.5")
    assert proc.returncode == exit_code, proc.stdout + proc.stderr
    return dict(json.loads(proc.stdout))


def edge_count(data: dict[str, Any], listener: str, status: int, key: str) -> int:
    return sum(e["requests"] for e in data["edge_requests"]
               if (e["listener"], e["status"], e["key"]) == (listener, status, key))


def model_row(data: dict[str, Any], name: str = MODEL) -> dict[str, Any]:
    return dict(next(m for m in data["models"] if m["model"] == name))


def chat(client: httpx.Client, model: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": 12, "temperature": 0,
                            "messages": [{"role": "user", "content": "Count to five."}]}
    if not stream:
        response = client.post("/chat/completions", json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    usage: dict[str, Any] = {}
    with client.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    assert usage, "the stream ended without a usage chunk"
    return {"usage": usage}


def test_top_counts_a_direct_model_and_nginx_own_answers(stack: Stack) -> None:
    # Both sources answer (LiteLLM's first /metrics can miss top's 2 s read on a busy host).
    before = wait_for(lambda: (data := top(stack))["edge"] == data["gateway"] == "up" and data,
                      timeout=30, what="the gateway's and nginx's metrics")
    assert model_row(before, DIRECT)["requests"] == 0
    gateway_before = model_row(before)["requests"]
    refused_before = edge_count(before, "local", 401, "-")
    lan_before = edge_count(before, "lan", 200, "master")

    with httpx.Client(base_url=stack.base_url, timeout=60,
                      headers={"Authorization": f"Bearer {stack.key}"}) as client:
        sent = [chat(client, DIRECT, stream=False), chat(client, DIRECT, stream=False),
                chat(client, DIRECT, stream=True)]
    # nginx's own refusal (a wrong key): LiteLLM never sees it, nginx's counts do.
    refused = httpx.post(f"{stack.base_url}/chat/completions", timeout=10,
                         headers={"Authorization": "Bearer wrong"},
                         json={"model": DIRECT, "messages": []})
    assert refused.status_code == 401
    # One request on the LAN listener, with the master key.
    assert httpx.get(f"{stack.lan_url}/models", timeout=10,
                     headers={"Authorization": f"Bearer {stack.key}"}).status_code == 200

    def counted() -> dict[str, Any] | None:
        data = top(stack)
        done = model_row(data, DIRECT)["requests"] == len(sent) and \
            edge_count(data, "local", 401, "-") == refused_before + 1 and \
            edge_count(data, "lan", 200, "master") == lan_before + 1
        return data if done else None

    after = wait_for(counted, timeout=30, what=f"top to count {len(sent)} direct requests")
    row = model_row(after, DIRECT)
    assert row["requests"] == len(sent)  # exactly: LiteLLM saw none of them
    assert row["errors"] == 0 and row["latency_p50_s"] is not None
    assert row["generated_tokens"] == sum(r["usage"]["completion_tokens"] for r in sent)
    assert model_row(after)["requests"] == gateway_before  # the gateway model: untouched
    assert edge_count(after, "local", 200, "master") >= len(sent)
    # The table shows nginx's counts too.
    table = stack.cli("top", "--once", "--interval", "0.2", check=True).stdout
    assert any(line.split()[:3] == ["lan", "200", "master"] for line in table.splitlines())


def test_the_stacks_prometheus_scrapes_every_target(stack: Stack) -> None:
    """`observability.prometheus`: on 127.0.0.1 only, every part's endpoint up (LiteLLM's
    with the internal key from the 0600 file), labelled with its model."""
    port = stack.spec()["observability"]["prometheus_port"]
    api = f"http://127.0.0.1:{port}/api/v1"

    def all_up() -> list[dict[str, Any]] | None:
        active = httpx.get(f"{api}/targets", timeout=10).json()["data"]["activeTargets"]
        return active if active and all(t["health"] == "up" for t in active) else None

    active = wait_for(all_up, timeout=90, interval=1, what="every Prometheus target up")
    services = {t["labels"]["service"] for t in active}
    assert services == {names.LITELLM, names.EDGE_METRICS, names.model_service(MODEL),
                        names.model_service(DIRECT)}
    assert {t["labels"].get("model") for t in active} >= {MODEL, DIRECT}
    # Its data is real: the direct model's requests counted by nginx, as `top` reads them.
    query = httpx.get(f"{api}/query", timeout=10, params={
        "query": f'sum(llmstack_edge_requests_total{{model="{DIRECT}"}})'}).json()
    assert query["status"] == "success"
    # Published on loopback only.
    proc = stack.cli("status", "--json", check=True)
    prom = next(s for s in json.loads(proc.stdout)["services"]
                if s["service"] == names.PROMETHEUS)
    assert prom["ports"] == [f"127.0.0.1:{port}->{names.PROMETHEUS_PORT}/tcp"]


def test_top_counts_requests_tokens_and_sees_a_stopped_model(
        stack: Stack, docker_client: Any) -> None:
    before = model_row(top(stack))
    assert before["state"] == "up"
    assert before["requests"] == 0 and before["errors"] == 0

    with httpx.Client(base_url=stack.base_url, timeout=60,
                      headers={"Authorization": f"Bearer {stack.key}"}) as client:
        # Plain answers carry llama.cpp's own timings: what the decode speed must match.
        plain = [chat(client, m, stream=False) for m in (MODEL, MODEL, "qwen-coder")]
        predicted = sum(r["timings"]["predicted_n"] for r in plain)
        seconds = sum(r["timings"]["predicted_ms"] for r in plain) / 1000
        first = wait_for(lambda: (row := model_row(top(stack)))["requests"] == 3 and row,
                         timeout=30, what="top to count 3 requests")
        implied = predicted / seconds
        assert first["decode_tokens_per_s"] == pytest.approx(implied, rel=0.10)
        assert first["generated_tokens"] == predicted

        streamed = [chat(client, m, stream=True) for m in (MODEL, "mistral")]
    sent = plain + streamed
    tokens = sum(r["usage"]["completion_tokens"] for r in sent)
    after = wait_for(lambda: (row := model_row(top(stack)))["requests"] == len(sent) and row,
                     timeout=30, what=f"top to count {len(sent)} requests")
    assert after["requests"] == len(sent)  # exactly: streams and aliases count once each
    assert after["errors"] == 0
    assert after["generated_tokens"] == tokens
    assert after["in_flight"] == 0 and after["queued"] == 0
    assert after["latency_p50_s"] is not None and after["first_token_p50_s"] is not None

    # The edge never hands out metrics, not even with the key.
    for path in ("/metrics", "/v1/metrics"):
        edge = httpx.get(f"http://127.0.0.1:{stack.local_port}{path}", timeout=10,
                         headers={"Authorization": f"Bearer {stack.key}"})
        assert edge.status_code == 404 and "litellm_" not in edge.text

    docker_client.containers.get(  # type: ignore[attr-defined]
        names.container(stack.project, names.model_service(MODEL))).stop(timeout=5)
    stopped = top(stack, exit_code=2)  # a model down: exit 2, as `status`
    assert model_row(stopped)["state"] == "down"
    assert stopped["gateway"] == "up"
    # The table view says the same.
    proc = stack.cli("top", "--once", "--interval", "0.2")
    assert proc.returncode == 2
    assert any(line.split()[:2] == [MODEL, "down"] for line in proc.stdout.splitlines())


def test_top_needs_the_stack_file(tmp_path: Path) -> None:
    from tests.helpers import cli

    proc = cli("top", "--once", "--json", cwd=tmp_path)
    assert proc.returncode == 1
    assert "stack.yaml" in proc.stdout + proc.stderr
