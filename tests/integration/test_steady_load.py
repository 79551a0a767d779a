"""Steady load with nothing changing: every request gets its complete answer; idle gaps around
each server's keep-alive timeout never fail a request; LiteLLM's errors reach the client as
LiteLLM wrote them, and the edge's own JSON only says what the edge decided.

The keep-alive timeouts are measured on the live containers (how long each server keeps an
idle connection open), not read from our own code, and compared with its client's setting.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
import uuid
from typing import Any

import pytest
import requests

from benchmarks import steady
from llmstack import names
from llmstack.backends import BACKENDS
from tests.helpers import Stack, wait_for

pytestmark = pytest.mark.integration

CHAT, EMBED = "deepseek-coder", "smollm2-embed"
LOAD_S = 75  # the steady load's length
LOAD_RATE = 6.0  # requests/s over both clients: under the starter's 10 r/s per IP
# LiteLLM keeps idle connections much longer than the load lasts: measure up to this.
IDLE_LIMIT_S = 150.0


@pytest.fixture(scope="module")
def stack(demo_stack: Stack) -> Stack:
    """The starter stack (chat + embeddings, the starter's per-IP limits): the suite's demo
    stack (tests/conftest.py). Nothing here changes it; the one test that stops LiteLLM
    brings it back with `up` before it ends."""
    return demo_stack


def _ip(docker: Any, stack: Stack, service: str) -> str:
    c = docker.containers.get(names.container(stack.project, service))
    return str(c.attrs["NetworkSettings"]["Networks"][names.network(stack.project)]["IPAddress"])


def idle_close_after(host: str, port: int, path: str, limit: float) -> float | None:
    """Seconds a server keeps an idle keep-alive connection open after answering `GET path`
    on it (None: still open after `limit`)."""
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk, "closed before answering"
            head += chunk
        assert b" 200 " in head.split(b"\r\n", 1)[0], head[:200]
        answered = time.monotonic()
        sock.settimeout(limit)
        try:
            while sock.recv(65536):
                pass  # the rest of the body
        except TimeoutError:
            return None
        return time.monotonic() - answered


def _nginx_upstream_idle(docker: Any, stack: Stack) -> int:
    """nginx's keepalive_timeout towards LiteLLM, from the config the container runs."""
    c = docker.containers.get(names.container(stack.project, names.NGINX))
    code, out = c.exec_run(["cat", f"{names.config_dir(names.NGINX)}/nginx.conf"])
    assert code == 0
    conf = out.decode()
    upstream = conf[conf.index("upstream litellm"):]
    upstream = upstream[:upstream.index("}")]
    line = next(x for x in upstream.splitlines() if x.strip().startswith("keepalive_timeout"))
    return int(line.split()[1].rstrip("s;"))


def _litellm_env(docker: Any, stack: Stack, name: str) -> str:
    c = docker.containers.get(names.container(stack.project, names.LITELLM))
    env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"])
    return str(env[name])


def test_a_steady_load_gets_every_answer_and_litellm_outlasts_nginx_idle(
        stack: Stack, docker_client: Any) -> None:
    """Two clients, half of the requests streamed, under the per-IP limit, for LOAD_S: every
    one a complete 200. Meanwhile: LiteLLM keeps an idle connection longer than nginx does."""
    litellm_idle: list[float | None] = []
    probe = threading.Thread(target=lambda: litellm_idle.append(idle_close_after(
        _ip(docker_client, stack, names.LITELLM), names.LITELLM_PORT, "/health/liveliness",
        IDLE_LIMIT_S)), daemon=True)
    probe.start()
    mix = [k for k in steady.kinds(CHAT, EMBED, 16)
           if k.name in ("chat", "chat-stream", "completions-stream", "embeddings")]
    assert sum(k.stream for k in mix) * 2 == len(mix)  # half streamed
    records = steady.run("127.0.0.1", stack.local_port, stack.key, mix, clients=2,
                         rate=LOAD_RATE, duration_s=LOAD_S, max_requests=10_000)
    assert len(records) >= LOAD_S // 2, len(records)  # the load really ran
    assert steady.failures(records) == {}, [r for r in records if not r.ok][:10]
    assert {r.status for r in records} == {200}
    assert {r.kind for r in records} == {k.name for k in mix}

    probe.join(IDLE_LIMIT_S + 20)
    nginx_idle = _nginx_upstream_idle(docker_client, stack)
    assert litellm_idle, "the idle probe did not finish"
    closed_after = litellm_idle[0]
    # LiteLLM (the server) closes idle connections later than nginx (its client) drops them.
    assert closed_after is None or closed_after > nginx_idle + 1, (closed_after, nginx_idle)


def test_idle_gaps_around_the_model_servers_keepalive_never_fail(
        stack: Stack, docker_client: Any) -> None:
    """llama-server closes idle connections after its keep-alive; LiteLLM's client gives up on
    them sooner. Requests after idle gaps just below, at and just past both never fail."""
    backend = BACKENDS["llamacpp"]
    server_idle = idle_close_after(_ip(docker_client, stack, names.model_service(CHAT)),
                                   backend.port, backend.health_path, 30)
    assert server_idle is not None
    # The fact llmstack orders LiteLLM's timeout by is the server's real one.
    assert backend.idle_keepalive_s is not None
    assert abs(server_idle - backend.idle_keepalive_s) < 0.5, server_idle
    client_idle = float(_litellm_env(docker_client, stack, "AIOHTTP_KEEPALIVE_TIMEOUT"))
    assert client_idle < server_idle - 1, (client_idle, server_idle)

    session = requests.Session()
    headers = {"Authorization": f"Bearer {stack.key}"}
    body = {"model": CHAT, "max_tokens": 4, "temperature": 0,
            "messages": [{"role": "user", "content": "Say hi."}]}
    assert session.post(stack.base_url + "/chat/completions", json=body, headers=headers,
                        timeout=60).status_code == 200
    gaps = [client_idle - 0.1, client_idle + 0.1, server_idle - 0.1, server_idle,
            server_idle + 0.1, server_idle + 0.3]
    statuses = []
    for gap in gaps:
        # The idle gap is the stimulus under test, not a wait for something to happen.
        time.sleep(gap)
        r = session.post(stack.base_url + "/chat/completions", json=body, headers=headers,
                         timeout=60)
        statuses.append((round(gap, 2), r.status_code, r.text[:200] if r.status_code != 200
                         else ""))
    assert all(code == 200 for _, code, _ in statuses), statuses


def _post(stack: Stack, path: str, body: dict[str, Any], key: str | None = None
          ) -> tuple[requests.Response, str]:
    rid = f"t-{uuid.uuid4().hex[:12]}"
    r = requests.post(stack.base_url + path, json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key or stack.key}",
                               "X-Request-ID": rid})
    return r, rid


def _chat(**extra: Any) -> dict[str, Any]:
    return {"model": CHAT, "max_tokens": 4,
            "messages": [{"role": "user", "content": "hi"}], **extra}


def test_a_refused_field_gets_litellms_message_and_a_wrong_key_the_edges(stack: Stack) -> None:
    refused, rid = _post(stack, "/chat/completions", _chat(api_base="http://example.invalid/v1"))
    assert 400 <= refused.status_code < 500
    error = refused.json()["error"]
    assert "api_base is not allowed in request body" in error["message"], error
    assert error.get("code") != "invalid_api_key"
    assert refused.headers["X-Request-ID"] == rid

    wrong, rid = _post(stack, "/chat/completions", _chat(), key="sk-wrong")
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert wrong.headers["X-Request-ID"] == rid


def test_litellms_400_and_404_reach_the_client_as_they_are(stack: Stack) -> None:
    unknown, rid = _post(stack, "/chat/completions", {**_chat(), "model": "no-such-model"})
    assert unknown.status_code == 400
    assert "Invalid model name passed in model=no-such-model" in unknown.json()["error"][
        "message"]
    assert unknown.headers["X-Request-ID"] == rid
    # A 400 of the model server itself (prompt beyond the context), through LiteLLM.
    too_long, _ = _post(stack, "/chat/completions", _chat(
        messages=[{"role": "user", "content": "hello " * 6000}]))
    assert too_long.status_code == 400
    assert "context" in too_long.json()["error"]["message"]
    missing = requests.get(stack.base_url + "/models/no-such-model", timeout=30,
                           headers={"Authorization": f"Bearer {stack.key}"})
    assert missing.status_code == 404
    assert "no-such-model" in missing.text
    assert "Unknown API route" not in missing.text  # LiteLLM's answer, not the edge's


def test_a_model_servers_500_reaches_the_client_with_its_message(stack: Stack) -> None:
    """llama-server answers 500 to an embedding input beyond its batch; LiteLLM wraps it in
    its 500 naming the model group, and the edge passes that on instead of a generic 502."""
    failed, rid = _post(stack, "/embeddings", {"model": EMBED, "input": "hello " * 3000})
    assert failed.status_code == 500, failed.text[:300]
    error = failed.json()["error"]
    assert error["type"] == "internal_server_error", error
    assert "too large to process" in error["message"] and EMBED in error["message"], error
    assert failed.headers["X-Request-ID"] == rid


def test_litellm_down_gets_the_edges_own_json(stack: Stack) -> None:
    """What nginx decides itself (LiteLLM unreachable) keeps the edge's JSON."""
    litellm = names.container(stack.project, names.LITELLM)
    subprocess.run(["docker", "stop", "-t", "1", litellm], check=True, capture_output=True)
    try:
        def edge_answer() -> list[requests.Response]:
            r, _ = _post(stack, "/chat/completions", _chat())
            return [r] if r.status_code in (502, 504) else []  # a Response is falsy on errors

        # 502 when the connection is refused, 504 when nginx's connect times out.
        [down] = wait_for(edge_answer, timeout=60, what="the edge's 502/504")
        assert down.json()["error"]["code"] in ("backend_error", "upstream_timeout")
        assert down.headers["X-Request-ID"]
    finally:
        stack.cli("up", check=True)
    ok, _ = _post(stack, "/chat/completions", _chat())
    assert ok.status_code == 200
