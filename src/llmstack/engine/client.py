"""Connecting to a Docker engine (local socket, DOCKER_HOST, or ssh://) with clear errors."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import EngineError

if TYPE_CHECKING:
    import docker


def connect(host: str | None = None, timeout: int = 120) -> docker.DockerClient:
    """A client for `host` (or DOCKER_HOST / the local socket), checked with a ping."""
    import docker  # imported here: `llmstack --help` must not pay for it
    from docker.errors import DockerException

    target, _, tls = resolve_target(host)
    try:
        kwargs: dict[str, object] = {"base_url": target, "timeout": timeout}
        if tls:
            kwargs["tls"] = tls
        if target.startswith("ssh://"):
            kwargs["use_ssh_client"] = True  # the system ssh honours ~/.ssh/config and agents
            _patch_ssh_close()
        client = docker.DockerClient(**kwargs)  # type: ignore[arg-type]
        client.ping()
    except (DockerException, OSError) as exc:
        raise EngineError(
            f"cannot reach the Docker engine at {target}: {_short(exc)}",
            "start it (`sudo dockerd &` or `systemctl start docker`), or point --host / "
            "DOCKER_HOST at a running engine; `llmstack doctor` checks the host",
        ) from None
    return client


def _patch_ssh_close() -> None:
    """docker-py's ssh shell-out socket writes to ssh's stdin when closed; after an exec the
    remote end is gone already, so close() raised BrokenPipeError and every `exec_run` over
    ssh:// failed (docker/docker-py#3218, open in docker 7.1). Close quietly and reap ssh."""
    import subprocess

    from docker.transport import sshconn

    if getattr(sshconn.SSHSocket.close, "_llmstack", False):
        return

    def close(self: sshconn.SSHSocket) -> None:
        proc = self.proc
        if not proc or proc.stdin.closed:
            return
        try:
            proc.stdin.write(b"\n\n")
            proc.stdin.flush()
            proc.stdin.close()
        except OSError:
            pass
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()

    close._llmstack = True  # type: ignore[attr-defined]
    sshconn.SSHSocket.close = close  # type: ignore[method-assign]


def resolve_target(host: str | None = None) -> tuple[str, str, object]:
    """(engine URL, where it came from, TLS config or None): --host, then DOCKER_HOST (with
    DOCKER_TLS_VERIFY/DOCKER_CERT_PATH), then the Docker context (DOCKER_CONTEXT or `docker
    context use`), then the local socket."""
    if host and host.startswith(CONTEXT_PREFIX):  # a host's `engine:` naming a context
        return _context(host[len(CONTEXT_PREFIX):])
    if host:
        return host, "--host", None
    if os.environ.get("DOCKER_HOST"):
        from docker.utils import kwargs_from_env

        return os.environ["DOCKER_HOST"], "DOCKER_HOST", kwargs_from_env().get("tls")
    from docker.context.config import get_current_context_name

    name = os.environ.get("DOCKER_CONTEXT") or get_current_context_name()
    if name and name != "default":
        return _context(name)
    return "unix:///var/run/docker.sock", "local socket", None


CONTEXT_PREFIX = "context:"


def _context(name: str) -> tuple[str, str, object]:
    from docker.context import ContextAPI

    if name == "default":
        return "unix:///var/run/docker.sock", "context default", None
    ctx = ContextAPI.get_context(name)
    if ctx is None or not ctx.Host:
        raise EngineError(f"Docker context {name!r} does not exist",
                          "list contexts with `docker context ls`, or fix the host's engine: "
                          "in stack.yaml (or unset DOCKER_CONTEXT)")
    return str(ctx.Host), f"context {name}", ctx.TLSConfig


def describe_target(host: str | None = None) -> str:
    """The engine URL and its origin, for messages and JSON (never raises)."""
    try:
        url, origin, _ = resolve_target(host)
    except EngineError as exc:
        return exc.message
    return f"{url} ({origin})"


def engine_address(host: str | None = None) -> str:
    """The host name or IP where the engine's published ports are reached from here:
    127.0.0.1 for a local socket, the host of ssh://user@host[:port] (after ~/.ssh/config's
    HostName, via `ssh -G`) or of tcp://host:port."""
    import shutil
    import subprocess
    from urllib.parse import urlsplit

    url, _, _ = resolve_target(host)
    parts = urlsplit(url)
    if parts.scheme in ("unix", "npipe", "fd", "") or not parts.hostname:
        return "127.0.0.1"
    name = parts.hostname
    if parts.scheme == "ssh" and shutil.which("ssh"):
        try:  # an alias in ~/.ssh/config may name the real address
            out = subprocess.run(["ssh", "-G", name], capture_output=True, text=True,
                                 timeout=10, check=False).stdout
            resolved = next((ln.split(None, 1)[1] for ln in out.splitlines()
                             if ln.lower().startswith("hostname ")), name)
            return resolved.strip() or name
        except (OSError, subprocess.SubprocessError):
            return name
    return name


def is_local(client: docker.DockerClient) -> bool:
    """True when the engine runs on this machine, so published ports are this machine's."""
    base = str(client.api.base_url)
    return base.startswith(("http+docker://localhost", "http+docker://localunixsocket")) or \
        "docker.sock" in base


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:300] if text else type(exc).__name__
