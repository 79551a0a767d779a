"""Per-IP rate and concurrency limits from stack.yaml, and behaviour when a backend dies."""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.helpers import Stack, make_stack, wait_for

pytestmark = pytest.mark.integration

RATE, BURST, CONCURRENT = 5, 8, 3


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, docker_client: object) -> Iterator[Stack]:
    stack = make_stack(tmp_path_factory.mktemp("limits") / "p", prefix="t-lim", embed=False)
    data = stack.spec()
    data["rate_limit"] = {"requests_per_second": RATE, "burst": BURST,
                          "max_concurrent": CONCURRENT}
    data["timeouts"] = {"connect": 5, "read": 20}
    stack.write_spec(data)
    stack.cli("up", check=True)
    yield stack
    stack.cli("down", "--volumes")


def _refilled(stack: Stack) -> None:
    """Let this client's leaky bucket drain completely before a test measures it.

    The limiter is defined in time (BURST requests drain at RATE per second), so this waits
    the drain time the configuration implies (the tests then assert on what they see).
    """
    del stack
    time.sleep(BURST / RATE + 0.3)


def test_burst_beyond_the_limit_gets_exactly_the_expected_429s(limited: Stack) -> None:
    _refilled(limited)
    n = 30
    auth = {"Authorization": f"Bearer {limited.key}"}
    # Back to back on one connection: concurrency stays 1, so only the rate limit decides.
    session = requests.Session()
    started = time.monotonic()
    responses = [session.get(limited.base_url + "/models", headers=auth, timeout=30)
                 for _ in range(n)]
    elapsed = time.monotonic() - started
    ok = [r for r in responses if r.status_code == 200]
    limited_out = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(limited_out) == n
    # nodelay burst: 1 + BURST at once, plus what the rate refills while the burst arrives.
    expected_min = BURST + 1
    expected_max = BURST + 1 + math.ceil(elapsed * RATE)
    assert expected_min <= len(ok) <= expected_max, (len(ok), elapsed)
    body = limited_out[0].json()
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert limited_out[0].headers["retry-after"] == "1"


def test_concurrency_cap_holds(limited: Stack) -> None:
    _refilled(limited)
    auth = {"Authorization": f"Bearer {limited.key}"}
    n = CONCURRENT + 3
    barrier = threading.Barrier(n)

    def stream(_: int) -> int:
        barrier.wait()
        with requests.post(limited.base_url + "/chat/completions", headers=auth, stream=True,
                           timeout=60, json={"model": "deepseek-coder", "stream": True,
                                             "max_tokens": 200, "temperature": 0,
                                             "messages": [{"role": "user",
                                                           "content": "Tell a long story."}]}) as r:
            for _ in r.iter_lines():
                pass
            return r.status_code

    with ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(stream, range(n)))
    assert codes.count(200) <= CONCURRENT, codes
    assert codes.count(429) >= n - CONCURRENT, codes


def test_limits_are_per_client_ip(limited: Stack, docker_client: object) -> None:
    """A second client (a container on the project network, its own IP) keeps getting 200
    while this host's IP is being refused."""
    _refilled(limited)
    auth = {"Authorization": f"Bearer {limited.key}"}
    for _ in range(BURST + RATE + 5):
        requests.get(limited.base_url + "/models", headers=auth, timeout=10)
    assert requests.get(limited.base_url + "/models", headers=auth,
                        timeout=10).status_code == 429
    nginx = f"http://{limited.project}-nginx:8080/v1/models"
    code = ("import urllib.request as u,sys;"
            f"r=u.Request('{nginx}',headers={{'Authorization':'Bearer {limited.key}'}});"
            "print(u.urlopen(r,timeout=10).status)")
    proc = subprocess.run(["docker", "exec", f"{limited.project}-health", "python3", "-c",
                           code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "200", proc.stderr


def test_dead_backend_shows_in_health_and_fails_fast(limited: Stack) -> None:
    _refilled(limited)
    model = f"{limited.project}-model-deepseek-coder"
    subprocess.run(["docker", "stop", "-t", "1", model], check=True, capture_output=True)
    try:
        health = limited.base_url.replace("/v1", "/health")
        key = {"Authorization": f"Bearer {limited.key}"}

        def unhealthy() -> dict | None:
            r = requests.get(health, timeout=10, headers=key)
            return r.json() if r.status_code == 503 else None

        body = wait_for(unhealthy, timeout=20, what="/health 503")
        assert body["not_ready"] == ["model:deepseek-coder"]
        anonymous = requests.get(health, timeout=10)  # no key: no names, no details
        assert (anonymous.status_code, anonymous.json()) == (503, {"status": "degraded"})
        started = time.monotonic()
        resp = requests.post(limited.base_url + "/chat/completions", timeout=60,
                             headers={"Authorization": f"Bearer {limited.key}"},
                             json={"model": "deepseek-coder", "max_tokens": 4,
                                   "messages": [{"role": "user", "content": "hi"}]})
        assert time.monotonic() - started < 20 + 5  # the configured read timeout, not a hang
        # LiteLLM's own answer, passed through by the edge: a 500 naming the model group; or,
        # when LiteLLM's connection attempts outlast timeouts.read, the edge's own 504.
        error = resp.json()["error"]
        if resp.status_code == 500:
            assert error["type"] == "internal_server_error", error
            assert "deepseek-coder" in error["message"], error
        else:
            assert (resp.status_code, error["code"]) == (504, "upstream_timeout"), error
        status = json.loads(limited.cli("status", "--json").stdout)
        state = {s["service"]: s for s in status["services"]}
        assert state["model-deepseek-coder"]["state"] == "exited"
    finally:
        limited.cli("up", check=True)
    assert requests.get(limited.base_url.replace("/v1", "/health"), timeout=10).status_code == 200

