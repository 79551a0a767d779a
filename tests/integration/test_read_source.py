"""Reading a model's config.json and GGUF header on the real engine (`doctor`/`plan` do it
to size the KV cache): from a named volume, through `head | base64` in a present image."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llmstack import modelarch
from llmstack.engine.containers import Project
from tests.helpers import unique_project

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).parents[1] / "unit" / "fixtures" / "models" / \
    "Qwen2.5-Coder-7B-Instruct.config.json"
IMAGE = "llmstack/llamacpp:forky"
# Every byte value, more than the 1 MiB read: binary must come back intact and cut.
BLOB = bytes(range(256)) * 6000


@pytest.fixture
def volume(docker_client: Any) -> Iterator[str]:
    """A volume holding qwen/config.json and model.gguf, filled through a stopped container."""
    if not docker_client.images.list(name=IMAGE):
        pytest.skip(f"{IMAGE} is not on the engine (llmstack images build)")
    name = unique_project("t-src")
    docker_client.volumes.create(name, labels={"llmstack.test": "read-source"})
    filler = docker_client.containers.create(IMAGE, command=["true"], entrypoint=[],
                                             volumes={name: {"bind": "/v", "mode": "rw"}})
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for path, data in (("qwen/config.json", FIXTURE.read_bytes()), ("model.gguf", BLOB)):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    try:
        filler.put_archive("/v", archive.getvalue())
    finally:
        filler.remove(force=True)
    yield name
    docker_client.volumes.get(name).remove(force=True)


def test_read_source_returns_the_files_first_bytes(docker_client: Any, volume: str) -> None:
    project = Project(docker_client, unique_project("t-src"))
    data = project.read_source(IMAGE, "volume", volume, "qwen/config.json", 1024 * 1024)
    assert data == FIXTURE.read_bytes()
    arch = modelarch.from_config(data)
    assert (arch.layers, arch.kv_heads, arch.head_dim) == (28, 4, 128)
    head = project.read_source(IMAGE, "volume", volume, "model.gguf", modelarch.GGUF_HEAD_BYTES)
    assert head == BLOB[:modelarch.GGUF_HEAD_BYTES]
    assert project.read_source(IMAGE, "volume", volume, "missing.gguf", 100) is None
    assert project.read_source(IMAGE, "volume", volume + "-none", "x", 100) is None
    leftover = docker_client.containers.list(
        all=True, filters={"label": f"llmstack.project.tmp={project.project}"})
    assert leftover == []
