"""`engine.containers.Project`'s translation of the Docker SDK into llmstack's types, on an
in-memory stand-in for docker's client (the real engine runs the same calls in
tests/integration/test_engine_compliance.py): container info and ports, config volumes as
tar archives, exec, logs, down, and docker's exceptions arriving as EngineError."""

from __future__ import annotations

import io
import tarfile
from typing import Any

import pytest
import requests
from docker import errors as docker_errors

from llmstack import names
from llmstack.engine import api
from llmstack.engine.containers import Project, port_free_here
from llmstack.errors import EngineError, UserError
from llmstack.plan import CONFIG_ROOT, ServiceSpec


class Container:
    def __init__(self, client: DockerClient, name: str, image: str, **kw: Any) -> None:
        self.client, self.name, self.image = client, name, image
        self.id = f"{len(client.all) + 1:064x}"
        self.labels: dict[str, str] = dict(kw.get("labels") or {})
        self.mounts = {m["Target"]: m["Source"] for m in kw.get("mounts") or []}
        self.status = "created"
        self.kwargs = kw
        ports = {p: [{"HostIp": b, "HostPort": str(h)}] for p, (b, h) in
                 (kw.get("ports") or {}).items()}
        self.attrs: dict[str, Any] = {
            "Image": f"sha256:{image}", "Config": {"Image": image}, "RestartCount": 0,
            "State": {"StartedAt": "2030-01-01T00:00:00.5Z", "ExitCode": 0},
            "NetworkSettings": {"Ports": ports}}

    def start(self) -> None:
        self.status = "running"

    def reload(self) -> None:
        pass

    def remove(self, force: bool = False) -> None:
        del self.client.all[self.name]

    def _volume(self, path: str) -> tuple[dict[str, bytes], str]:
        target = next(t for t in self.mounts if path == t or path.startswith(t + "/"))
        return self.client.volume_files.setdefault(self.mounts[target], {}), \
            path[len(target):].lstrip("/")

    def put_archive(self, path: str, data: bytes) -> bool:
        files, _ = self._volume(path)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                handle = tar.extractfile(member) if member.isfile() else None
                if handle:
                    files[member.name] = handle.read()
        return True

    def get_archive(self, path: str) -> tuple[list[bytes], dict[str, Any]]:
        files, rel = self._volume(path)
        found = {n: d for n, d in files.items() if n == rel or n.startswith(rel + "/")}
        if not found:
            raise docker_errors.NotFound(f"Could not find the file {path}")
        buf = io.BytesIO()
        base = path.rstrip("/").rsplit("/", 1)[-1]
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in found.items():
                info = tarfile.TarInfo(base + name[len(rel):])
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return [buf.getvalue()], {}

    def exec_run(self, cmd: list[str], demux: bool = False,
                 environment: dict[str, str] | None = None) -> Any:
        self.client.execs.append((self.name, cmd, environment))
        code, out = self.client.exec_result
        return type("R", (), {"exit_code": code, "output": out})()

    def logs(self, tail: int = 50, stream: bool = False, follow: bool = False,
             **kw: Any) -> Any:
        lines = [b"line 1\n", b"line 2\n"][-tail:]
        if self.kwargs.get("entrypoint") == ["/bin/sh"]:  # host_snapshot's probe
            lines = [b"Filesystem 1024-blocks Used Available Capacity Mounted on\n",
                     b"overlay 100 50 50 50% /\n@@\n", b"sl local_address\n"]
        return iter(lines) if stream else b"".join(lines)

    def wait(self, timeout: int = 0) -> dict[str, int]:
        return {"StatusCode": 0}


class Collection:
    def __init__(self, client: DockerClient) -> None:
        self.client = client


class Containers(Collection):
    def get(self, name: str) -> Container:
        if self.client.broken:
            raise requests.exceptions.ConnectionError("Connection aborted.")
        try:
            return self.client.all[name]
        except KeyError:
            raise docker_errors.NotFound(f"No such container: {name}") from None

    def list(self, all: bool = False, filters: dict[str, str] | None = None) -> list[Container]:
        key, _, value = (filters or {}).get("label", "").partition("=")
        return [c for c in self.client.all.values() if not key or c.labels.get(key) == value]

    def create(self, image: str, **kw: Any) -> Container:
        if image not in self.client.images_present:
            raise docker_errors.ImageNotFound(f"No such image: {image}")
        name = kw.pop("name", f"anon-{len(self.client.all)}")
        c = Container(self.client, name, image, **kw)
        self.client.all[name] = c
        return c


class Images(Collection):
    def get(self, tag: str) -> Any:
        if tag not in self.client.images_present:
            raise docker_errors.ImageNotFound(tag)
        return type("I", (), {"id": f"sha256:{tag}"})()


class Volumes(Collection):
    def get(self, name: str) -> Any:
        if name not in self.client.volumes_made:
            raise docker_errors.NotFound(name)
        return self.client.volumes_made[name]

    def create(self, name: str, labels: dict[str, str]) -> None:
        client = self.client
        client.volumes_made[name] = type("V", (), {
            "labels": labels, "remove": lambda self, force=False: client.volumes_made.pop(name)})()

    def list(self, filters: dict[str, str]) -> list[Any]:
        key, _, value = filters["label"].partition("=")
        return [v for v in self.client.volumes_made.values() if v.labels.get(key) == value]


class Networks(Collection):
    def list(self, names: list[str]) -> list[Any]:
        client = self.client
        return [type("N", (), {"name": n, "remove": lambda self, n=n: client.nets.remove(n)})()
                for n in names if n in client.nets]

    def create(self, name: str, driver: str, labels: dict[str, str]) -> None:
        self.client.nets.append(name)


class DockerClient:
    def __init__(self) -> None:
        self.all: dict[str, Container] = {}
        self.images_present = {"img:1"}
        self.volumes_made: dict[str, Any] = {}
        self.volume_files: dict[str, dict[str, bytes]] = {}
        self.nets: list[str] = []
        self.execs: list[tuple[str, list[str], Any]] = []
        self.exec_result: tuple[int, bytes] = (0, b"ok\n")
        self.broken = False
        self.containers, self.images = Containers(self), Images(self)
        self.volumes, self.networks = Volumes(self), Networks(self)
        client = self

        class API:
            base_url = "http+docker://localhost"

            def containers(self, all: bool = False, filters: dict[str, str] | None = None
                           ) -> list[dict[str, Any]]:
                return [{"Names": ["/" + c.name], "Labels": c.labels, "State": c.status,
                         "Ports": [{"PublicPort": int(b[0]["HostPort"]), "IP": b[0]["HostIp"]}
                                   for b in c.attrs["NetworkSettings"]["Ports"].values()]}
                        for c in Containers(client).list(all=all, filters=filters)
                        if all or c.status == "running"]

        self.api = API()


@pytest.fixture
def docker() -> DockerClient:
    return DockerClient()


@pytest.fixture
def project(docker: DockerClient) -> Project:
    return Project(docker, "p")  # type: ignore[arg-type]


def svc(name: str = "svc", **kw: Any) -> ServiceSpec:
    return ServiceSpec(**{"service": name, "role": "test", "image": "img:1", "command": ["x"],
                          **kw})


def test_a_started_service_reads_back_as_container_info(project: Project,
                                                        docker: DockerClient) -> None:
    assert isinstance(project, api.Engine)
    project.ensure_network()
    project.ensure_network()
    assert docker.nets == ["p-net"]
    spec = svc(ports={"8080/tcp": ("127.0.0.1", 4000)})
    cid = project.start(spec)
    info = project.container("svc")
    assert info is not None and info.id == cid[:12]
    assert info.ports == ("127.0.0.1:4000->8080/tcp",)
    assert info.labels[names.LABEL_HASH] == spec.config_hash()
    assert (info.image, info.status, info.exit_code) == ("img:1", "running", 0)
    assert project.info() == [info]
    assert project.state("svc") == ("running", 0)
    assert project.state("nope") == ("missing", None)
    assert project.container("nope") is None
    (actual,) = project.actual()
    assert (actual.service, actual.image_id) == ("svc", "sha256:img:1")
    assert project.image_ids(["img:1", "img:2"]) == {"img:1": "sha256:img:1", "img:2": None}
    assert project.is_local()


def test_config_volume_round_trip_through_archives(project: Project,
                                                   docker: DockerClient) -> None:
    spec = svc(config={"a.conf": b"A"}, user="10001:10001")
    project.write_config(spec, {"secrets/k": (b"K", 0o600)})
    project.start(spec)
    assert list(docker.all) == ["p-svc"]  # the door container is gone
    mount = f"{CONFIG_ROOT}/svc"
    assert project.read_tree("svc", f"{mount}/secrets") == {"secrets/k": b"K"}
    assert project.read_tree("svc", f"{mount}/a.conf") == {"a.conf": b"A"}
    assert project.read_tree("svc", f"{mount}/none") == {}
    assert project.read_tree("nope", mount) == {}
    assert "p-svc-config" in docker.volumes_made


def test_exec_probe_logs(project: Project, docker: DockerClient) -> None:
    project.start(svc())
    project.start(svc(names.HEALTH))
    assert project.exec("svc", ["true"], environment={"K": "v"}) == (0, "ok\n")
    assert docker.execs[-1] == ("p-svc", ["true"], {"K": "v"})
    docker.exec_result = (0, b"503\n")
    assert project.probe("http://p-svc:1/") == "503"
    docker.exec_result = (1, b"")
    assert project.probe("http://p-svc:1/") == "ERR exec exit 1"
    assert project.tail_logs("svc") == "line 1\nline 2"
    assert project.tail_logs("nope") == ""
    assert list(project.logs("svc", tail=1)) == [b"line 2\n"]
    assert list(project.logs("svc", follow=True)) == [b"line 1\n", b"line 2\n"]
    with pytest.raises(EngineError, match="no container for service 'nope'"):
        list(project.logs("nope"))
    with pytest.raises(EngineError, match="nope is not running"):
        project.exec("nope", ["true"])


def test_down_and_remove(project: Project, docker: DockerClient) -> None:
    project.ensure_network()
    project.write_config(svc(config={"a": b"1"}))
    project.start(svc())
    project.start(svc("other"))
    project.remove("other")
    project.remove("other")
    assert project.down(volumes=True) == ["p-svc"]
    assert docker.all == {} and docker.nets == [] and docker.volumes_made == {}


def test_docker_and_requests_errors_become_engine_errors(project: Project,
                                                         docker: DockerClient) -> None:
    with pytest.raises(EngineError) as err:
        project.start(svc(image="img:missing"))
    assert err.value.message.startswith("ImageNotFound: ")
    assert err.value.hint == api.ENGINE_HINT and err.value.exit_code == 2
    assert isinstance(err.value.__cause__, docker_errors.ImageNotFound)
    docker.broken = True
    with pytest.raises(EngineError, match="ConnectionError: Connection aborted"):
        project.state("svc")
    with pytest.raises(EngineError):
        list(project.logs("svc"))


def test_published_elsewhere_and_volume_checks(project: Project, docker: DockerClient,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    other = Project(docker, "q")  # type: ignore[arg-type]
    other.start(svc("nginx", ports={"8080/tcp": ("127.0.0.1", 4000)}))
    project.start(svc("nginx", ports={"8080/tcp": ("127.0.0.1", 4001)}))
    assert project.published_elsewhere() == {4000: "q-nginx"}
    assert not project.volume_has("models", "m.gguf", "img:1")
    docker.volumes.create("models", labels={})
    monkeypatch.setattr("llmstack.engine.containers.path_stat", lambda c, p: {"size": 1})
    assert project.volume_has("models", "m.gguf", "img:1")
    assert port_free_here("127.0.0.1", 0)


# --- the boundary itself -----------------------------------------------------------------------


def test_map_exceptions_translates_engine_libraries_only() -> None:
    import urllib3

    for foreign in (docker_errors.APIError("500 Server Error"),
                    requests.exceptions.ReadTimeout("read timed out"),
                    urllib3.exceptions.ProtocolError("Connection aborted")):
        with pytest.raises(EngineError) as err, api.map_exceptions():
            raise foreign
        assert err.value.message == f"{type(foreign).__name__}: {foreign}"
        assert err.value.__cause__ is foreign
    for own in (UserError("mine"), ValueError("a bug"), KeyError("k")):
        with pytest.raises(type(own)), api.map_exceptions():
            raise own


def test_mapped_generators_map_errors_raised_while_iterating() -> None:
    @api.mapped
    def chunks() -> Any:
        yield b"a"
        raise docker_errors.NotFound("gone")

    it = chunks()
    assert next(it) == b"a"
    with pytest.raises(EngineError, match="NotFound: gone"):
        next(it)


# --- host facts through the engine ---------------------------------------------------------------


def test_host_facts_read_through_the_project(project: Project, docker: DockerClient,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    project.start(svc("nginx", ports={"8080/tcp": ("127.0.0.1", 4000)}))
    assert project.running_services() == {"nginx": "running"}
    assert project.published_ports() == [{"port": 4000, "ip": "127.0.0.1",
                                          "container": "p-nginx", "project": "p"}]
    assert project.present_images(["img:1", "img:2"]) == {"img:1": True, "img:2": False}
    snapshot = project.host_snapshot(["img:2", "img:1"])
    assert snapshot is not None and snapshot.image == "img:1"
    assert snapshot.df.startswith("Filesystem") and "local_address" in snapshot.net
    assert project.host_snapshot(["img:2"]) is None
    assert list(docker.all) == ["p-nginx"]  # probe containers are removed
    assert project.query_gpus(["img:2"]).status == "no-image"
    assert project.stat_source("img:1", "volume", "models", "m.gguf").exists is False
    docker.volumes.create("models", labels={})
    monkeypatch.setattr("llmstack.engine.host.path_stat",
                        lambda c, p: {"size": 7, "mode": 1 << 31})
    found = project.stat_source("img:1", "volume", "models", "m.gguf")
    assert (found.exists, found.size, found.is_dir) == (True, 7, True)
    monkeypatch.setattr("llmstack.engine.host.path_stat", lambda c, p: None)
    assert not project.stat_source("img:1", "host", "/srv", "/srv/m.gguf").exists
    assert not project.stat_source("img:missing", "host", "/srv", "/srv/m.gguf").exists


def test_an_unreachable_engine_is_an_engine_error_with_the_fix(tmp_path: Any) -> None:
    from llmstack.engine.client import connect, describe_target

    target = f"unix://{tmp_path}/no-such.sock"
    with pytest.raises(EngineError) as err:
        connect(target, timeout=2)
    assert err.value.message.startswith(f"cannot reach the Docker engine at {target}: ")
    assert "llmstack doctor" in err.value.hint and err.value.exit_code == 2
    assert describe_target(target) == f"{target} (--host)"
