"""A remote engine over SSH for real: a real sshd on 127.0.0.1 with key auth and a pinned host
key, the system ssh client, and `llmstack --host ssh://root@127.0.0.1:PORT` (and DOCKER_HOST)
running doctor / up / status / verify / down from a folder that holds only the project.

The engine behind sshd happens to be this machine's, so the test also proves that nothing
reaches the containers through this machine's file system: no container has a bind mount,
the configs in the containers equal the rendered ones, and the stack keeps working after the
local config/ folder is deleted. The ssh client reads its config from a wrapper on PATH
(ssh ignores $HOME), the way a CI runner would read ~/.ssh/config.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llmstack import names
from tests.helpers import Stack, cli, free_port, make_stack, wait_for

pytestmark = pytest.mark.integration

SSHD = "/usr/sbin/sshd"


@dataclass
class Remote:
    url: str
    env: dict[str, str]
    log: Path
    ssh: list[str]


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True)


@contextlib.contextmanager
def sshd_endpoints(count: int) -> Iterator[list[Remote]]:
    """`count` real sshd endpoints on 127.0.0.1 (one host key, one client key, one ssh
    config on PATH), each reaching this machine's engine: simulated hosts of a fleet."""
    if os.geteuid() != 0:
        pytest.skip("sshd with root login needs root (CI runs as root)")
    if not (Path(SSHD).exists() and shutil.which("ssh") and shutil.which("docker")):
        pytest.fail("needs openssh-server, openssh-client and the docker CLI (for "
                    "`docker system dial-stdio` on the remote side)")
    # A short folder: ssh's ControlPath must fit a unix socket name.
    work = Path(tempfile.mkdtemp(prefix="llmssh"))
    _keygen(work / "host_key")
    _keygen(work / "client_key")
    shutil.copy(work / "client_key.pub", work / "authorized_keys")
    ports = [free_port() for _ in range(count)]
    (work / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nHostKey {work}/host_key\n"
        f"AuthorizedKeysFile {work}/authorized_keys\nPubkeyAuthentication yes\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "LogLevel VERBOSE\n")
    host_key = (work / "host_key.pub").read_text().split()[:2]
    (work / "known_hosts").write_text("".join(f"[127.0.0.1]:{port} {' '.join(host_key)}\n"
                                              for port in ports))
    (work / "ssh_config").write_text(
        f"Host 127.0.0.1\n  IdentityFile {work}/client_key\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {work}/known_hosts\n  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n  LogLevel ERROR\n"
        # One TCP+auth handshake for all the engine calls, as docs/CI.md recommends.
        f"  ControlMaster auto\n  ControlPath {work}/cm-%C\n  ControlPersist 120\n")
    bin_dir = work / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {work}/ssh_config "$@"\n')
    wrapper.chmod(0o755)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    servers: list[subprocess.Popen[bytes]] = []
    remotes: list[Remote] = []
    try:
        for port in ports:
            log = work / f"sshd-{port}.log"
            with log.open("w") as out:
                servers.append(subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(work / "sshd_config"), "-p", str(port),
                     "-o", f"PidFile={work}/sshd-{port}.pid"],
                    stdout=out, stderr=subprocess.STDOUT))
            ssh = [str(wrapper), "-p", str(port), "root@127.0.0.1"]
            remotes.append(Remote(f"ssh://root@127.0.0.1:{port}", env, log, ssh))
        for r in remotes:
            wait_for(lambda r=r: subprocess.run(  # type: ignore[misc]
                [*r.ssh, "true"], env={**os.environ, **env}, capture_output=True,
                timeout=20).returncode == 0, timeout=30, what=f"sshd at {r.url}")
        yield remotes
    finally:
        for r in remotes:
            subprocess.run([*r.ssh, "-O", "exit"], env={**os.environ, **env},
                           capture_output=True, timeout=20)
        for server in servers:
            server.terminate()
            server.wait(timeout=20)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def remote() -> Iterator[Remote]:
    with sshd_endpoints(1) as remotes:
        yield remotes[0]


@pytest.fixture
def project(tmp_path: Path, docker_client: Any) -> Iterator[Stack]:
    stack = make_stack(tmp_path / "only-the-project", prefix="t-ssh", embed=False)
    yield stack
    stack.cli("down", "--volumes")  # through the local socket, whatever happened


def run(stack: Stack, remote: Remote, *args: str, host: bool = True,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [*args, "--host", remote.url] if host else list(args)
    return cli(*argv, cwd=stack.root, env={**remote.env, **(extra_env or {})}, timeout=600)


def json_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout, proc.stderr
    return json.loads(proc.stdout)


def test_up_status_verify_down_over_ssh(remote: Remote, project: Stack,
                                        docker_client: Any) -> None:
    doctor = run(project, remote, "doctor", "--json")
    report = json_of(doctor)
    assert doctor.returncode == 0, report
    assert report["target"] == f"{remote.url} (--host)"
    assert "Accepted publickey for root" in remote.log.read_text()

    started = time.monotonic()
    up = run(project, remote, "up", "--json")
    assert up.returncode == 0, up.stderr
    assert json_of(up)["changed"] is True
    up_seconds = time.monotonic() - started

    containers = docker_client.containers.list(
        all=True, filters={"label": f"{names.LABEL_PROJECT}={project.project}"})
    assert {c.labels[names.LABEL_SERVICE] for c in containers} == {
        names.HEALTH, names.model_service("deepseek-coder"), names.LITELLM, names.NGINX}
    for c in containers:
        kinds = {m["Type"] for m in c.attrs["Mounts"]}
        assert kinds <= {"volume"}, f"{c.name} mounts {c.attrs['Mounts']}"
    nginx = next(c for c in containers if c.labels[names.LABEL_SERVICE] == names.NGINX)
    shipped = _read(nginx, f"/etc/llmstack/{names.NGINX}/nginx.conf")
    assert shipped == (project.root / "config" / "nginx.conf").read_bytes()

    shutil.rmtree(project.root / "config")  # nothing below may need it
    assert {".env", "certs", "stack.yaml"} <= {p.name for p in project.root.iterdir()}

    # DOCKER_HOST works like --host.
    status = run(project, remote, "status", "--json", host=False,
                 extra_env={"DOCKER_HOST": remote.url})
    assert status.returncode == 0, status.stderr
    assert all(s["healthy"] for s in json_of(status)["services"])

    again = run(project, remote, "up", "--json")
    assert again.returncode == 0, again.stderr
    assert json_of(again)["changed"] is False, json_of(again)["actions"]

    verify = run(project, remote, "verify", "--json")
    result = json_of(verify)
    assert verify.returncode == 0, result
    assert result["endpoint"].startswith(f"https://127.0.0.1:{project.https_port}")
    assert {c["check"]: c["status"] for c in result["checks"]} == {
        "tls": "ok", "health": "ok", "models": "ok", "chat_stream": "ok",
        "embeddings": "skip", "auth": "ok", "rate_limit": "ok"}

    # A broken stack: the model server stops; verify over ssh fails and says where.
    model = next(c for c in containers
                 if c.labels[names.LABEL_SERVICE] == names.model_service("deepseek-coder"))
    model.stop(timeout=5)
    wait_for(lambda: run(project, remote, "status", "--json").returncode == 2, timeout=60,
             what="status to see the stopped model")
    broken = run(project, remote, "verify")
    assert broken.returncode == 2
    assert "fail health" in broken.stdout and "model:deepseek-coder" in broken.stdout
    assert "verify FAILED: health, chat_stream" in broken.stdout

    down = run(project, remote, "down", "--json")
    assert down.returncode == 0, down.stderr
    assert len(json_of(down)["removed"]) == 5  # health, model, litellm, edge-metrics, nginx
    assert docker_client.containers.list(
        all=True, filters={"label": f"{names.LABEL_PROJECT}={project.project}"}) == []
    leftovers = subprocess.run(["pgrep", "-f", "docker system dial-stdio"],
                               capture_output=True, text=True).stdout.split()
    assert leftovers == [], "ssh sessions left behind"
    print(f"up over ssh took {up_seconds:.1f}s")


def _read(container: Any, path: str) -> bytes:
    import io
    import tarfile

    stream, _ = container.get_archive(path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        handle = tar.extractfile(member) if member else None
        return handle.read() if handle else b""
