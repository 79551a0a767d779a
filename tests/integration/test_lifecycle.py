"""`up` / `plan` / `status` / `logs` / `down` on the real engine, as a user runs them.

One stack (chat + embedding model) is shared by the module and changed step by step, so the
tests below run in file order: up, idempotence, a one-model change, a killed container, a
removed model, down. Preflight refusals use their own never-started project (`fresh_stack`).
Ports: free high ports on 127.0.0.1; container ids come from the Docker SDK.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from llmstack import images as catalog
from llmstack import names
from tests.helpers import Stack, make_stack, name_image, wait_for

pytestmark = pytest.mark.integration

CHAT = names.model_service("deepseek-coder")
EMBED = names.model_service("smollm2-embed")
ALL = [names.HEALTH, CHAT, EMBED, names.LITELLM, names.EDGE_METRICS, names.NGINX]
OWN_TAG = "llmstack-test/lifecycle-nginx"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, docker_client: Any) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("lifecycle") / "proj", prefix="t-life", embed=True)
    # nginx runs from a tag of this module's own (the stack's nginx image, tagged again), so
    # a test can rebuild that tag without touching the shared images.
    data = s.spec()
    entry = catalog.SERVICE_IMAGES[names.NGINX]
    source = entry.local or entry.registry
    own = f"{OWN_TAG}:{s.project}"
    docker_client.images.get(source).tag(own)
    name_image(data, names.NGINX, own)
    s.write_spec(data)
    yield s
    s.cli("down", "--volumes")
    with contextlib.suppress(Exception):
        docker_client.images.remove(own)


def containers(client: Any, project: str) -> dict[str, Any]:
    found = client.containers.list(all=True,
                                   filters={"label": f"{names.LABEL_PROJECT}={project}"})
    return {c.labels[names.LABEL_SERVICE]: c for c in found}


def ids(client: Any, project: str) -> dict[str, str]:
    return {service: c.id for service, c in containers(client, project).items()}


def networks(client: Any, project: str) -> list[str]:
    return [n.name for n in client.networks.list(names=[names.network(project)])]


def plan_actions(stack: Stack) -> dict[str, str]:
    proc = stack.cli("plan", "--json")
    assert proc.returncode == 0, proc.stderr
    return {a["service"]: a["action"] for a in json.loads(proc.stdout)["actions"]}


def up(stack: Stack) -> str:
    proc = stack.cli("up")
    assert proc.returncode == 0, f"up failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def models_via_nginx(stack: Stack) -> list[str]:
    try:
        reply = requests.get(f"{stack.base_url}/models", timeout=30,
                             headers={"Authorization": f"Bearer {stack.key}"})
        assert reply.status_code == 200, reply.text
    except (AssertionError, requests.RequestException) as exc:
        logs = {s: stack.cli("logs", s, "--tail", "15").stdout for s in (names.NGINX,
                                                                          names.LITELLM)}
        raise AssertionError(f"GET /v1/models via nginx failed: {exc}\n{logs}") from exc
    return sorted(m["id"] for m in reply.json()["data"])


# --- up and idempotence -------------------------------------------------------------------------


def test_up_starts_every_service_and_status_shows_them_healthy(stack: Stack,
                                                              docker_client: Any) -> None:
    out = up(stack)
    assert f"Stack {stack.project} is up" in out
    assert f"local  http://127.0.0.1:{stack.local_port}/v1" in out
    running = containers(docker_client, stack.project)
    assert sorted(running) == sorted(ALL)
    for service, c in running.items():
        assert c.status == "running", service
        assert c.labels[names.LABEL_PROJECT] == stack.project
        assert re.fullmatch(r"[0-9a-f]{16}", c.labels[names.LABEL_HASH])
        published = {p: b for p, b in c.attrs["NetworkSettings"]["Ports"].items() if b}
        if service == names.NGINX:  # only nginx publishes ports, on the loopback only
            hosts = sorted((b["HostIp"], int(b["HostPort"])) for bs in published.values()
                           for b in bs)
            assert hosts == sorted(("127.0.0.1", p) for p in (stack.local_port,
                                                               stack.lan_port, stack.https_port))
        else:
            assert published == {}, service

    proc = stack.cli("status", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["healthy"] is True
    assert {s["service"]: (s["state"], s["healthy"]) for s in report["services"]} == {
        service: ("running", True) for service in ALL}
    nginx = next(s for s in report["services"] if s["service"] == names.NGINX)
    assert f"127.0.0.1:{stack.local_port}->{names.NGINX_PORTS['local']}/tcp" in nginx["ports"]
    assert requests.get(stack.base_url.replace("/v1", "/health"), timeout=30).status_code == 200


def test_second_up_touches_nothing(stack: Stack, docker_client: Any) -> None:
    before = ids(docker_client, stack.project)
    started = time.monotonic()
    proc = stack.cli("up")
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Nothing to do: {len(ALL)} services up to date")
    assert ids(docker_client, stack.project) == before
    reported = float(re.search(r"up to date \(([\d.]+)s\)", proc.stdout).group(1))  # type: ignore[union-attr]
    assert reported < 3.0, f"a no-op up took {reported}s (wall {elapsed:.1f}s)"
    # The fast path answered (quickup.py): one container list, no stack loaded.
    assert up_json(stack) == {"changed": False, "fast": True, "changed_services": []}


def up_json(stack: Stack) -> dict[str, Any]:
    proc = stack.cli("up", "--json")
    assert proc.returncode == 0, f"up failed:\n{proc.stdout}\n{proc.stderr}"
    data = json.loads(proc.stdout)
    return {"changed": data["changed"], "fast": data["fast"],
            "changed_services": sorted(a["service"] for a in data["actions"]
                                       if a["action"] != "keep")}


def test_a_rebuilt_image_under_the_same_tag_is_not_taken_for_no_change(
        stack: Stack, docker_client: Any) -> None:
    own = f"{OWN_TAG}:{stack.project}"
    base = docker_client.images.get(own)
    dockerfile = f"FROM {base.id}\nLABEL llmstack-test.rebuilt={stack.project}\n".encode()
    rebuilt, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=own, rm=True)
    assert rebuilt.id != base.id
    before = ids(docker_client, stack.project)
    assert up_json(stack) == {"changed": True, "fast": False, "changed_services": [names.NGINX]}
    after = ids(docker_client, stack.project)
    assert {s for s in ALL if before[s] != after[s]} == {names.NGINX}
    assert containers(docker_client, stack.project)[names.NGINX].image.id == rebuilt.id
    assert up_json(stack) == {"changed": False, "fast": True, "changed_services": []}


def test_plan_json_lists_every_service_and_why(stack: Stack) -> None:
    proc = stack.cli("plan", "--json")
    assert proc.returncode == 0, proc.stderr
    actions = json.loads(proc.stdout)["actions"]
    assert [(a["service"], a["action"], a["reason"]) for a in actions] == [
        (service, "keep", "up to date") for service in ALL]
    text = stack.cli("plan")
    assert re.search(rf"^keep\s+{CHAT}\s+up to date$", text.stdout, re.M)
    assert stack.key not in proc.stdout + text.stdout


def test_changing_one_models_args_replaces_that_model_and_litellm_only(
        stack: Stack, docker_client: Any) -> None:
    data = stack.spec()
    chat = next(m for m in data["models"] if m["name"] == "deepseek-coder")
    chat["args"] = ["--threads", "1"]
    stack.write_spec(data)
    # Start-first: a fresh LiteLLM drops its pooled connections to the old model container,
    # and nginx reloads to reach it (docs/UPDATES.md).
    assert plan_actions(stack) == {names.HEALTH: "keep", CHAT: "recreate", EMBED: "keep",
                                   names.LITELLM: "recreate", names.EDGE_METRICS: "keep",
                                   names.NGINX: "reload"}
    before = ids(docker_client, stack.project)
    up(stack)
    after = ids(docker_client, stack.project)
    assert {s for s in ALL if before[s] != after[s]} == {CHAT, names.LITELLM}
    left = docker_client.containers.list(  # no _old/_next container is left
        all=True, filters={"label": f"{names.LABEL_PROJECT}={stack.project}"})
    assert sorted(c.name for c in left) == sorted(names.container(stack.project, s)
                                                  for s in ALL)
    cmd = containers(docker_client, stack.project)[CHAT].attrs["Config"]["Cmd"]
    assert cmd[-2:] == ["--threads", "1"]
    assert plan_actions(stack) == dict.fromkeys(ALL, "keep")
    assert up_json(stack)["fast"] is True


def test_logs_nginx_tail(stack: Stack) -> None:
    for _ in range(3):
        requests.get(stack.base_url.replace("/v1", "/health"), timeout=30)
    proc = stack.cli("logs", "nginx", "--tail", "5")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert 1 <= len(lines) <= 5
    assert any('"GET /health HTTP/1.1" 200' in line for line in lines), lines


# --- a killed container -------------------------------------------------------------------------


def test_killed_model_container_shows_in_status_and_next_up_repairs_only_it(
        stack: Stack, docker_client: Any) -> None:
    before = ids(docker_client, stack.project)
    containers(docker_client, stack.project)[CHAT].kill()

    def exited() -> bool:
        c = containers(docker_client, stack.project)[CHAT]
        return c.status == "exited"

    wait_for(exited, 30, what="the killed container to be reported exited")
    proc = stack.cli("status", "--json")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["healthy"] is False
    chat = next(s for s in report["services"] if s["service"] == CHAT)
    assert chat["state"] == "exited" and chat["healthy"] is not True
    text = stack.cli("status")
    assert text.returncode == 2
    assert re.search(rf"^{CHAT}\s+exited\b", text.stdout, re.M)

    assert plan_actions(stack)[CHAT] == "recreate"
    assert up_json(stack) == {"changed": True, "fast": False, "changed_services": [CHAT]}
    after = ids(docker_client, stack.project)
    assert {s for s in ALL if before[s] != after[s]} == {CHAT}
    assert stack.cli("status").returncode == 0


# --- a removed model ----------------------------------------------------------------------------


def test_removing_the_embedding_model_removes_its_container(stack: Stack,
                                                            docker_client: Any) -> None:
    assert "smollm2-embed" in models_via_nginx(stack)
    data = stack.spec()
    data["models"] = [m for m in data["models"] if m.get("task") != "embedding"]
    stack.write_spec(data)
    planned = plan_actions(stack)
    assert planned[EMBED] == "remove"
    assert planned[CHAT] == "keep"
    before = ids(docker_client, stack.project)
    up(stack)
    after = ids(docker_client, stack.project)
    assert EMBED not in after
    assert after[CHAT] == before[CHAT] and after[names.NGINX] == before[names.NGINX]
    assert "smollm2-embed" not in models_via_nginx(stack)
    assert {s["service"] for s in stack.status()["services"]} == set(ALL) - {EMBED}


# --- down ---------------------------------------------------------------------------------------


def test_down_leaves_no_container_or_network(stack: Stack, docker_client: Any) -> None:
    assert networks(docker_client, stack.project) == [names.network(stack.project)]
    proc = stack.cli("down", "--volumes")
    assert proc.returncode == 0, proc.stderr
    assert f"Removed {len(ALL) - 1} containers" in proc.stdout  # the embedding model went
    assert containers(docker_client, stack.project) == {}
    assert networks(docker_client, stack.project) == []
    assert docker_client.volumes.list(
        filters={"label": f"{names.LABEL_PROJECT}={stack.project}"}) == []
    leftovers = docker_client.containers.list(
        all=True, filters={"label": f"{names.LABEL_PROJECT}.tmp={stack.project}"})
    assert leftovers == []
    # The user's files stay.
    assert (stack.root / ".env").exists() and (stack.root / "certs" / "tls.key").exists()
    # The shared model volume stays.
    assert docker_client.volumes.get("llmstack-models")


# --- preflight: refused before anything starts --------------------------------------------------


def assert_nothing_created(client: Any, project: str) -> None:
    assert containers(client, project) == {}
    assert networks(client, project) == []
    assert client.volumes.list(filters={"label": f"{names.LABEL_PROJECT}={project}"}) == []


def test_port_in_use_is_refused_before_any_container_starts(fresh_stack: Stack,
                                                            docker_client: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", fresh_stack.local_port))
        sock.listen()
        proc = fresh_stack.cli("up")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"port 127.0.0.1:{fresh_stack.local_port} is already in use" in proc.stderr
    assert "free the port or change listeners in stack.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert_nothing_created(docker_client, fresh_stack.project)


@pytest.mark.parametrize(("image", "fix"), [
    ("llmstack/llamacpp:no-such-tag", "`llmstack images build` makes only"),
    ("registry.invalid/llama.cpp:no-such-tag", "pull them with `llmstack images pull`"),
])
def test_missing_image_is_named_with_its_fix(fresh_stack: Stack, docker_client: Any,
                                             image: str, fix: str) -> None:
    data = fresh_stack.spec()
    # `images: local`: no pull before preflight (a registry choice would try to pull it).
    data["images"] = {"source": "local", "llamacpp": image}
    fresh_stack.write_spec(data)
    proc = fresh_stack.cli("up")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"images missing on the engine: {image}" in proc.stderr
    assert fix in proc.stderr
    assert "Traceback" not in proc.stderr
    assert_nothing_created(docker_client, fresh_stack.project)


def test_up_writes_config_for_users_to_read(fresh_stack: Stack) -> None:
    """Even a refused `up` leaves config/ rendered, without secrets, for the user to inspect."""
    data = fresh_stack.spec()
    data["images"] = {"source": "local", "llamacpp": "llmstack/llamacpp:no-such-tag"}
    fresh_stack.write_spec(data)
    fresh_stack.cli("up")
    config = Path(fresh_stack.root / "config")
    assert sorted(p.name for p in config.iterdir()) == ["edge.mtail", "health.json",
                                                       "litellm.yaml", "nginx.conf"]
    for path in config.iterdir():
        assert fresh_stack.key not in path.read_text()
