"""Shared test helpers: run the real CLI, make a project folder, talk to a live stack."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_project(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 900, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `llmstack ARGS` as a user would (a separate process, CI=true, no TTY)."""
    full_env = {**os.environ, "CI": "true", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "llmstack", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"llmstack {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def wait_for(check: Callable[[], Any], timeout: float, interval: float = 0.2,
             what: str = "condition") -> Any:
    """Poll `check` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Stack:
    """A project folder with its own name and free loopback ports."""

    root: Path
    project: str
    local_port: int
    lan_port: int
    https_port: int

    @property
    def key(self) -> str:
        for line in (self.root / ".env").read_text().splitlines():
            if line.startswith("LITELLM_MASTER_KEY="):
                return line.split("=", 1)[1]
        raise AssertionError("no LITELLM_MASTER_KEY in .env")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}/v1"

    @property
    def lan_url(self) -> str:
        return f"http://127.0.0.1:{self.lan_port}/v1"

    @property
    def https_url(self) -> str:
        return f"https://localhost:{self.https_port}/v1"

    @property
    def ca(self) -> Path:
        return self.root / "certs" / "ca.crt"

    def cli(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return cli(*args, cwd=self.root, **kwargs)

    def spec(self) -> dict[str, Any]:
        return yaml.safe_load((self.root / "stack.yaml").read_text())

    def write_spec(self, data: dict[str, Any]) -> None:
        (self.root / "stack.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    def status(self) -> dict[str, Any]:
        proc = self.cli("status", "--json")
        return json.loads(proc.stdout)


def make_stack(root: Path, prefix: str = "t", embed: bool = True) -> Stack:
    """`llmstack init` in `root`, then point the starter at a unique project and free ports."""
    cli("init", str(root), check=True)
    stack = Stack(root, unique_project(prefix), free_port(), free_port(), free_port())
    data = stack.spec()
    data["project"] = stack.project
    data["listeners"] = {
        "local": {"port": stack.local_port, "bind": "127.0.0.1"},
        "lan": {"port": stack.lan_port, "bind": "127.0.0.1"},
        "https": {"port": stack.https_port, "bind": "127.0.0.1"},
    }
    if not embed:
        data["models"] = [m for m in data["models"] if m.get("task") != "embedding"]
    stack.write_spec(data)
    return stack


def make_unthrottled_stack(root: Path, prefix: str) -> Stack:
    """A chat-only project whose per-IP request rate is high enough for load from one address
    (the concurrency limit keeps its default, 100): tests then measure the stack, not the
    limiter."""
    stack = make_stack(root, prefix=prefix, embed=False)
    data = stack.spec()
    data["rate_limit"] = {"requests_per_second": 1000, "burst": 1000, "max_concurrent": 100}
    stack.write_spec(data)
    return stack


def name_image(data: dict[str, Any], key: str, image: str) -> None:
    """Name `image` for `images:` key `key` in stack data (`images: auto` becomes a mapping)."""
    images = data.get("images", "auto")
    if isinstance(images, str):
        images = {"source": images}
    images[key] = image
    data["images"] = images


@contextlib.contextmanager
def upstream_stand_in(docker_client: Any, prefix: str, image: str, aliases: list[str],
                      labels: dict[str, str]) -> Iterator[str]:
    """A network where each of `aliases` resolves to one sleeping container of `image`: the
    upstream names a rendered nginx.conf needs for `nginx -t`. Yields the network's name."""
    net_name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    network = docker_client.networks.create(net_name, driver="bridge", labels=labels)
    stand_in = docker_client.containers.create(
        image, entrypoint=["sleep", "600"], command=[], labels=labels,
        name=f"{net_name}-upstreams")
    docker_client.api.connect_container_to_network(stand_in.id, net_name, aliases=aliases)
    stand_in.start()
    try:
        yield net_name
    finally:
        stand_in.remove(force=True)
        network.remove()
