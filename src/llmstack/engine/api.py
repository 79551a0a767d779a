"""The engine boundary: what llmstack asks of a container engine, in llmstack's own types.

`Engine` is the interface `deploy`, `edge`, `rotate` and the CLI program against. The real one
is `containers.Project` (Docker through the SDK); `tests/fake_engine.py` is an in-memory one,
and `tests/engine_compliance.py` runs the same cases against both. Nothing here imports docker:
engine objects never leave the package, and the engine's own exceptions (docker's, requests',
urllib3's) become `EngineError` at the boundary, once (`map_exceptions`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from ..backends.base import Mount
from ..errors import EngineError, LlmstackError

if TYPE_CHECKING:
    from ..plan import Actual, ServiceSpec
    from .host import EngineFacts, GpuProbe, HostSnapshot, SourceStat

# Modules whose exceptions mean "the engine (or the way to it) failed".
ENGINE_MODULES = ("docker", "requests", "urllib3")
ENGINE_HINT = "the Docker engine refused the operation; `llmstack doctor` checks the host"

# Container states, as the engine reports them; "missing" when there is no container.
MISSING = "missing"
STOPPED_STATES = ("exited", "dead", MISSING, "restarting")


@dataclass(frozen=True)
class ContainerInfo:
    """One container of the project. `ports` are "HOSTIP:HOSTPORT->PORT/PROTO" strings,
    sorted; `started_at` is the engine's RFC 3339 time ("" when never started)."""

    service: str  # its key: the service, or SERVICE_next / SERVICE_old (names.service_key)
    name: str
    id: str
    image: str
    status: str
    started_at: str = ""
    ports: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    restart_count: int = 0
    exit_code: int | None = None


@dataclass(frozen=True)
class Activity:
    """What a container did lately, as `up` reads it while a model loads (loading.py)."""

    output: str  # log lines written after `cursor` (Engine.activity)
    cursor: str  # where the next read continues; "" before the first line
    read_bytes: int = 0  # bytes it read from block devices since its start
    memory_bytes: int = 0  # memory it uses now (page cache of mapped weights included)


@dataclass(frozen=True)
class Task:
    """A short-lived container that runs to completion on the engine's host (a model fetch),
    on the project's network, removed afterwards. Decided by its caller; the engine only
    translates it. Secrets appear only in `env` values named in `secret_env`, never in
    `command` (arguments show in `ps` and in the engine's records)."""

    name: str  # the service-like part of the container's name: <project>-<name>
    image: str
    entrypoint: list[str]
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    secret_env: tuple[str, ...] = ()
    user: str = "0:0"  # root, with every capability dropped: it owns a fresh volume's root
    memory: str = "1g"
    pids: int = 256


def is_engine_exception(exc: BaseException) -> bool:
    """Whether `exc` comes from the engine's client libraries (by the module defining it)."""
    return any(c.__module__.split(".")[0] in ENGINE_MODULES for c in type(exc).__mro__)


def engine_error(exc: BaseException) -> EngineError:
    """The EngineError a foreign engine exception stands for (message as the CLI printed it)."""
    return EngineError(f"{type(exc).__name__}: {exc}", ENGINE_HINT)


@contextlib.contextmanager
def map_exceptions() -> Iterator[None]:
    """Translate the engine libraries' exceptions into EngineError (httpx's pattern); our own
    errors and everything else pass through unchanged."""
    try:
        yield
    except LlmstackError:
        raise
    except Exception as exc:
        if not is_engine_exception(exc):
            raise
        raise engine_error(exc) from exc


F = TypeVar("F", bound=Callable[..., Any])


def mapped(func: F) -> F:
    """Decorator: `func` (a generator function too) raises EngineError, never docker's errors."""
    if inspect.isgeneratorfunction(func):
        @functools.wraps(func)
        def gen(*args: Any, **kwargs: Any) -> Any:
            with map_exceptions():
                yield from func(*args, **kwargs)
        return gen  # type: ignore[return-value]

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        with map_exceptions():
            return func(*args, **kwargs)
    return call  # type: ignore[return-value]


@runtime_checkable
class Engine(Protocol):
    """One project's containers, config volumes and network on one engine."""

    project: str
    # Labels of the stack folder deploying (project.Owner.labels): every container and the
    # network it creates carry them; {} when the caller starts nothing.
    owner_labels: dict[str, str]

    # --- reading -------------------------------------------------------------------------
    def actual(self) -> list[Actual]:
        """The project's containers as the plan compares them."""

    def info(self) -> list[ContainerInfo]:
        """The project's containers, for status."""

    def container(self, service: str) -> ContainerInfo | None:
        """The service's container, or None when there is none."""

    def state(self, service: str) -> tuple[str, int | None]:
        """(status, exit code): "running", "exited", ..., or "missing"."""

    def image_ids(self, tags: list[str]) -> dict[str, str | None]:
        """Each tag's image id on the engine, None when absent."""

    def read_tree(self, service: str, path: str) -> dict[str, bytes]:
        """The regular files under `path` in the service's container, keyed by their path
        relative to path's parent; {} when the container or the path is missing."""

    def exec(self, service: str, cmd: list[str], environment: dict[str, str] | None = None
             ) -> tuple[int, str]:
        """Run `cmd` in the running service: (exit code, output). EngineError when the
        service is not running. Secrets go in `environment`, never in `cmd`."""

    def probe(self, url: str, timeout: float = 2.0) -> str:
        """GET `url` from inside the project network: the status code as text, or 'ERR ...'."""

    def probes(self, urls: list[str], timeout: float = 2.0) -> dict[str, str]:
        """`probe` of each of `urls`, all in one exec in the health container: {url: status
        code as text, or 'ERR ...'}."""

    def scrape(self, urls: list[str], auth: dict[str, str] | None = None,
               timeout: float = 2.0) -> dict[str, tuple[int | None, str]]:
        """GET each of `urls` from inside the project network (one exec in the health
        container): {url: (status, body)}, status None with the error as body when it did not
        answer. `auth`: {url: bearer token}, shipped in the exec's environment, never its
        command line. EngineError when the health service is not running."""

    def logs(self, service: str, tail: int = 50, follow: bool = False) -> Iterator[bytes]:
        """The service's output; EngineError when it has no container."""

    def tail_logs(self, service: str, lines: int = 20) -> str:
        """The last lines of the service's output ("" without a container)."""

    def activity(self, service: str, cursor: str = "") -> Activity:
        """The container's log output after `cursor` (from its start with ""), with the next
        cursor, and its disk reads and memory now; empty when it does not exist. Cursors come
        from the engine's own clock, so a remote host's clock skew does not matter."""

    # --- writing -------------------------------------------------------------------------
    def ensure_network(self) -> None:
        """The project's network, created when missing."""

    def write_config(self, svc: ServiceSpec, extra: dict[str, tuple[bytes, int]] | None = None
                     ) -> None:
        """Fill the service's config volume with svc.config (0644) and `extra` files."""

    def write_volume(self, volume: str, files: dict[str, bytes], image: str) -> None:
        """Write `files` ({relative path: bytes}, 0644) into the named volume (created with
        the project's label when missing), through a container of `image`."""

    def read_volume(self, volume: str, image: str) -> dict[str, bytes]:
        """Every regular file in the named volume, by its relative path; {} without it."""

    def start(self, svc: ServiceSpec, key: str | None = None) -> str:
        """(Re)create and start the service's container; its id. `key` names the container
        instead of svc.service (names.NEXT for a start-first replacement); labels, config
        volume and settings stay the service's."""

    def rename(self, key: str, new_key: str) -> None:
        """Rename a running container (key -> new_key): connections are untouched, and its
        DNS name on the project network becomes the new one at once."""

    def remove(self, service: str) -> None:
        """Remove the service's container (no error when there is none); also a key such as
        SERVICE_old."""

    def down(self, volumes: bool = False) -> list[str]:
        """Remove every container and the network (and config volumes): removed names."""

    def run_task(self, task: Task, on_line: Callable[[str], None]) -> int:
        """Run `task` to completion on the project's network (ensure_network first), each
        line of its output to `on_line` as it comes; its exit code. The container is removed
        afterwards, also when this is interrupted."""

    # --- the host, seen through the engine -------------------------------------------------
    def close(self) -> None:
        """Release the connection to the engine."""

    def is_local(self) -> bool:
        """Whether the engine runs on this machine (its published ports are ours)."""

    def volume_has(self, volume: str, path: str, image: str) -> bool:
        """Whether `path` exists in the named volume."""

    def published_elsewhere(self) -> dict[int, str]:
        """Host ports published by other projects' containers: {port: container name}."""

    def host_snapshot(self, candidates: list[str]) -> HostSnapshot | None:
        """df of the data root and the host's listening sockets (None without an image)."""

    def query_gpus(self, candidates: list[str], utilization: bool = False) -> GpuProbe:
        """The host's GPUs, from nvidia-smi in the first present image of `candidates`
        (`utilization`: each GPU's busy percentage too, for `top`)."""

    def engine_facts(self) -> EngineFacts:
        """The engine's version, OS, data root, runtimes, clock."""

    def present_images(self, tags: list[str]) -> dict[str, bool]:
        """Whether each tag is on the engine."""

    def published_ports(self) -> list[dict[str, Any]]:
        """Every published port of running containers: {port, ip, container, project}."""

    def running_services(self) -> dict[str, str]:
        """{service: state} of the project's containers."""

    # --- registries ------------------------------------------------------------------------
    def registry_digest(self, ref: str) -> str:
        """The digest a registry serves for `ref` now, asked by the engine (no download);
        RegistryUnreachable, RegistryAuthError or ImageNotInRegistry when it cannot."""

    def pull(self, ref: str, progress: Callable[[str], None]) -> str:
        """Pull `ref` on the engine (by its digest when it names one) and check the digest;
        the image id. The same errors as registry_digest, DigestMismatch."""

    def stat_source(self, image: str, kind: str, location: str, path: str) -> SourceStat:
        """Whether a model's volume:/host: source exists on the engine's host, its size."""

    def image_env(self, refs: list[str]) -> dict[str, list[str]]:
        """The Env of each of these images' config that is on the engine (missing: absent)."""

    def read_source(self, image: str, kind: str, location: str, path: str, limit: int
                    ) -> bytes | None:
        """The first `limit` bytes of a file in a model's volume:/host: source (None when it
        cannot be read): its config.json or GGUF header."""
