"""The edge under hostile clients on 127.0.0.1: thousands of half-sent requests and many large
uploads at once. nginx must stay inside its memory limit (never OOM-killed, which would take
the whole API down) and serve a normal client again by itself.

Bounded: a few thousand sockets, each test well under a minute, every socket closed at the end.
"""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

import pytest
import requests

from benchmarks.http_load import read_status
from llmstack.spec import StackSpec, size_bytes
from tests.helpers import Stack, wait_for

pytestmark = pytest.mark.integration

SLOW_CLIENTS = 6000  # nearly 3x the edge's connection slots (about 2,200 at 256m)
UPLOADS = 90  # under the per-IP limit of 100 concurrent requests
UPLOAD_BYTES = 9 * 1024 * 1024 + 512 * 1024  # just under max_body_size (10m)


@pytest.fixture(scope="module")
def edge(shared_stack: Stack) -> Stack:
    """A chat-only stack with the default nginx limits (256m) and a per-IP request rate high
    enough for many uploads at once (the concurrency limit stays at its default, 100): the
    suite's shared stack (tests/integration/conftest.py)."""
    return shared_stack


def _nginx(docker_client: Any, stack: Stack) -> Any:
    return docker_client.containers.get(f"{stack.project}-nginx")


def _memory(container: Any) -> tuple[int, int]:
    """(anonymous + tmpfs memory, limit) of the container's cgroup: what an OOM kill counts.
    Page cache of spooled bodies on disk is reclaimable and left out."""
    stats = container.stats(stream=False)["memory_stats"]
    detail = stats.get("stats", {})
    used = detail.get("total_rss", detail.get("anon", 0)) + \
        detail.get("total_shmem", detail.get("shmem", 0))
    return int(used), int(stats["limit"])


def _state(container: Any) -> tuple[str, bool, int]:
    container.reload()
    state = container.attrs["State"]
    return state["StartedAt"], bool(state["OOMKilled"]), int(container.attrs["RestartCount"])


def _large_header_buffer(stack: Stack) -> int:
    conf = (stack.root / "config" / "nginx.conf").read_text()
    size = re.search(r"large_client_header_buffers \d+ (\w+);", conf)
    assert size, "nginx.conf names its large header buffers"
    return size_bytes(size.group(1))


def _ok(stack: Stack) -> bool:
    try:
        resp = requests.get(f"{stack.base_url}/models", timeout=5,
                            headers={"Authorization": f"Bearer {stack.key}"})
    except requests.RequestException:
        return False
    return resp.status_code == 200


# Runs in a container on the stack's network, talking to nginx directly: on 127.0.0.1 the
# engine's userland proxy (docker-proxy) sits in front and itself stops accepting under this
# load, which would hide what nginx does. Prints one JSON line when every socket is held, then
# polls a normal request until it answers 200 and prints a last JSON line.
ATTACKER = """
import json, os, socket, sys, time, urllib.request
host, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
line = b"X-Pad: " + b"a" * (size - 64) + b"\\r\\n"
partial = b"GET /v1/models HTTP/1.1\\r\\nHost: localhost\\r\\n" + line * 3 + line[:-2]
held, failed = [], 0
for _ in range(count):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        s.sendall(partial)
        held.append(s)
    except OSError:
        failed += 1
        s.close()
print(json.dumps({"held": len(held), "failed": failed}), flush=True)
time.sleep(float(sys.argv[5]))  # the test samples nginx's memory meanwhile
req = urllib.request.Request(f"http://{host}:{port}/v1/models",
                             headers={"Authorization": "Bearer " + os.environ["KEY"]})
started, status = time.monotonic(), 0
while time.monotonic() - started < 40 and status != 200:
    try:
        status = urllib.request.urlopen(req, timeout=5).status
    except Exception:
        time.sleep(0.5)
print(json.dumps({"normal": status, "after_s": round(time.monotonic() - started, 1)}),
      flush=True)
"""


def _attack(docker_client: Any, stack: Stack, hold_s: float) -> Any:
    from docker.types import Ulimit

    return docker_client.containers.run(
        StackSpec.model_validate(stack.spec()).images.for_key("litellm"),
        entrypoint=["python3", "-c", ATTACKER],
        command=[f"{stack.project}-nginx", "8080", str(SLOW_CLIENTS),
                 str(_large_header_buffer(stack)), str(hold_s)],
        environment={"KEY": stack.key}, network=f"{stack.project}-net", detach=True,
        ulimits=[Ulimit(name="nofile", soft=SLOW_CLIENTS + 256, hard=SLOW_CLIENTS + 256)],
        labels={"llmstack.project.tmp": stack.project}, mem_limit="512m")


def _lines(container: Any) -> list[dict[str, Any]]:
    out = container.logs(stdout=True, stderr=False).decode(errors="replace")
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_half_sent_requests_cannot_grow_nginx_past_its_limit(edge: Stack,
                                                             docker_client: Any) -> None:
    """Thousands of connections each send header lines that fill nginx's largest header
    buffers and never end their header: the worst a client can do before any per-IP limit
    counts it. nginx stays inside its memory limit, is not killed, and a normal request is
    answered while the attacker still holds every socket."""
    nginx = _nginx(docker_client, edge)
    before = _state(nginx)
    attacker = _attack(docker_client, edge, hold_s=8)
    peak = limit = 0
    try:
        held = wait_for(lambda: _lines(attacker), timeout=60, interval=0.5,
                        what="the slow clients to hold their sockets")[0]
        for _ in range(3):  # samples while every socket is held
            used, limit = _memory(nginx)
            peak = max(peak, used)
        attacker.wait(timeout=90)
        result = _lines(attacker)[-1]
    finally:
        attacker.remove(force=True)
    print(f"slow clients: {held}, nginx peak {peak >> 20} of {limit >> 20} MiB, normal "
          f"client: {result}")
    assert held["held"] + held["failed"] == SLOW_CLIENTS
    assert peak < 0.9 * limit, f"nginx used {peak >> 20} MiB of {limit >> 20} MiB"
    assert result.get("normal") == 200, result
    started, oom_killed, restarts = _state(nginx)
    assert not oom_killed and (started, restarts) == (before[0], before[2]), \
        "nginx was killed or restarted"
    logs = nginx.logs(since=int(time.time()) - 300).decode(errors="replace")
    assert "worker_connections are not enough" in logs, \
        "the edge ran out of connection slots rather than memory"
    assert _ok(edge)


def _send_all_but_the_end(stack: Stack, body_size: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", stack.local_port), timeout=60)
    head = (f"POST /v1/models HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: Bearer {stack.key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {body_size}\r\nConnection: close\r\n\r\n").encode()
    sock.sendall(head + b"x" * (body_size - 1024))
    return sock


def test_many_large_uploads_are_spooled_to_disk_not_memory(edge: Stack,
                                                           docker_client: Any) -> None:
    """90 authenticated uploads of 9.5 MiB, all held open at once before their last KiB:
    855 MiB of bodies against a 256 MiB container. Every upload reaches LiteLLM (which
    answers 405: POST on GET /v1/models): none fails in nginx, and nginx is not OOM-killed."""
    nginx = _nginx(docker_client, edge)
    before = _state(nginx)
    sockets = [_send_all_but_the_end(edge, UPLOAD_BYTES) for _ in range(UPLOADS)]
    try:
        used, limit = _memory(nginx)
        assert _ok(edge), "a normal client is served while the uploads are held"
        for sock in sockets:
            sock.sendall(b"x" * 1024)
        statuses = [read_status(sock) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    print(f"uploads: {UPLOADS} x {UPLOAD_BYTES >> 10} KiB held, nginx {used >> 20} of "
          f"{limit >> 20} MiB, statuses {sorted(set(statuses))}")
    assert used < 0.9 * limit, f"nginx used {used >> 20} MiB of {limit >> 20} MiB"
    assert statuses == [405] * UPLOADS, sorted(set(statuses))
    started, oom_killed, restarts = _state(nginx)
    assert not oom_killed and (started, restarts) == (before[0], before[2])
    assert _ok(edge)
