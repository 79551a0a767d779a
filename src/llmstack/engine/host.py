"""What the target host is like, read through the engine API only (works the same over ssh://).

Every probe is a short-lived container removed afterwards: nvidia-smi with a device request
for all GPUs (discovery only; models get exact device ids), `df` of the engine's data root
(a container's root file system lives there), and the host's listening sockets from
/proc/net/tcp of a host-network container. Nothing here decides ok/fail: see doctor.py.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import gpu as gpumod
from .. import names
from .api import mapped
from .containers import path_stat

if TYPE_CHECKING:
    import docker

PROBE_TIMEOUT = 60  # seconds a probe container may run
# Go's os.ModeDir bit in the archive stat header.
MODE_DIR = 1 << 31
_NO_RUNTIME = ("could not select device driver", "unknown or invalid runtime name",
               "unknown runtime specified")


@dataclass(frozen=True)
class EngineFacts:
    version: str
    api_version: str
    os: str
    arch: str
    kernel: str
    operating_system: str
    root_dir: str
    runtimes: list[str]
    default_runtime: str
    system_time: dt.datetime | None
    skew_s: float | None  # engine clock minus this machine's clock, latency-corrected
    name: str
    ncpu: int
    mem_bytes: int
    # docker info's SecurityOptions ("name=rootless", ...), CgroupVersion, CgroupDriver
    security_options: tuple[str, ...] = ()
    cgroup_version: str = ""
    cgroup_driver: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "api_version": self.api_version, "os": self.os,
                "arch": self.arch, "kernel": self.kernel,
                "operating_system": self.operating_system, "root_dir": self.root_dir,
                "runtimes": self.runtimes, "default_runtime": self.default_runtime,
                "system_time": self.system_time.isoformat() if self.system_time else None,
                "clock_skew_s": None if self.skew_s is None else round(self.skew_s, 2),
                "name": self.name, "ncpu": self.ncpu, "mem_bytes": self.mem_bytes,
                "security_options": list(self.security_options),
                "cgroup_version": self.cgroup_version, "cgroup_driver": self.cgroup_driver}


def parse_engine_time(value: str) -> dt.datetime | None:
    """Docker's SystemTime (RFC 3339 with nanoseconds) as an aware datetime."""
    if not value:
        return None
    text = value.strip().replace("Z", "+00:00")
    main, _, rest = text.partition(".")
    if rest:  # keep at most microseconds; the offset follows the fraction
        digits = rest[:len(rest) - len(rest.lstrip("0123456789"))]
        offset = rest[len(digits):]
        text = f"{main}.{digits[:6].ljust(6, '0')}{offset}"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@mapped
def engine_facts(client: docker.DockerClient) -> EngineFacts:
    version = client.version()
    before = time.time()
    info = client.info()
    after = time.time()
    system_time = parse_engine_time(str(info.get("SystemTime", "")))
    skew = None
    if system_time is not None:
        skew = system_time.timestamp() - (before + after) / 2
    return EngineFacts(
        version=str(version.get("Version", "?")), api_version=str(version.get("ApiVersion", "?")),
        os=str(version.get("Os", "?")), arch=str(version.get("Arch", "?")),
        kernel=str(version.get("KernelVersion", "?")),
        operating_system=str(info.get("OperatingSystem", "?")),
        root_dir=str(info.get("DockerRootDir", "")),
        runtimes=sorted((info.get("Runtimes") or {}).keys()),
        default_runtime=str(info.get("DefaultRuntime", "")), system_time=system_time,
        skew_s=skew, name=str(info.get("Name", "")), ncpu=int(info.get("NCPU") or 0),
        mem_bytes=int(info.get("MemTotal") or 0),
        security_options=tuple(str(o) for o in info.get("SecurityOptions") or []),
        cgroup_version=str(info.get("CgroupVersion", "")),
        cgroup_driver=str(info.get("CgroupDriver", "")))


@mapped
def present_images(client: docker.DockerClient, tags: list[str]) -> dict[str, bool]:
    from docker.errors import ImageNotFound

    out: dict[str, bool] = {}
    for tag in dict.fromkeys(tags):
        try:
            client.images.get(tag)
            out[tag] = True
        except ImageNotFound:
            out[tag] = False
    return out


def _run(client: docker.DockerClient, image: str, command: list[str], entrypoint: list[str],
         project: str, **extra: Any) -> tuple[int, str]:
    """Run a throwaway container to completion: (exit code, stdout+stderr). Engine errors
    (e.g. no GPU driver at start) propagate as docker.errors.APIError."""
    labels = {names.LABEL_PROJECT + ".tmp": project, "llmstack.probe": "1"}
    container = client.containers.create(
        image, command=command, entrypoint=entrypoint, labels=labels, detach=True,
        cap_drop=["ALL"], security_opt=["no-new-privileges=true"], user="0:0", **extra)
    try:
        container.start()
        result = container.wait(timeout=PROBE_TIMEOUT)
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
        return int(result.get("StatusCode", 1)), output
    finally:
        container.remove(force=True)


@dataclass(frozen=True)
class GpuProbe:
    """status: ok | no-runtime (the engine cannot give containers GPUs) | no-image (nothing
    to run nvidia-smi in) | error (runtime present, nvidia-smi failed)."""

    status: str
    gpus: list[gpumod.Gpu] = field(default_factory=list)
    image: str | None = None
    detail: str = ""
    nvidia_smi: str = ""  # the plain `nvidia-smi` table: its header has the driver's CUDA

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "image": self.image, "detail": self.detail,
                "gpus": [g.to_dict() for g in self.gpus]}


@mapped
def query_gpus(client: docker.DockerClient, candidates: list[str], project: str = "llmstack",
               utilization: bool = False) -> GpuProbe:
    """The host's GPUs from nvidia-smi run in the first present image of `candidates`.

    The NVIDIA container toolkit mounts nvidia-smi into any glibc image, so the stack's own
    images do; no pull is needed."""
    from docker.errors import APIError, DockerException
    from docker.types import DeviceRequest

    present = present_images(client, candidates)
    image = next((t for t in candidates if present.get(t)), None)
    if image is None:
        return GpuProbe("no-image", detail="none of these images is on the engine: "
                        + ", ".join(dict.fromkeys(candidates)))
    # Discovery only: every GPU (count=-1), no network, only the driver's compute and
    # utility libraries, removed at once; both nvidia-smi runs below take the same settings.
    discovery: dict[str, Any] = {
        "device_requests": [DeviceRequest(driver=gpumod.DEVICE_DRIVER, count=-1,
                                          capabilities=[["gpu"]])],
        "environment": {"NVIDIA_DRIVER_CAPABILITIES": "compute,utility"},
        "network_mode": "none"}
    try:
        # `top` also asks for utilisation; doctor only for names and memory.
        query = gpumod.NVIDIA_SMI_TOP_QUERY if utilization else gpumod.NVIDIA_SMI_QUERY
        code, out = _run(client, image, query, ["nvidia-smi"], project, **discovery)
    except APIError as exc:
        text = str(exc.explanation or exc)
        if any(marker in text for marker in _NO_RUNTIME):
            return GpuProbe("no-runtime", image=image, detail=text.strip())
        return GpuProbe("error", image=image, detail=text.strip()[:400])
    except DockerException as exc:
        return GpuProbe("error", image=image, detail=str(exc)[:400])
    if code != 0:
        return GpuProbe("error", image=image,
                        detail=f"nvidia-smi exited {code}: {' '.join(out.split())[:300]}")
    try:
        gpus = gpumod.parse_nvidia_smi(out)
    except gpumod.GpuQueryError as exc:
        return GpuProbe("error", image=image, detail=str(exc))
    if utilization:  # `top` asks every few seconds: no table (one container less)
        return GpuProbe("ok", gpus, image=image)
    try:  # the table's header says the driver's CUDA version (no --query field does)
        _, table = _run(client, image, [], ["nvidia-smi"], project, **discovery)
    except DockerException:
        table = ""
    return GpuProbe("ok", gpus, image=image, nvidia_smi=table)


@mapped
def image_env(client: docker.DockerClient, refs: list[str]) -> dict[str, list[str]]:
    """The Env of each present image's config ({} for a missing one)."""
    from docker.errors import ImageNotFound

    out: dict[str, list[str]] = {}
    for ref in dict.fromkeys(refs):
        try:
            out[ref] = list(client.images.get(ref).attrs.get("Config", {}).get("Env") or [])
        except ImageNotFound:
            continue
    return out


@dataclass(frozen=True)
class HostSnapshot:
    """Raw `df -Pk /` of a container (the engine's data root) and /proc/net/tcp{,6} of the
    host's network namespace."""

    image: str
    df: str
    net: str


@mapped
def host_snapshot(client: docker.DockerClient, candidates: list[str],
                  project: str = "llmstack") -> HostSnapshot | None:
    present = present_images(client, candidates)
    image = next((t for t in candidates if present.get(t)), None)
    if image is None:
        return None
    script = "df -Pk /; echo @@; cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; true"
    _, out = _run(client, image, ["-c", script], ["/bin/sh"], project, network_mode="host")
    df, _, net = out.partition("@@")
    return HostSnapshot(image, df, net)


@mapped
def published_ports(client: docker.DockerClient) -> list[dict[str, Any]]:
    """Every published port of running containers: {port, ip, container, project} (one
    list call, cheap over ssh)."""
    out = []
    for c in client.api.containers():
        labels = c.get("Labels") or {}
        name = (c.get("Names") or ["?"])[0].lstrip("/")
        for p in c.get("Ports") or []:
            if p.get("PublicPort"):
                out.append({"port": int(p["PublicPort"]), "ip": p.get("IP", ""),
                            "container": name, "project": labels.get(names.LABEL_PROJECT)})
    return out


@dataclass(frozen=True)
class SourceStat:
    exists: bool
    size: int | None = None
    is_dir: bool = False


def _source_mount(client: docker.DockerClient, kind: str, location: str, path: str
                  ) -> tuple[Any, str] | None:
    """A read-only mount of a model's volume:/host: source at /v and the path in it of
    `path`; None when the named volume does not exist."""
    from docker.errors import NotFound
    from docker.types import Mount

    if kind == "volume":
        try:
            client.volumes.get(location)
        except NotFound:
            return None
        return Mount("/v", location, type="volume", read_only=True), "/v/" + path.lstrip("/")
    parent, _, leaf = path.rpartition("/")
    return Mount("/v", parent or "/", type="bind", read_only=True), "/v/" + leaf


@mapped
def stat_source(client: docker.DockerClient, image: str, kind: str, location: str, path: str,
                project: str = "llmstack") -> SourceStat:
    """Whether a model's volume:/host: source exists on the target, and its size."""
    from docker.errors import APIError

    source = _source_mount(client, kind, location, path)
    if source is None:
        return SourceStat(False)
    mount, inside = source
    try:
        c = client.containers.create(image, command=["true"], entrypoint=[], mounts=[mount],
                                     labels={names.LABEL_PROJECT + ".tmp": project})
    except APIError:  # a bind source missing on the host is refused at create
        return SourceStat(False)
    try:
        stat = path_stat(c, inside)
    finally:
        c.remove(force=True)
    if stat is None:
        return SourceStat(False)
    mode = int(stat.get("mode", 0))
    return SourceStat(True, int(stat.get("size", 0)), bool(mode & MODE_DIR))


@mapped
def read_source(client: docker.DockerClient, image: str, kind: str, location: str, path: str,
                limit: int, project: str = "llmstack") -> bytes | None:
    """The first `limit` bytes of the file `path` of a model's volume:/host: source (its
    config.json, a GGUF header); None when it cannot be read. Runs `head` in `image` with the
    source mounted read-only and no network; base64 keeps binary intact through the log."""
    import base64
    import binascii

    from docker.errors import APIError

    source = _source_mount(client, kind, location, path)
    if source is None:
        return None
    mount, inside = source
    try:
        c = client.containers.create(
            image, entrypoint=["sh", "-c", 'head -c "$1" "$2" | base64', "sh"],
            command=[str(limit), inside], mounts=[mount], network_mode="none",
            labels={names.LABEL_PROJECT + ".tmp": project})
    except APIError:
        return None
    try:
        c.start()
        if c.wait(timeout=120).get("StatusCode") != 0:
            return None
        text = c.logs(stdout=True, stderr=False)
    except APIError:
        return None
    finally:
        c.remove(force=True)
    try:
        return base64.b64decode(b"".join(text.split())) or None
    except binascii.Error:
        return None


@mapped
def running_services(client: docker.DockerClient, project: str) -> dict[str, str]:
    """{service: state} of the project's containers (one list call)."""
    out = {}
    for c in client.api.containers(all=True,
                                   filters={"label": f"{names.LABEL_PROJECT}={project}"}):
        service = (c.get("Labels") or {}).get(names.LABEL_SERVICE)
        if service:
            out[service] = str(c.get("State", ""))
    return out
