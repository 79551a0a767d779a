"""What every inference backend module provides: image, command line, probe, GPU needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .. import hfcache

if TYPE_CHECKING:
    from ..spec import ModelSpec


@dataclass(frozen=True)
class Mount:
    """A mount on the target engine: a named volume or a path on the engine's host."""

    source: str
    target: str
    kind: str = "volume"  # "volume" | "bind"
    read_only: bool = True
    # A volume of the stack's own (labelled with the project, removed by `down --volumes`);
    # others, such as model volumes, belong to the user and are never created or removed.
    managed: bool = False
    # A folder in a managed volume made before the start, owned by the service's user: a new
    # volume's root belongs to root unless the image has that path (upstream images differ).
    owned_dir: str | None = None


@dataclass(frozen=True)
class Launch:
    """How one model's container is started; pure data, hashed into the config label."""

    command: list[str]
    mounts: list[Mount] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    shm_size: str | None = None


@dataclass(frozen=True)
class Placement:
    """What the plan decides about a model beyond its own stack.yaml entry: the image it runs
    (the backend's flags may depend on its version) and the share of each GPU it may take."""

    image: str = ""
    # The value of the backend's GPU-memory flag (vLLM --gpu-memory-utilization, TGI
    # --cuda-memory-fraction); None: the model's own gpu_memory_utilization.
    memory_fraction: float | None = None
    # `observability.metrics`: the server's Prometheus endpoint on (where a flag turns it on).
    metrics: bool = True


DEFAULT_PLACEMENT = Placement()


@dataclass(frozen=True)
class MetricNames:
    """Where a backend's Prometheus endpoint says what `llmstack top` shows (observe.py).
    Each name is a sample name as the server writes it (counters with _total);
    "" where the server has no such figure."""

    path: str  # the endpoint, e.g. /metrics
    running: str  # requests being generated now (gauge)
    waiting: str  # requests queued for a free slot (gauge)
    generated_tokens: str  # tokens generated since start (counter, or a histogram's sum)
    generating_seconds: str = ""  # seconds spent generating them (counter): decode speed


class Backend(Protocol):
    name: str
    image_key: str  # key in stack.yaml `images:` when the model runs on CPU
    gpu_image_key: str  # ... and when it has GPUs
    port: int  # port the server listens on inside the container
    health_path: str  # answers 200 once the model is loaded
    api_base_path: str  # OpenAI-compatible prefix, e.g. /v1
    supports_embeddings: bool
    needs_gpu: bool
    source_kinds: tuple[str, ...]  # accepted `source:` schemes
    # The form of `hf:` source it loads: "file" (hf:ORG/REPO/FILE.gguf), "repo" (hf:ORG/REPO),
    # "" when it takes no hf: source.
    hf_form: str
    # Where the server keeps weights it fetches itself (hf: repos, ollama: tags); None for a
    # backend that only reads files it is given.
    cache_dir: str | None
    # Seconds the server keeps an idle keep-alive connection open before closing it (its
    # real default, source named beside each value); None: it never closes idle ones.
    # LiteLLM's client side must give up on idle connections sooner (see keepalive.py).
    idle_keepalive_s: int | None
    # (regular expression, phase) pairs read from its log while it loads: the waiting lines
    # of `up` name the phase (loading.phase_of); the last matching line wins.
    load_phases: tuple[tuple[str, str], ...]
    # Its Prometheus endpoint and the names `top` reads there; None: it has none (Ollama).
    metrics: MetricNames | None
    # Whether nginx may send a model's requests straight to it (`route: direct`): the server
    # answers under every stack.yaml name and alias of the model, as the gateway does.
    direct_route: bool

    def launch(self, model: ModelSpec, placement: Placement = DEFAULT_PLACEMENT,
               pin: str = "") -> Launch:
        """`placement`: the GPUs and share this copy runs on; `pin`: the commit an hf: source
        was fetched at (stack.lock), "" when unknown."""
        ...

    def served_name(self, model: ModelSpec) -> str: ...

    def ready_check(self, model: ModelSpec, base: str) -> dict[str, Any] | None:
        """The health service's check for a model that one GET of health_path cannot tell
        ready (see healthd.make_check); `base` is http://<container>:<port>. None: the GET."""
        ...


def model_mount(model: ModelSpec, target: str = "/models", pin: str = ""
                ) -> tuple[list[Mount], str]:
    """Mount a volume:/host: source read-only, or the Hugging Face cache for an hf: source
    (fetched at commit `pin`; before the first fetch the path names the requested revision);
    return the mounts and the in-container path."""
    src = model.parsed_source
    if src.kind == "hf":
        commit = pin or src.revision or "main"
        return [Mount(hfcache.VOLUME, hfcache.MOUNT)], \
            hfcache.in_container(hfcache.snapshot(src.location, commit, src.path))
    if src.kind == "volume":
        return [Mount(src.location, target)], f"{target}/{src.path}".rstrip("/")
    if src.kind == "host":
        parent, _, name = src.path.rpartition("/")
        return [Mount(parent or "/", target, kind="bind")], f"{target}/{name}"
    return [], src.path


def source_env(model: ModelSpec) -> dict[str, str]:
    """The environment an hf: source needs in the model container: the cache, offline."""
    return dict(hfcache.OFFLINE_ENV) if model.parsed_source.kind == "hf" else {}
