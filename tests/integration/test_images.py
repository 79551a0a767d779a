"""The locally built images really serve: llama-server answers a chat completion and embeddings
from the demo model volume, and LiteLLM answers its liveliness probe (and proxies to llama).

Needs a Docker engine and root (debootstrap) the first time the images are built; later runs
reuse the images and the cached rootfs tarballs. Ports are published on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import pytest

from llmstack import images as catalog
from llmstack.engine.images import build_images, ensure_demo_model, missing_images

pytestmark = pytest.mark.integration

DEADLINE_S = 120.0
MODEL_PATH = f"{catalog.DEMO_MODEL_MOUNT}/{catalog.DEMO_MODEL_FILE}"
# SmolLM2-135M's hidden size: what --pooling mean returns per input.
EMBEDDING_DIM = 576


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    try:
        c = docker.from_env(timeout=600)
        c.ping()
    except Exception as exc:  # no engine here: nothing in this module can run
        pytest.skip(f"no Docker engine: {exc}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def prepared(client: Any) -> str:
    """All images built and the model in its volume; returns the volume name."""
    build_images(client, progress=lambda m: print(m, flush=True))
    return ensure_demo_model(client, progress=lambda m: print(m, flush=True))


@pytest.fixture(scope="module")
def network(client: Any) -> Iterator[str]:
    """A user-defined network so containers reach each other by name."""
    net = client.networks.create(f"llmstack-test-{uuid.uuid4().hex[:8]}", driver="bridge")
    yield net.name
    for container in client.containers.list(all=True, filters={"network": net.id}):
        container.remove(force=True)
    net.remove()


@pytest.fixture(scope="module")
def run(client: Any, network: str) -> Iterator[Callable[..., Any]]:
    """Create a container on the test network (reachable by its name, ``<network>-<alias>``);
    every one is removed at the end."""
    started: list[Any] = []

    def _run(image: str, command: list[str], *, port: int, alias: str, **kw: Any) -> Any:
        container = client.containers.create(
            image,
            command=command,
            name=f"{network}-{alias}",
            network=network,
            ports={f"{port}/tcp": ("127.0.0.1", None)},
            labels={catalog.MANAGED_LABEL: "true", "llmstack.role": "test"},
            **kw,
        )
        started.append(container)
        return container

    yield _run
    for container in started:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def host_url(container: Any, port: int) -> str:
    container.reload()
    binding = container.ports[f"{port}/tcp"][0]
    assert binding["HostIp"] == "127.0.0.1"
    return f"http://127.0.0.1:{binding['HostPort']}"


def wait_ready(container: Any, url: str, deadline_s: float = DEADLINE_S) -> None:
    """Poll ``url`` until 200; fail early with the logs if the container exits."""
    deadline = time.monotonic() + deadline_s
    last = ""
    while time.monotonic() < deadline:
        container.reload()
        if container.status in ("exited", "dead"):
            logs = container.logs(tail=30).decode(errors="replace")
            pytest.fail(f"{container.name} exited before ready:\n{logs}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = str(exc)
        time.sleep(0.2)  # poll interval, not a wait-and-hope
    logs = container.logs(tail=30).decode(errors="replace")
    pytest.fail(f"{url} not ready within {deadline_s:.0f}s ({last}):\n{logs}")


def post_json(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def test_images_and_model_volume_exist(client: Any, prepared: str) -> None:
    tags = [spec.tag for spec in catalog.CATALOG.values()]
    assert missing_images(client, tags) == []
    for tag in tags:
        labels = client.images.get(tag).labels or {}
        assert labels.get(catalog.MANAGED_LABEL) == "true", tag
    volume = client.volumes.get(prepared)
    assert volume.attrs["Labels"][catalog.MANAGED_LABEL] == "true"
    # A second call finds the verified model and copies nothing.
    messages: list[str] = []
    assert ensure_demo_model(client, progress=messages.append) == prepared
    assert any("present" in m for m in messages), messages
    assert build_images(client, progress=messages.append) == []


def _chat_server(run: Callable, prepared: str, alias: str) -> Any:
    """A started llama-server for chat on the demo model (not yet ready: poll /health)."""
    container = run(
        catalog.LLAMACPP.tag,
        ["--host", "0.0.0.0", "--port", "8000", "-m", MODEL_PATH, "-c", "2048"],
        port=8000,
        alias=alias,
        volumes={prepared: {"bind": catalog.DEMO_MODEL_MOUNT, "mode": "ro"}},
    )
    container.start()
    return container


def test_llama_server_chat_completion(client: Any, prepared: str, run: Callable) -> None:
    container = _chat_server(run, prepared, "llama-chat")
    base = host_url(container, 8000)
    wait_ready(container, f"{base}/health")
    reply = post_json(
        f"{base}/v1/chat/completions",
        {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8},
    )
    content = reply["choices"][0]["message"]["content"]
    assert isinstance(content, str) and content.strip()
    assert reply["usage"]["completion_tokens"] > 0
    # Runs as the image's non-root user.
    assert container.exec_run(["id", "-u"]).output.decode().strip() == str(catalog.IMAGE_UID)


def test_llama_server_embeddings(client: Any, prepared: str, run: Callable) -> None:
    container = run(
        catalog.LLAMACPP.tag,
        [
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "-m",
            MODEL_PATH,
            "--embeddings",
            "--pooling",
            "mean",
        ],
        port=8000,
        alias="llama-embed",
        volumes={prepared: {"bind": catalog.DEMO_MODEL_MOUNT, "mode": "ro"}},
    )
    container.start()
    base = host_url(container, 8000)
    wait_ready(container, f"{base}/health")
    reply = post_json(f"{base}/v1/embeddings", {"input": ["hello world", "bonjour"]})
    vectors = [item["embedding"] for item in reply["data"]]
    assert len(vectors) == 2
    assert all(len(v) == EMBEDDING_DIM for v in vectors)
    assert any(abs(x) > 0 for x in vectors[0])


def test_litellm_liveliness_and_proxy(client: Any, prepared: str, run: Callable) -> None:
    llama = _chat_server(run, prepared, "llama-upstream")
    config = (
        "model_list:\n"
        "  - model_name: smollm\n"
        "    litellm_params:\n"
        "      model: openai/smollm\n"
        f"      api_base: http://{llama.name}:8000/v1\n"
        "      api_key: none\n"
        "general_settings:\n"
        "  master_key: sk-test-master\n"
    )
    litellm = run(
        catalog.LITELLM.tag,
        ["--config", "/etc/llmstack/litellm/config.yaml", "--port", "4000", "--host", "0.0.0.0"],
        port=4000,
        alias="litellm",
    )
    # Ship the config through the engine API (works for remote engines; no host paths).
    litellm.put_archive("/etc/llmstack/litellm", _tar({"config.yaml": config}))
    litellm.start()
    base = host_url(litellm, 4000)
    wait_ready(litellm, f"{base}/health/liveliness")
    wait_ready(llama, f"{host_url(llama, 8000)}/health")
    reply = post_json(
        f"{base}/v1/chat/completions",
        {"model": "smollm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
        headers={"Authorization": "Bearer sk-test-master"},
    )
    assert reply["choices"][0]["message"]["content"].strip()


def _tar(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, time.time()
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
