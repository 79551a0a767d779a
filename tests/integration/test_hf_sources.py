"""`hf:` sources on the real engine: the real huggingface_hub client, in the fetch container on
the engine's host, downloads the real SmolLM2 GGUF from a local Hugging Face stand-in
(tests/hub_standin.py, speaking the Hub's HTTP API on the project's network); a llama.cpp model
with that source answers a chat through the stack; a second `up` reaches no network; a wrong
token gets the gated error; a corrupted download is refused; a cut connection resumes.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from llmstack import hfcache, images, names
from tests.helpers import REPO, Stack, cli, make_stack, wait_for
from tests.integration.test_remote_ssh import Remote
from tests.integration.test_remote_ssh import remote as ssh_remote  # noqa: F401 (a fixture)

pytestmark = pytest.mark.integration

STANDIN = (REPO / "tests" / "hub_standin.py").read_text()
FILE = images.DEMO_MODEL_FILE
TOKEN = "hf_" + uuid.uuid4().hex  # the stand-in's one accepted token
WRONG = "hf_" + uuid.uuid4().hex


class Hub:
    """The stand-in's container on the project's network, and what it counted."""

    def __init__(self, client: Any, stack: Stack, **faults: Any) -> None:
        self.client, self.stack = client, stack
        self.repo = f"llmstack-test/smol-{uuid.uuid4().hex[:8]}"  # a cache of its own
        self.commit = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        self.name = names.container(stack.project, "hub")
        self.url = f"http://{self.name}:8080"
        config = {"port": 8080, "token": TOKEN, **faults,
                  "repos": {self.repo: {"commit": self.commit, "files": {
                      FILE: f"{images.DEMO_MODEL_MOUNT}/{FILE}"}}}}
        from docker.types import Mount

        network = names.network(stack.project)
        if not client.networks.list(names=[network]):
            client.networks.create(network, driver="bridge",
                                   labels={names.LABEL_PROJECT: stack.project})
        self.container = client.containers.run(
            images.LITELLM.tag, entrypoint=["python3"],
            command=["-c", STANDIN, json.dumps(config)], name=self.name, network=network,
            mounts=[Mount(images.DEMO_MODEL_MOUNT, images.DEMO_MODEL_VOLUME, type="volume",
                          read_only=True)],
            labels={names.LABEL_PROJECT + ".tmp": stack.project}, detach=True)
        wait_for(lambda: b"hub: ready" in self.container.logs(), 60, what="the hub stand-in")

    def stats(self) -> dict[str, int]:
        code, out = self.container.exec_run(
            ["python3", "-c", "import urllib.request as u;"
             "print(u.urlopen('http://127.0.0.1:8080/_stats').read().decode())"])
        assert code == 0, out
        return dict(json.loads(out))

    @property
    def source(self) -> str:
        return f"hf:{self.repo}/{FILE}"

    def remove(self) -> None:
        from docker.errors import NotFound

        with contextlib.suppress(NotFound):
            self.container.remove(force=True)
        # The cache volume is shared by every project on the engine: remove only this repo.
        self.client.containers.run(
            images.BASE_BOOKWORM.tag, entrypoint=["rm"],
            command=["-rf", f"/hf/hub/{hfcache.repo_folder(self.repo)}",
                     f"/hf/hub/.locks/{hfcache.repo_folder(self.repo)}",
                     f"/hf/{hfcache.MARKERS}/{hfcache.repo_folder(self.repo)}"],
            mounts=[_cache_mount()], remove=True)


def _cache_mount() -> Any:
    from docker.types import Mount

    return Mount("/hf", hfcache.VOLUME, type="volume")


def set_env(stack: Stack, **values: str) -> None:
    """Replace HF_* lines of .env (kept 0600)."""
    env = stack.root / ".env"
    lines = [ln for ln in env.read_text().splitlines()
             if not ln.startswith(tuple(f"{k}=" for k in values))]
    env.write_text("\n".join(lines + [f"{k}={v}" for k, v in values.items()]) + "\n")
    env.chmod(0o600)


@pytest.fixture
def stack_and_hub(tmp_path: Path, docker_client: Any) -> Iterator[tuple[Stack, Hub]]:
    stack = make_stack(tmp_path / "proj", prefix="t-hf", embed=False)
    hub = Hub(docker_client, stack)
    data = stack.spec()
    data["models"] = [{"name": "smol", "backend": "llamacpp", "source": hub.source,
                       "context": 2048, "args": ["--threads", "1", "--n-predict", "16"]}]
    stack.write_spec(data)
    set_env(stack, HF_ENDPOINT=hub.url)
    try:
        yield stack, hub
    finally:
        stack.cli("down", "--volumes")
        hub.remove()


def test_hf_gguf_is_fetched_on_the_engine_host_pinned_served_and_not_fetched_again(
        stack_and_hub: tuple[Stack, Hub], docker_client: Any) -> None:
    stack, hub = stack_and_hub

    # A token the Hub refuses: the gated error, naming the repo and the fix; nothing starts.
    set_env(stack, HF_TOKEN=WRONG)
    refused = stack.cli("up")
    assert refused.returncode == 1, refused.stderr
    assert f"{hub.repo} is gated and the Hub refused HF_TOKEN for it (HTTP 403)" in refused.stderr
    assert "HF_TOKEN=hf_..." in refused.stderr and WRONG not in refused.stderr + refused.stdout
    assert {s["state"] for s in stack.status()["services"]} == {"missing"}
    assert hub.stats()["get"] == 0 and not (stack.root / "stack.lock").exists()

    # The right token: fetched in the engine's cache volume, with progress, and pinned.
    set_env(stack, HF_TOKEN=TOKEN)
    started = time.monotonic()
    first = stack.cli("up")
    first_s = time.monotonic() - started
    assert first.returncode == 0, first.stderr
    assert "downloading" in first.stderr and "fetched" in first.stderr
    stats = hub.stats()
    assert stats["bytes"] == images.DEMO_MODEL_SIZE and stats["get"] == 1
    lock = json.loads((stack.root / "stack.lock").read_text())
    entry = lock["sources"][hub.source]
    assert entry["commit"] == hub.commit and entry["revision"] == "main"
    assert entry["files"] == [{"name": FILE, "size": images.DEMO_MODEL_SIZE,
                               "sha256": images.DEMO_MODEL_SHA256}]

    # The model serves those bytes: a real chat through nginx -> LiteLLM -> llama.cpp.
    client = OpenAI(api_key=stack.key, base_url=stack.base_url)
    reply = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "Say hello"}], max_tokens=8)
    assert reply.choices[0].message.content

    # The token reached only the fetch container: not the model's, not config/ or labels.
    model = docker_client.containers.get(names.container(stack.project, "model-smol"))
    env = model.attrs["Config"]["Env"]
    assert "HF_HUB_OFFLINE=1" in env and not any(e.startswith("HF_TOKEN=") for e in env)
    assert any(m["Name"] == hfcache.VOLUME and not m["RW"] for m in model.attrs["Mounts"])
    assert f"/snapshots/{hub.commit}/{FILE}" in " ".join(model.attrs["Config"]["Cmd"])
    everything = json.dumps([c.attrs for c in docker_client.containers.list(
        all=True, filters={"label": f"{names.LABEL_PROJECT}={stack.project}"})])
    assert TOKEN not in everything and TOKEN not in first.stdout + first.stderr
    assert not any(TOKEN in p.read_text() for p in (stack.root / "config").rglob("*")
                   if p.is_file())

    # A second `up`: nothing to do, and not one request to the Hub.
    started = time.monotonic()
    second = stack.cli("up")
    second_s = time.monotonic() - started
    assert second.returncode == 0, second.stderr
    assert "Nothing to do" in second.stdout
    assert hub.stats() == stats
    print(f"\nfirst up {first_s:.1f}s (fetch + start), second up {second_s:.1f}s")


def test_a_corrupted_download_is_refused_and_a_cut_connection_resumes(
        tmp_path: Path, docker_client: Any) -> None:
    stack = make_stack(tmp_path / "proj", prefix="t-hf", embed=False)
    hubs = []
    try:
        bad = Hub(docker_client, stack, corrupt=True)
        hubs.append(bad)
        data = stack.spec()
        data["models"] = [{"name": "smol", "backend": "llamacpp", "source": bad.source,
                           "context": 2048, "args": ["--threads", "1"]}]
        stack.write_spec(data)
        set_env(stack, HF_ENDPOINT=bad.url, HF_TOKEN=TOKEN)
        refused = stack.cli("up")
        assert refused.returncode == 2, refused.stderr
        assert "do not match the Hub's checksum" in refused.stderr
        assert not (stack.root / "stack.lock").exists()
        bad.container.remove(force=True)

        cut = Hub(docker_client, stack, cut_after=30_000_000)
        hubs.append(cut)
        data["models"][0]["source"] = cut.source
        stack.write_spec(data)
        set_env(stack, HF_ENDPOINT=cut.url)
        resumed = stack.cli("up")
        assert resumed.returncode == 0, resumed.stderr
        logs = cut.container.logs().decode()
        assert " 206 " in logs  # the second request asked for the rest with a Range
        # The rest only, not the whole file again.
        assert cut.stats()["bytes"] < images.DEMO_MODEL_SIZE + 30_000_000
        entry = json.loads((stack.root / "stack.lock").read_text())["sources"][cut.source]
        assert entry["files"][0]["sha256"] == images.DEMO_MODEL_SHA256
    finally:
        stack.cli("down", "--volumes")
        for hub in hubs:
            hub.remove()


def test_an_interrupted_up_resumes_the_download(stack_and_hub: tuple[Stack, Hub],
                                               docker_client: Any) -> None:
    """Ctrl-C during the fetch: the fetch container goes, the partial file stays in the cache
    (huggingface_hub's .incomplete, never loaded by a server) and the next `up` asks only for
    the rest (a Range request)."""
    import os
    import signal
    import subprocess
    import sys

    stack, first_hub = stack_and_hub
    first_hub.remove()
    hub = Hub(docker_client, stack, rate=20_000_000)  # about 5 s for the whole file
    try:
        data = stack.spec()
        data["models"][0]["source"] = hub.source
        stack.write_spec(data)
        set_env(stack, HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN)
        proc = subprocess.Popen([sys.executable, "-m", "llmstack", "up"], cwd=stack.root,
                                env={**os.environ, "CI": "true"}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        wait_for(lambda: hub.stats()["bytes"] > 20_000_000, 120, what="the download to start")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        sent = hub.stats()["bytes"]
        assert sent < images.DEMO_MODEL_SIZE, "interrupted too late to prove anything"
        assert not (stack.root / "stack.lock").exists()
        assert not docker_client.containers.list(
            all=True, filters={"name": names.container(stack.project, "fetch-model-smol")})

        again = stack.cli("up")
        assert again.returncode == 0, again.stderr
        ranged = [ln for ln in hub.container.logs().decode().splitlines()
                  if '"GET /' in ln and '" 206 ' in ln]
        assert len(ranged) == 1, hub.container.logs().decode()
        assert hub.stats()["bytes"] < images.DEMO_MODEL_SIZE + sent  # the rest, not it all
        entry = json.loads((stack.root / "stack.lock").read_text())["sources"][hub.source]
        assert entry["files"][0]["sha256"] == images.DEMO_MODEL_SHA256
    finally:
        hub.remove()


def run_remote(stack: Stack, target: Remote, *args: str) -> Any:
    return cli(*args, "--host", target.url, cwd=stack.root, env=target.env, timeout=600)


def test_over_ssh_the_fetch_runs_on_the_remote_engine(
        ssh_remote: Remote, tmp_path: Path, docker_client: Any) -> None:  # noqa: F811 (fixture)
    """`--host ssh://...`: the fetch container runs on the engine behind sshd and downloads
    from the Hub there; the deploying process only talks to the engine API."""
    stack = make_stack(tmp_path / "only-the-project", prefix="t-hfssh", embed=False)
    hub = Hub(docker_client, stack)
    try:
        data = stack.spec()
        data["models"] = [{"name": "smol", "backend": "llamacpp", "source": hub.source,
                           "context": 2048, "args": ["--threads", "1", "--n-predict", "16"]}]
        stack.write_spec(data)
        set_env(stack, HF_ENDPOINT=hub.url, HF_TOKEN=TOKEN)
        up = run_remote(stack, ssh_remote, "up")
        assert up.returncode == 0, up.stderr
        assert "fetched" in up.stderr
        # The one download came from a container on the project's network (the fetch), not
        # from this machine (which would come through the network's gateway).
        ipam = docker_client.networks.get(names.network(stack.project)).attrs["IPAM"]
        gateway = ipam["Config"][0]["Gateway"]
        prefix = gateway.rsplit(".", 1)[0] + "."
        gets = [ln.split()[1] for ln in hub.container.logs().decode().splitlines()
                if '"GET /' in ln]
        assert len(gets) == 1 and gets[0].startswith(prefix) and gets[0] != gateway, gets
        assert hub.stats()["bytes"] == images.DEMO_MODEL_SIZE
        lock = json.loads((stack.root / "stack.lock").read_text())
        assert lock["sources"][hub.source]["commit"] == hub.commit
        client = OpenAI(api_key=stack.key, base_url=stack.base_url)
        reply = client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Say hello"}], max_tokens=8)
        assert reply.choices[0].message.content
        again = run_remote(stack, ssh_remote, "up")
        assert again.returncode == 0 and "Nothing to do" in again.stdout
        assert hub.stats()["get"] == 1
    finally:
        stack.cli("down", "--volumes")
        hub.remove()
