"""An in-memory engine implementing `llmstack.engine.api.Engine`, for unit tests.

Containers have states, labels and log lines; config volumes hold files; readiness probes are
answered per service from a script (`answers`); nginx's `-t`, `-s reload` and its worker list
are simulated (a reload starts a new worker generation). Other exec commands run on this
machine (`python3` is this interpreter), so exit codes and output are real.
`tests/engine_compliance.py` checks that it behaves as the real engine does.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from llmstack import names
from llmstack.engine.api import Activity, ContainerInfo, Task
from llmstack.engine.host import EngineFacts, GpuProbe, HostSnapshot, SourceStat
from llmstack.errors import EngineError
from llmstack.plan import Actual, ServiceSpec

NOT_FOUND = "ERR URLError <urlopen error [Errno -2] Name or service not known>"
REFUSED = "ERR URLError <urlopen error [Errno 111] Connection refused>"


@dataclass
class FakeContainer:
    service: str
    name: str
    id: str
    image: str
    image_id: str
    labels: dict[str, str]
    ports: tuple[str, ...] = ()
    status: str = "running"
    exit_code: int | None = None
    started_at: str = "2030-01-01T00:00:00.000000000Z"
    restart_count: int = 0
    config_mount: str = ""
    log: list[str] = field(default_factory=list)
    read_bytes: int = 0  # what Engine.activity reports (tests raise them to show progress)
    memory_bytes: int = 8 << 20


@dataclass
class FakeEngine:
    """One project on a pretend engine. Knobs for tests:

    answers: per service, the probe answers in order (the last one repeats); default "200".
    crash: services whose container exits (code 1) right after its start.
    missing_images: tags the engine does not have.
    registry: what registries serve, {"repo:tag" or "repo@digest": digest}; a pull of a
      served ref makes it present. registry_error: raised by every registry call instead.
    nginx_test: (exit code, output) of `nginx -t`.
    source_files: what read_source finds, {"volume:NAME/PATH" or "host:/PATH": bytes}.
    image_envs: each image's config Env (image_env).
    pages: what scrape reads, {"SERVICE/PATH": body} (e.g. "litellm/metrics"); a running
      service without the page answers 404. gpus: what query_gpus reports (None: no GPU
      runtime).
    """

    project: str = "p"
    answers: dict[str, list[str]] = field(default_factory=dict)
    crash: set[str] = field(default_factory=set)
    missing_images: set[str] = field(default_factory=set)
    registry: dict[str, str] = field(default_factory=dict)
    registry_error: Exception | None = None
    nginx_test: tuple[int, str] = (0, "")
    containers: dict[str, FakeContainer] = field(default_factory=dict)
    volumes: dict[str, dict[str, tuple[bytes, int]]] = field(default_factory=dict)
    network: bool = False
    generation: int = 1  # nginx's worker generation: +1 per reload
    calls: list[str] = field(default_factory=list)  # "start health", "remove nginx", ...
    other_ports: dict[int, str] = field(default_factory=dict)
    # run_task: per task name, the scripts of its runs in order (the last repeats), each
    # (exit code, output lines); a task with none runs its command here, as exec does.
    tasks: dict[str, list[tuple[int, list[str]]]] = field(default_factory=dict)
    task_runs: list[Task] = field(default_factory=list)
    # stat_source: paths (in any volume or on the host) that do not exist; others do.
    absent: set[str] = field(default_factory=set)
    client: object = None  # no docker client: callers must not need one
    source_files: dict[str, bytes] = field(default_factory=dict)
    image_envs: dict[str, list[str]] = field(default_factory=dict)  # image config Env
    owner_labels: dict[str, str] = field(default_factory=dict)
    pages: dict[str, str] = field(default_factory=dict)
    scrape_auth: list[dict[str, str]] = field(default_factory=list)  # auth of each scrape
    probe_rounds: int = 0  # calls of probes(): one exec each on the real engine
    gpus: GpuProbe | None = None

    # --- reading -------------------------------------------------------------------------

    def actual(self) -> list[Actual]:
        return [Actual(c.service, c.id, c.labels.get(names.LABEL_HASH, ""), c.image_id,
                       c.status, c.labels.get(names.LABEL_OWNER, ""))
                for c in self.containers.values()]

    def info(self) -> list[ContainerInfo]:
        return [self._info(c) for c in self.containers.values()]

    def container(self, service: str) -> ContainerInfo | None:
        c = self.containers.get(service)
        return self._info(c) if c else None

    @staticmethod
    def _info(c: FakeContainer) -> ContainerInfo:
        return ContainerInfo(service=c.service, name=c.name, id=c.id[:12], image=c.image,
                             status=c.status, started_at=c.started_at, ports=c.ports,
                             labels=dict(c.labels), restart_count=c.restart_count,
                             exit_code=c.exit_code)

    def state(self, service: str) -> tuple[str, int | None]:
        c = self.containers.get(service)
        return (c.status, c.exit_code) if c else ("missing", None)

    def image_ids(self, tags: list[str]) -> dict[str, str | None]:
        return {t: None if t in self.missing_images else f"sha256:{t}"
                for t in dict.fromkeys(tags)}

    def read_tree(self, service: str, path: str) -> dict[str, bytes]:
        c = self.containers.get(service)
        if c is None or not c.config_mount or not (path == c.config_mount or
                                                   path.startswith(c.config_mount + "/")):
            return {}
        files = self.volumes.get(names.config_volume(self.project, c.labels[
            names.LABEL_SERVICE]), {})
        rel = path[len(c.config_mount) + 1:].rstrip("/")
        if not rel:  # the whole config folder, under its own name
            base = c.config_mount.rsplit("/", 1)[-1]
            return {f"{base}/{name}": data for name, (data, _) in files.items()}
        base = rel.rsplit("/", 1)[-1]
        return {base + name[len(rel):]: data for name, (data, _) in files.items()
                if name == rel or name.startswith(rel + "/")}

    def _running(self, service: str) -> FakeContainer:
        c = self.containers.get(service)
        if c is None or c.status != "running":
            raise EngineError(f"{service} is not running", "run `llmstack up`")
        return c

    def exec(self, service: str, cmd: list[str], environment: dict[str, str] | None = None
             ) -> tuple[int, str]:
        self._running(service)
        if service == names.NGINX and cmd[:2] == ["nginx", "-t"]:
            self.calls.append("nginx -t")
            return self.nginx_test
        if service == names.NGINX and cmd[:3] == ["nginx", "-s", "reload"]:
            self.calls.append("nginx reload")
            self.generation += 1
            return 0, ""
        if service == names.NGINX and cmd[:2] == ["sh", "-c"] and "nginx -s reload" in cmd[2]:
            # edge.swap: the serving workers, then `nginx -t` and the reload in one exec.
            workers = self.exec(service, ["sh", "-c", "workers"])[1]
            self.calls.append("nginx -t")
            if self.nginx_test[0] != 0:
                return 3, workers + "--- nginx -t and reload ---\n" + self.nginx_test[1]
            self.calls.append("nginx reload")
            self.generation += 1
            return 0, workers + "--- nginx -t and reload ---\n"
        if service == names.NGINX and cmd[:2] == ["sh", "-c"]:
            return 0, (f"1 /sbin/docker-init -- nginx\n7 nginx: master process nginx\n"
                       f"{100 + self.generation} nginx: worker process   \n")
        argv = [sys.executable if cmd[0] == "python3" else cmd[0], *cmd[1:]]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False,
                              env={**(environment or {}), "PATH": "/usr/bin:/bin"})
        return proc.returncode, proc.stdout + proc.stderr

    def scrape(self, urls: list[str], auth: dict[str, str] | None = None,
               timeout: float = 2.0) -> dict[str, tuple[int | None, str]]:
        self._running(names.HEALTH)  # scrapes run in the health container
        self.scrape_auth.append(dict(auth or {}))
        out: dict[str, tuple[int | None, str]] = {}
        for url in urls:
            parts = urlsplit(url)
            host = parts.hostname or ""
            service = host.removeprefix(f"{self.project}-")
            c = self.containers.get(service)
            if c is None or not host.startswith(f"{self.project}-"):
                out[url] = (None, NOT_FOUND.removeprefix("ERR "))
            elif c.status != "running":
                out[url] = (None, REFUSED.removeprefix("ERR "))
            else:
                page = self.pages.get(f"{service}{parts.path}")
                out[url] = (200, page) if page is not None else (404, "not found")
        return out

    def probes(self, urls: list[str], timeout: float = 2.0) -> dict[str, str]:
        self._running(names.HEALTH)  # one exec in the health container
        self.probe_rounds += 1
        return {url: self.probe(url, timeout) for url in urls}

    def probe(self, url: str, timeout: float = 2.0) -> str:
        self._running(names.HEALTH)  # probes run in the health container
        host = urlsplit(url).hostname or ""
        service = names.HEALTH if host == "127.0.0.1" else host.removeprefix(f"{self.project}-")
        c = self.containers.get(service)
        if c is None or not host.startswith((f"{self.project}-", "127.0.0.1")):
            return NOT_FOUND
        if c.status != "running":
            return REFUSED
        # A stop-first model's placeholder answers 503 to everything (plan.placeholder).
        default = "503" if c.labels.get(names.LABEL_ROLE) == "placeholder" else "200"
        script = self.answers.get(service) or [default]
        return script.pop(0) if len(script) > 1 else script[0]

    def logs(self, service: str, tail: int = 50, follow: bool = False) -> Iterator[bytes]:
        c = self.containers.get(service)
        if c is None:
            raise EngineError(f"no container for service {service!r}",
                              "`llmstack status` lists the services")
        lines = c.log[-tail:] if tail else []
        if follow:
            yield from (line.encode() + b"\n" for line in lines)
        else:
            yield "".join(line + "\n" for line in lines).encode()

    def tail_logs(self, service: str, lines: int = 20) -> str:
        c = self.containers.get(service)
        return "\n".join(c.log[-lines:]) if c else ""

    def activity(self, service: str, cursor: str = "") -> Activity:
        c = self.containers.get(service)
        if c is None:
            return Activity("", cursor)
        seen = int(cursor or 0)  # a cursor here is the number of log lines already read
        return Activity("\n".join(c.log[seen:]), str(len(c.log)) if c.log else cursor,
                        c.read_bytes, c.memory_bytes)

    # --- writing -------------------------------------------------------------------------

    def ensure_network(self) -> None:
        self.network = True

    def write_config(self, svc: ServiceSpec, extra: dict[str, tuple[bytes, int]] | None = None
                     ) -> None:
        self.calls.append(f"write_config {svc.service}")
        volume = self.volumes.setdefault(names.config_volume(self.project, svc.service), {})
        volume.update({n: (data, 0o644) for n, data in svc.config.items()})
        volume.update(extra or {})

    def write_volume(self, volume: str, files: dict[str, bytes], image: str) -> None:
        self.volumes.setdefault(volume, {}).update({n: (d, 0o644) for n, d in files.items()})

    def read_volume(self, volume: str, image: str) -> dict[str, bytes]:
        return {n: d for n, (d, _) in self.volumes.get(volume, {}).items()}

    def rename(self, key: str, new_key: str) -> None:
        c = self.containers.pop(key, None)
        if c is None:
            raise EngineError(f"no container {names.container(self.project, key)} to rename",
                              "run `llmstack up` again")
        self.calls.append(f"rename {key} {new_key}")
        c.name = names.container(self.project, new_key)
        c.service = new_key
        self.containers[new_key] = c

    def start(self, svc: ServiceSpec, key: str | None = None) -> str:
        key = key or svc.service
        if not self.network:
            raise EngineError(f"NotFound: network {names.network(self.project)} not found",
                              "the Docker engine refused the operation")
        if svc.image in self.missing_images:
            raise EngineError(f"ImageNotFound: No such image: {svc.image}",
                              "the Docker engine refused the operation")
        self.remove(key)
        self.calls.append(f"start {key}")
        crashed = svc.service in self.crash and svc.role != "placeholder"  # the model's own
        c = FakeContainer(
            service=key, name=names.container(self.project, key),
            id=uuid.uuid4().hex, image=svc.image, image_id=f"sha256:{svc.image}",
            labels={names.LABEL_PROJECT: self.project, names.LABEL_SERVICE: svc.service,
                    names.LABEL_ROLE: svc.role, names.LABEL_HASH: svc.config_hash(),
                    **self.owner_labels},
            ports=tuple(sorted(f"{bind}:{port}->{inside}"
                               for inside, (bind, port) in svc.ports.items())),
            status="exited" if crashed else "running", exit_code=1 if crashed else None,
            config_mount=svc.config_mount if svc.config else "",
            log=[f"{svc.service} starting"] + (["fatal: cannot load model"] if crashed else []))
        self.containers[key] = c
        return c.id

    def remove(self, service: str) -> None:
        if self.containers.pop(service, None) is not None:
            self.calls.append(f"remove {service}")

    def run_task(self, task: Task, on_line: Callable[[str], None]) -> int:
        if not self.network:
            raise EngineError(f"NotFound: network {names.network(self.project)} not found",
                              "the Docker engine refused the operation")
        if task.image in self.missing_images:
            raise EngineError(f"ImageNotFound: No such image: {task.image}",
                              "the Docker engine refused the operation")
        self.calls.append(f"run {task.name}")
        self.task_runs.append(task)
        script = self.tasks.get(task.name)
        if script is None:
            cmd = [*task.entrypoint, *task.command]
            argv = [sys.executable if cmd[0] == "python3" else cmd[0], *cmd[1:]]
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                                  check=False, env={**task.env, "PATH": "/usr/bin:/bin"})
            script = [(proc.returncode, (proc.stdout + proc.stderr).splitlines())]
        code, lines = script.pop(0) if len(script) > 1 else script[0]
        for line in lines:
            on_line(line)
        return code

    def down(self, volumes: bool = False) -> list[str]:
        removed = [c.name for c in self.containers.values()]
        self.containers.clear()
        self.network = False
        if volumes:
            self.volumes.clear()
        return removed

    # --- the host ------------------------------------------------------------------------

    def is_local(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True

    def volume_has(self, volume: str, path: str, image: str) -> bool:
        return True

    def published_elsewhere(self) -> dict[int, str]:
        return dict(self.other_ports)

    def host_snapshot(self, candidates: list[str]) -> HostSnapshot | None:
        return None

    def query_gpus(self, candidates: list[str], utilization: bool = False) -> GpuProbe:
        return self.gpus or GpuProbe("no-runtime", detail="the fake engine has no GPUs")

    def engine_facts(self) -> EngineFacts:
        return EngineFacts(version="27.0.0", api_version="1.47", os="linux", arch="amd64",
                           kernel="6.1", operating_system="Fake", root_dir="/var/lib/docker",
                           runtimes=["runc"], default_runtime="runc", system_time=None,
                           skew_s=None, name="fake", ncpu=2, mem_bytes=8 << 30)

    def registry_digest(self, ref: str) -> str:
        from llmstack.errors import ImageNotInRegistry, RegistryUnreachable
        from llmstack.images import parse_reference

        self.calls.append(f"registry {ref}")
        if self.registry_error is not None:
            raise self.registry_error
        parsed = parse_reference(ref)
        for key in (f"{parsed.repository}@{parsed.digest}", parsed.tagged):
            if key in self.registry:
                return self.registry[key]
        if parsed.registry not in {parse_reference(k).registry for k in self.registry}:
            raise RegistryUnreachable(f"registry {parsed.registry} did not answer for {ref}: "
                                      "connection refused")
        raise ImageNotInRegistry(f"registry {parsed.registry} has no {ref}: manifest unknown")

    def pull(self, ref: str, progress: Any) -> str:
        from llmstack.errors import DigestMismatch
        from llmstack.images import parse_reference

        digest = self.registry_digest(ref)
        parsed = parse_reference(ref)
        if parsed.digest and parsed.digest != digest:  # what the engine's own check finds
            raise DigestMismatch(f"{ref}: pulled {digest}, not {parsed.digest}")
        self.calls.append(f"pull {ref}")
        progress(f"  {ref}: pulled")
        self.missing_images.discard(ref)
        return f"sha256:{ref}"

    def present_images(self, tags: list[str]) -> dict[str, bool]:
        return {t: i is not None for t, i in self.image_ids(tags).items()}

    def published_ports(self) -> list[dict[str, Any]]:
        return [{"port": int(p.split("->")[0].rsplit(":", 1)[1]), "ip": p.rsplit(":", 1)[0],
                 "container": c.name, "project": self.project}
                for c in self.containers.values() if c.status == "running" for p in c.ports]

    def running_services(self) -> dict[str, str]:
        return {c.service: c.status for c in self.containers.values()}

    def stat_source(self, image: str, kind: str, location: str, path: str) -> SourceStat:
        return SourceStat(False) if path in self.absent else SourceStat(True, 1, False)

    def image_env(self, refs: list[str]) -> dict[str, list[str]]:
        return {r: self.image_envs.get(r, []) for r in refs if r not in self.missing_images}

    def read_source(self, image: str, kind: str, location: str, path: str, limit: int
                    ) -> bytes | None:
        data = self.source_files.get(f"{kind}:{location}/{path}".replace("//", "/"))
        return None if data is None else data[:limit]
