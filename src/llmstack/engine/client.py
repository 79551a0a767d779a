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

    target = host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        kwargs: dict[str, object] = {"base_url": target, "timeout": timeout}
        if target.startswith("ssh://"):
            kwargs["use_ssh_client"] = True  # the system ssh honours ~/.ssh/config and agents
        client = docker.DockerClient(**kwargs)  # type: ignore[arg-type]
        client.ping()
    except (DockerException, OSError) as exc:
        raise EngineError(
            f"cannot reach the Docker engine at {target}: {_short(exc)}",
            "start it (`sudo dockerd &` or `systemctl start docker`), or point --host / "
            "DOCKER_HOST at a running engine; `llmstack doctor` checks the host",
        ) from None
    return client


def is_local(client: docker.DockerClient) -> bool:
    """True when the engine runs on this machine, so published ports are this machine's."""
    base = str(client.api.base_url)
    return base.startswith(("http+docker://localhost", "http+docker://localunixsocket")) or \
        "docker.sock" in base


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:300] if text else type(exc).__name__
