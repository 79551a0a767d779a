"""Containers, networks and config volumes of a project on a Docker engine."""

from __future__ import annotations

import io
import json
import socket
import tarfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .. import gpu, names
from ..errors import EngineError
from ..plan import Actual, ServiceSpec, parse_user
from .api import Activity, ContainerInfo, Task, mapped

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container

    from .host import EngineFacts, GpuProbe, HostSnapshot, SourceStat

__all__ = ["ContainerInfo", "Project", "open_project", "port_free_here"]

PROBE_SCRIPT = (
    "import sys,urllib.request,urllib.error\n"
    "try:\n"
    "    r=urllib.request.urlopen(sys.argv[1],timeout=float(sys.argv[2]))\n"
    "    print(r.status)\n"
    "except urllib.error.HTTPError as e:\n"
    "    print(e.code)\n"
    "except Exception as e:\n"
    "    print('ERR', type(e).__name__, str(e)[:200])\n"
)

# GETs every URL of argv[2:] (timeout argv[1]); bearer tokens per URL come as JSON in the
# environment (LLMSTACK_SCRAPE_AUTH). Prints one JSON object {url: [status, body]}.
SCRAPE_SCRIPT = (
    "import json,os,sys,urllib.request,urllib.error\n"
    "auth=json.loads(os.environ.get('LLMSTACK_SCRAPE_AUTH') or '{}')\n"
    "out={}\n"
    "for url in sys.argv[2:]:\n"
    "    headers={'Authorization':'Bearer '+auth[url]} if url in auth else {}\n"
    "    try:\n"
    "        r=urllib.request.urlopen(urllib.request.Request(url,headers=headers),"
    "timeout=float(sys.argv[1]))\n"
    "        out[url]=[r.status,r.read(8<<20).decode('utf-8','replace')]\n"
    "    except urllib.error.HTTPError as e:\n"
    "        out[url]=[e.code,e.read(4096).decode('utf-8','replace')]\n"
    "    except Exception as e:\n"
    "        out[url]=[None,(type(e).__name__+' '+str(e))[:200]]\n"
    "print(json.dumps(out))\n"
)


def _tar(files: dict[str, tuple[bytes, int]], uid: int, gid: int) -> bytes:
    """A tar of `files` ({path: (data, mode)}) owned by uid:gid, with parent directories."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs = sorted({"/".join(p.split("/")[:i]) for p in files
                       for i in range(1, p.count("/") + 1)})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o700, uid, gid
            tar.addfile(info)
        for path, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, gid, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _tar_dir(path: str, uid: int, gid: int) -> bytes:
    """A tar of one empty folder owned by uid:gid (mode 0700)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(path)
        info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o700, uid, gid
        tar.addfile(info)
    return buf.getvalue()


def _uid(user: str | None) -> tuple[int, int]:
    return parse_user(user) or (0, 0)


def open_project(host: str | None, project: str) -> Project:
    """The project on the engine at `host` (DOCKER_HOST, the context or the local socket)."""
    from .client import connect

    return Project(connect(host), project)


def _ports(c: Container) -> tuple[str, ...]:
    """Docker's NetworkSettings.Ports as sorted "HOSTIP:HOSTPORT->PORT/PROTO" strings."""
    ports = c.attrs.get("NetworkSettings", {}).get("Ports") or {}
    return tuple(sorted(f"{b['HostIp']}:{b['HostPort']}->{p}"
                        for p, bs in ports.items() for b in (bs or [])))


def _key(c: Container) -> str:
    project = c.labels.get(names.LABEL_PROJECT, "")
    return names.service_key(project, c.name, c.labels.get(names.LABEL_SERVICE, c.name))


def _info(c: Container) -> ContainerInfo:
    state = c.attrs.get("State", {})
    return ContainerInfo(
        service=_key(c), name=c.name, id=c.id[:12],
        image=c.attrs.get("Config", {}).get("Image", ""), status=c.status,
        started_at=state.get("StartedAt", ""), ports=_ports(c), labels=dict(c.labels),
        restart_count=int(c.attrs.get("RestartCount", 0)), exit_code=state.get("ExitCode"))


class Project:
    """One project's objects on one engine; the only place that creates or removes them.
    Implements `api.Engine`: it returns llmstack's types, and every public method raises
    EngineError (never docker's or requests' exceptions)."""

    def __init__(self, client: docker.DockerClient, project: str,
                 owner_labels: dict[str, str] | None = None) -> None:
        from docker import errors as docker_errors

        self.client = client
        self.project = project
        self.owner_labels = dict(owner_labels or {})
        self.errors = docker_errors

    def close(self) -> None:
        """Release the connection to the engine (an SSH tunnel for remote engines)."""
        self.client.close()

    # --- reading --------------------------------------------------------------------------

    def _containers(self) -> list[Container]:
        return self.client.containers.list(
            all=True, filters={"label": f"{names.LABEL_PROJECT}={self.project}"})

    @mapped
    def actual(self) -> list[Actual]:
        out = []
        for c in self._containers():
            labels = c.labels
            out.append(Actual(service=_key(c),
                              container_id=c.id, config_hash=labels.get(names.LABEL_HASH, ""),
                              image_id=c.attrs.get("Image", ""), status=c.status,
                              owner=labels.get(names.LABEL_OWNER, "")))
        return out

    @mapped
    def info(self) -> list[ContainerInfo]:
        return [_info(c) for c in self._containers()]

    @mapped
    def image_ids(self, tags: list[str]) -> dict[str, str | None]:
        ids: dict[str, str | None] = {}
        for tag in dict.fromkeys(tags):
            try:
                ids[tag] = self.client.images.get(tag).id
            except self.errors.ImageNotFound:
                ids[tag] = None
        return ids

    def _get(self, service: str) -> Container | None:
        try:
            return self.client.containers.get(names.container(self.project, service))
        except self.errors.NotFound:
            return None

    @mapped
    def container(self, service: str) -> ContainerInfo | None:
        c = self._get(service)
        return _info(c) if c is not None else None

    @mapped
    def read_tree(self, service: str, path: str) -> dict[str, bytes]:
        """The regular files under `path` in a container, keyed by their path relative to
        path's parent (a file's own name for a file); one engine call, read to the end."""
        c = self._get(service)
        if c is None:
            return {}
        try:
            stream, _ = c.get_archive(path)
        except self.errors.NotFound:
            return {}
        files: dict[str, bytes] = {}
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            for member in tar:
                handle = tar.extractfile(member) if member.isfile() else None
                if handle:
                    files[member.name] = handle.read()
        return files

    @mapped
    def volume_has(self, volume: str, path: str, image: str) -> bool:
        """Whether `path` exists in named volume `volume` (checked through a stopped container)."""
        try:
            self.client.volumes.get(volume)
        except self.errors.NotFound:
            return False
        c = self.client.containers.create(image, command=["true"], entrypoint=[],
                                          mounts=[_mount(volume, "/v", "volume", True)],
                                          labels={names.LABEL_PROJECT + ".tmp": self.project})
        try:
            return path_stat(c, "/v/" + path.lstrip("/")) is not None
        finally:
            c.remove(force=True)

    @mapped
    def published_elsewhere(self) -> dict[int, str]:
        """Host ports published by containers of other projects: {port: container name}."""
        used: dict[int, str] = {}
        for c in self.client.containers.list():
            if c.labels.get(names.LABEL_PROJECT) == self.project:
                continue
            for bindings in (c.attrs.get("NetworkSettings", {}).get("Ports") or {}).values():
                for b in bindings or []:
                    if b.get("HostPort"):
                        used[int(b["HostPort"])] = c.name
        return used

    # --- writing --------------------------------------------------------------------------

    @mapped
    def ensure_network(self) -> None:
        name = names.network(self.project)
        if not self.client.networks.list(names=[name]):
            self.client.networks.create(name, driver="bridge",
                                        labels={names.LABEL_PROJECT: self.project,
                                                **self.owner_labels})

    def _ensure_volume(self, volume: str) -> None:
        """A volume of the stack's own, labelled so that `down --volumes` removes it."""
        try:
            self.client.volumes.get(volume)
        except self.errors.NotFound:
            self.client.volumes.create(volume, labels={names.LABEL_PROJECT: self.project})

    @mapped
    def write_config(self, svc: ServiceSpec, extra: dict[str, tuple[bytes, int]] | None = None
                     ) -> None:
        """Fill the service's config volume through the engine API (works on remote engines)."""
        volume = names.config_volume(self.project, svc.service)
        self._ensure_volume(volume)
        files = {name: (data, 0o644) for name, data in svc.config.items()}
        files.update(extra or {})
        uid, gid = _uid(svc.user)
        self._put(svc.image, volume, _tar(files, uid, gid), f"the config of {svc.service}")

    def _door(self, volume: str, image: str, read_only: bool) -> Container:
        """A created-never-started container of `image` with `volume` on /v: the volume's
        door for archive reads and writes through the engine API."""
        return self.client.containers.create(
            image, command=["true"], entrypoint=[], user="0:0",
            mounts=[_mount(volume, "/v", "volume", read_only)],
            labels={names.LABEL_PROJECT + ".tmp": self.project})

    def _put(self, image: str, volume: str, archive: bytes, what: str) -> None:
        """Unpack `archive` into `volume`: a created-never-started container of the service's
        own image (present: it is about to run) is the volume's door."""
        door = self._door(volume, image, read_only=False)
        try:
            if not door.put_archive("/v", archive):
                raise EngineError(f"could not write {what}",
                                  "check the engine's disk space and logs")
        finally:
            door.remove(force=True)

    @mapped
    def write_volume(self, volume: str, files: dict[str, bytes], image: str) -> None:
        self._ensure_volume(volume)
        self._put(image, volume, _tar({n: (d, 0o644) for n, d in files.items()}, 0, 0), volume)

    @mapped
    def read_volume(self, volume: str, image: str) -> dict[str, bytes]:
        try:
            self.client.volumes.get(volume)
        except self.errors.NotFound:
            return {}
        door = self._door(volume, image, read_only=True)
        try:
            stream, _ = door.get_archive("/v/.")
            files: dict[str, bytes] = {}
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                for member in tar:
                    handle = tar.extractfile(member) if member.isfile() else None
                    if handle:
                        files[member.name.split("/", 1)[1]] = handle.read()
            return files
        finally:
            door.remove(force=True)

    @mapped
    def remove(self, service: str) -> None:
        c = self._get(service)
        if c is not None:
            c.remove(force=True)

    @mapped
    def rename(self, key: str, new_key: str) -> None:
        c = self._get(key)
        if c is None:
            raise EngineError(f"no container {names.container(self.project, key)} to rename",
                              "run `llmstack up` again")
        c.rename(names.container(self.project, new_key))

    @mapped
    def start(self, svc: ServiceSpec, key: str | None = None) -> str:
        """Create and start the service's container: a translation of `svc`, deciding nothing
        (every setting is in the ServiceSpec, as `export.compose` translates it too)."""
        from docker.types import DeviceRequest

        key = key or svc.service
        self.remove(key)
        for m in svc.mounts:
            if m.managed:
                self._ensure_volume(m.source)
                if m.owned_dir and svc.owner:
                    self._put(svc.image, m.source, _tar_dir(m.owned_dir, *svc.owner),
                              f"the folder {m.owned_dir} of volume {m.source}")
        config = [_mount(names.config_volume(self.project, svc.service), svc.config_mount,
                         "volume", True)] if svc.config else []
        kwargs: dict[str, Any] = {
            "name": names.container(self.project, key),
            "command": svc.command,
            "environment": svc.env,
            "labels": {names.LABEL_PROJECT: self.project, names.LABEL_SERVICE: svc.service,
                       names.LABEL_ROLE: svc.role, names.LABEL_HASH: svc.config_hash(),
                       **self.owner_labels},
            "network": names.network(self.project),
            "ports": svc.ports,
            "mounts": config + [_mount(m.source, m.target, m.kind, m.read_only)
                                for m in svc.mounts],
            "restart_policy": {"Name": svc.restart},
            "cap_drop": list(svc.cap_drop),
            "security_opt": ["no-new-privileges=true"] if svc.no_new_privileges else [],
            "read_only": svc.read_only,
            "tmpfs": dict(svc.tmpfs),
            "pids_limit": svc.pids_limit,
            "detach": True,
            "init": svc.init,
        }
        if svc.cap_add:
            kwargs["cap_add"] = list(svc.cap_add)
        if svc.entrypoint is not None:
            kwargs["entrypoint"] = svc.entrypoint
        if svc.user:
            kwargs["user"] = svc.user
        if svc.gpus:
            # Exactly the listed GPUs: device_ids, never count=-1 (all) and never privileged.
            kwargs["device_requests"] = [DeviceRequest(**gpu.device_request(svc.gpus))]
        if svc.shm_size:
            kwargs["shm_size"] = svc.shm_size
        if svc.resources.memory:
            kwargs["mem_limit"] = svc.resources.memory
        if svc.resources.cpus:
            kwargs["nano_cpus"] = int(svc.resources.cpus * 1e9)
        container = self.client.containers.create(svc.image, **kwargs)
        container.start()
        return str(container.id)

    @mapped
    def run_task(self, task: Task, on_line: Callable[[str], None]) -> int:
        """Run a one-shot container to completion, streaming its output line by line."""
        name = names.container(self.project, task.name)
        old = self._get(task.name)
        if old is not None:  # left by an interrupted run
            old.remove(force=True)
        c = self.client.containers.create(
            task.image, command=task.command, entrypoint=task.entrypoint,
            environment=task.env, name=name, network=names.network(self.project),
            labels={names.LABEL_PROJECT + ".tmp": self.project, names.LABEL_ROLE: "task"},
            mounts=[_mount(m.source, m.target, m.kind, m.read_only) for m in task.mounts],
            user=task.user, cap_drop=["ALL"], security_opt=["no-new-privileges=true"],
            read_only=True, tmpfs={"/tmp": "rw,nosuid,nodev,size=64m"}, init=True,
            mem_limit=task.memory, pids_limit=task.pids, detach=True)
        try:
            c.start()
            pending = b""
            for chunk in c.logs(stream=True, follow=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    on_line(line.decode(errors="replace"))
            if pending:
                on_line(pending.decode(errors="replace"))
            return int(c.wait().get("StatusCode", 1))
        finally:
            c.remove(force=True)

    @mapped
    def exec(self, service: str, cmd: list[str], environment: dict[str, str] | None = None
             ) -> tuple[int, str]:
        """Run `cmd` in the service's container. Pass secrets in `environment`, never in
        `cmd`: arguments show up in `ps` and in the engine's exec records."""
        c = self._get(service)
        if c is None or c.status != "running":
            raise EngineError(f"{service} is not running", "run `llmstack up`")
        result = c.exec_run(cmd, demux=False, environment=environment)
        return int(result.exit_code or 0), (result.output or b"").decode(errors="replace")

    @mapped
    def probe(self, url: str, timeout: float = 2.0) -> str:
        """GET `url` from inside the project network (via the health container): the status
        code as text, or 'ERR ...'. Works the same on a remote engine."""
        code, out = self.exec(names.HEALTH, ["python3", "-c", PROBE_SCRIPT, url, str(timeout)])
        return out.strip() if code == 0 else f"ERR exec exit {code}"

    def probes(self, urls: list[str], timeout: float = 2.0) -> dict[str, str]:
        if not urls:
            return {}
        answers = self.scrape(urls, timeout=timeout)
        return {url: str(answers[url][0]) if answers.get(url, (None,))[0] is not None
                else "ERR " + (answers[url][1] if url in answers else "no answer")
                for url in urls}

    @mapped
    def scrape(self, urls: list[str], auth: dict[str, str] | None = None,
               timeout: float = 2.0) -> dict[str, tuple[int | None, str]]:
        """GET each URL from inside the project network, in one exec in the health container
        (works the same on a remote engine); bearer tokens travel in the environment."""
        if not urls:
            return {}
        env = {"LLMSTACK_SCRAPE_AUTH": json.dumps(auth)} if auth else None
        code, out = self.exec(names.HEALTH, ["python3", "-c", SCRAPE_SCRIPT, str(timeout),
                                             *urls], environment=env)
        try:
            answers = json.loads(out.strip().splitlines()[-1]) if code == 0 else None
        except (ValueError, IndexError):
            answers = None
        if not isinstance(answers, dict):
            raise EngineError(f"reading metrics in the health container failed (exit {code}): "
                              f"{' '.join(out.split())[:200]}", "check `llmstack logs health`")
        return {url: (answers[url][0], answers[url][1]) for url in urls if url in answers}

    @mapped
    def logs(self, service: str, tail: int = 50, follow: bool = False) -> Iterator[bytes]:
        c = self._get(service)
        if c is None:
            raise EngineError(f"no container for service {service!r}",
                              "`llmstack status` lists the services")
        if follow:
            yield from c.logs(stream=True, follow=True, tail=tail)
        else:
            yield c.logs(tail=tail)

    @mapped
    def state(self, service: str) -> tuple[str, int | None]:
        c = self._get(service)
        if c is None:
            return "missing", None
        c.reload()
        return c.status, c.attrs.get("State", {}).get("ExitCode")

    @mapped
    def tail_logs(self, service: str, lines: int = 20) -> str:
        c = self._get(service)
        if c is None:
            return ""
        return c.logs(tail=lines).decode(errors="replace").rstrip()

    @mapped
    def activity(self, service: str, cursor: str = "") -> Activity:
        c = self._get(service)
        if c is None:
            return Activity("", cursor)
        after = int(cursor or 0)  # nanoseconds since the epoch, on the engine's clock
        # `since` is whole microseconds at best (a float): lines at or before the cursor are
        # dropped by their own timestamps, so none is ever counted twice.
        raw = c.logs(timestamps=True, since=after / 1e9 if after else None)
        lines = []
        for line in raw.decode(errors="replace").splitlines():
            stamp, _, text = line.partition(" ")
            ns = log_time_ns(stamp)
            if ns > after:
                lines.append(text)
                cursor = str(ns)
        try:
            stats = c.stats(stream=False, one_shot=True)
        except self.errors.InvalidVersion:  # API < 1.41: two samples, about a second
            stats = c.stats(stream=False)
        io = (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []
        return Activity("\n".join(lines), cursor,
                        read_bytes=sum(int(e.get("value") or 0) for e in io
                                       if str(e.get("op", "")).lower() == "read"),
                        memory_bytes=int((stats.get("memory_stats") or {}).get("usage") or 0))

    @mapped
    def down(self, volumes: bool = False) -> list[str]:
        removed = []
        for c in self._containers():
            c.remove(force=True)
            removed.append(c.name)
        for c in self.client.containers.list(
                all=True, filters={"label": f"{names.LABEL_PROJECT}.tmp={self.project}"}):
            c.remove(force=True)
        for net in self.client.networks.list(names=[names.network(self.project)]):
            net.remove()
        if volumes:
            for vol in self.client.volumes.list(
                    filters={"label": f"{names.LABEL_PROJECT}={self.project}"}):
                vol.remove(force=True)
        return removed

    # --- the host, seen through the engine ------------------------------------------------

    def is_local(self) -> bool:
        from .client import is_local

        return is_local(self.client)

    @mapped
    def host_snapshot(self, candidates: list[str]) -> HostSnapshot | None:
        from .host import host_snapshot

        return host_snapshot(self.client, candidates, self.project)

    @mapped
    def query_gpus(self, candidates: list[str], utilization: bool = False) -> GpuProbe:
        from .host import query_gpus

        return query_gpus(self.client, candidates, self.project, utilization)

    @mapped
    def engine_facts(self) -> EngineFacts:
        from .host import engine_facts

        return engine_facts(self.client)

    @mapped
    def present_images(self, tags: list[str]) -> dict[str, bool]:
        return {tag: image_id is not None for tag, image_id in self.image_ids(tags).items()}

    @mapped
    def registry_digest(self, ref: str) -> str:
        from .registry import registry_digest

        return registry_digest(self.client, ref)

    @mapped
    def pull(self, ref: str, progress: Callable[[str], None]) -> str:
        from .registry import pull

        return pull(self.client, ref, progress)

    @mapped
    def published_ports(self) -> list[dict[str, Any]]:
        from .host import published_ports

        return published_ports(self.client)

    @mapped
    def running_services(self) -> dict[str, str]:
        from .host import running_services

        return running_services(self.client, self.project)

    @mapped
    def stat_source(self, image: str, kind: str, location: str, path: str) -> SourceStat:
        from .host import stat_source

        return stat_source(self.client, image, kind, location, path, self.project)

    def image_env(self, refs: list[str]) -> dict[str, list[str]]:
        from .host import image_env

        return image_env(self.client, refs)

    def read_source(self, image: str, kind: str, location: str, path: str, limit: int
                    ) -> bytes | None:
        from .host import read_source

        return read_source(self.client, image, kind, location, path, limit, self.project)


def log_time_ns(stamp: str) -> int:
    """Nanoseconds since the epoch of a log line's RFC 3339 timestamp (the engine's, with up
    to nine decimals: datetime keeps six); 0 when it is not one."""
    try:
        whole, _, rest = stamp.rstrip("Z").partition(".")
        seconds = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
        return int(seconds.timestamp()) * 10**9 + int((rest + "000000000")[:9] or 0)
    except ValueError:
        return 0


def _mount(source: str, target: str, kind: str, read_only: bool) -> Any:
    from docker.types import Mount

    return Mount(target=target, source=source, type=kind, read_only=read_only)


def path_stat(container: Container, path: str) -> dict[str, Any] | None:
    """Stat of a path in a container without transferring it (HEAD /containers/{id}/archive).

    get_archive would stream the whole file, and an unread archive stream keeps the
    container locked in the engine, which hangs the next archive call.
    """
    from docker.utils import decode_json_header

    api = container.client.api
    res = api.head(api._url("/containers/{0}/archive", container.id), params={"path": path})
    if res.status_code == 404:
        return None
    api._raise_for_status(res)
    header = res.headers.get("X-Docker-Container-Path-Stat")
    return decode_json_header(header) if header else None


def port_free_here(bind: str, port: int) -> bool:
    """Whether this machine could bind (bind, port): a local engine would need it free."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind, port))
        except OSError:
            return False
    return True

