"""The benchmark's own stacks: project folders with a unique name and free 127.0.0.1 ports,
the CLI run as a user runs it (a separate process), addresses on the project's own network,
and memory from the engine's stats API."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmstack import names, secrets

LABEL = names.LABEL_PROJECT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_project(prefix: str = "bench") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def llmstack_cmd() -> list[str]:
    """The `llmstack` a user runs: the console script beside this Python, else `-m`."""
    script = Path(sys.executable).with_name("llmstack")
    return [str(script)] if script.exists() else [sys.executable, "-m", "llmstack"]


@dataclass(frozen=True)
class Timed:
    seconds: float
    returncode: int
    stdout: str
    stderr: str

    def check(self, what: str) -> Timed:
        if self.returncode != 0:
            raise RuntimeError(f"{what} exited {self.returncode}\nstdout:\n{self.stdout[-3000:]}"
                               f"\nstderr:\n{self.stderr[-3000:]}")
        return self


def run_timed(cmd: list[str], cwd: Path | None = None, timeout: float = 600,
              src: str | None = None) -> Timed:
    """Wall time of a command as a user waits for it (process start to exit); `src`: run
    the llmstack of that source folder instead (PYTHONPATH), e.g. main's, as a baseline."""
    env = {**os.environ, "CI": "true", **({"PYTHONPATH": src} if src else {})}
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    return Timed(time.perf_counter() - started, proc.returncode, proc.stdout, proc.stderr)


def run_timeline(cmd: list[str], cwd: Path | None = None, timeout: float = 600,
                 src: str | None = None) -> tuple[Timed, list[tuple[float, str]]]:
    """Like run_timed, plus each stderr line with its offset from the process start (how
    `up`'s progress lines show where the time goes)."""
    env = {**os.environ, "CI": "true", **({"PYTHONPATH": src} if src else {})}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    stdout = proc.stdout
    out: list[str] = []

    def read_stdout() -> None:
        out.append(stdout.read())

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    watchdog = threading.Timer(timeout, proc.kill)  # bounded even if the command hangs
    watchdog.start()
    lines: list[tuple[float, str]] = []
    try:
        for line in proc.stderr:
            lines.append((round(time.perf_counter() - started, 3), line.rstrip()))
        code = proc.wait()
    finally:
        watchdog.cancel()
    reader.join(30)
    elapsed = time.perf_counter() - started
    return Timed(elapsed, code, "".join(out), "\n".join(t for _, t in lines)), lines


DIRECT_MODEL = "bench-direct"  # the chat model's twin on `route: direct`


@dataclass
class BenchStack:
    root: Path
    project: str
    local_port: int
    lan_port: int
    https_port: int

    @classmethod
    def create(cls, root: Path, project: str, embed: bool) -> BenchStack:
        """`llmstack init` in `root`, then a unique project name and free loopback ports."""
        run_timed([*llmstack_cmd(), "init", str(root)], timeout=120).check("llmstack init")
        stack = cls(root, project, free_port(), free_port(), free_port())
        stack.rewrite(embed=embed)
        return stack

    def clone(self, root: Path, project: str) -> BenchStack:
        """A second folder with the same stack.yaml, keys and certificate, its own name and
        ports (the compose baseline runs beside this one)."""
        root.mkdir(parents=True)
        shutil.copy2(self.root / "stack.yaml", root / "stack.yaml")
        shutil.copy2(self.root / ".env", root / ".env")  # copy2 keeps mode 0600
        shutil.copytree(self.root / "certs", root / "certs")
        other = BenchStack(root, project, free_port(), free_port(), free_port())
        other.rewrite()
        return other

    def spec(self) -> dict[str, Any]:
        data: dict[str, Any] = yaml.safe_load((self.root / "stack.yaml").read_text())
        return data

    def rewrite(self, embed: bool | None = None, rate: tuple[int, int] | None = None) -> None:
        data = self.spec()
        data["project"] = self.project
        data["listeners"] = {
            "local": {"port": self.local_port, "bind": "127.0.0.1"},
            "lan": {"port": self.lan_port, "bind": "127.0.0.1"},
            "https": {"port": self.https_port, "bind": "127.0.0.1"},
        }
        if embed is False:
            data["models"] = [m for m in data["models"] if m.get("task") != "embedding"]
        if not any(m["name"] == DIRECT_MODEL for m in data["models"]):
            # The chat model once more, on `route: direct`: both routes measured in one run,
            # each against its own container reached directly (identical servers).
            chat = next(m for m in data["models"] if m.get("task", "chat") == "chat")
            twin = {k: v for k, v in chat.items() if k != "aliases"}
            data["models"].append({**twin, "name": DIRECT_MODEL, "route": "direct"})
        if rate is not None:
            data.setdefault("rate_limit", {})
            data["rate_limit"]["requests_per_second"], data["rate_limit"]["burst"] = rate
        (self.root / "stack.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    @property
    def rate(self) -> tuple[int, int]:
        limits = self.spec().get("rate_limit") or {}
        return int(limits.get("requests_per_second", 10)), int(limits.get("burst", 20))

    @property
    def keys(self) -> secrets.Keys:
        return secrets.load_keys(self.root / ".env")

    @property
    def ca(self) -> Path:
        return self.root / "certs" / "ca.crt"

    @property
    def chat_model(self) -> str:
        chat = [m for m in self.spec()["models"] if m.get("task", "chat") == "chat"]
        return str(chat[0]["name"])

    def cli(self, *args: str, timeout: float = 600, src: str | None = None) -> Timed:
        return run_timed([*llmstack_cmd(), *args], cwd=self.root, timeout=timeout, src=src)


# --- The engine -----------------------------------------------------------------------------


def client() -> Any:
    from llmstack.engine.client import connect

    return connect()


def project_containers(docker: Any, project: str) -> dict[str, Any]:
    """{service: container} of a project (llmstack's labels; exported compose ones too)."""
    found = docker.containers.list(filters={"label": f"{LABEL}={project}"})
    return {c.labels.get(names.LABEL_SERVICE, c.name): c for c in found}


def container_ip(docker: Any, project: str, service: str) -> str:
    """The container's address on the project's own network (reachable from this host)."""
    c = docker.containers.get(names.container(project, service))
    net = c.attrs["NetworkSettings"]["Networks"][names.network(project)]
    return str(net["IPAddress"])


def memory_mib(container: Any) -> float:
    """Memory in use as `docker stats` shows it: usage less inactive page cache."""
    stats = container.stats(stream=False, one_shot=True)
    mem = stats.get("memory_stats") or {}
    usage = float(mem.get("usage") or 0)
    detail = mem.get("stats") or {}
    for key in ("total_inactive_file", "inactive_file"):  # cgroup v1, v2
        if key in detail and detail[key] < usage:
            usage -= detail[key]
            break
    return round(usage / 2**20, 1)


def memory_snapshot(docker: Any, project: str) -> dict[str, float]:
    return {svc: memory_mib(c) for svc, c in sorted(project_containers(docker, project).items())}


def cleanup(docker: Any, project: str) -> None:
    """Remove everything of `project` (containers, network, config volumes), never models."""
    from llmstack.engine.containers import Project

    try:
        Project(docker, project).down(volumes=True)
    except Exception as exc:  # best effort: report, keep cleaning the other project
        print(f"cleanup of {project}: {type(exc).__name__}: {exc}", file=sys.stderr)
