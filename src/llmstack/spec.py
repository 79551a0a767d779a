"""stack.yaml: the pydantic models, every validation rule and its message."""

from __future__ import annotations

import copy
import difflib
import ipaddress
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from . import images as catalog
from . import names
from .backends import BACKENDS
from .errors import Problem, SpecError
from .yamlsrc import load

SCHEMA_VERSION = 1

# Names end up in container names, DNS names and config files: keep them to a safe alphabet
# so that nothing a user writes can become an nginx directive or a shell word.
ProjectName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")]
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
# A DNS name per RFC 1123: dot-separated labels of 1-63 ASCII letters, digits and inner '-'.
# Matched with fullmatch (never `$`, which also matches before a trailing newline).
HOSTNAME_RE = re.compile(
    r"(?=[A-Za-z0-9.-]{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:@-]{0,254}$")
SIZE_RE = re.compile(r"^[0-9]{1,6}[kmg]?$")
SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def size_bytes(text: str) -> int:
    """A size of the SIZE_RE grammar ('512k', '256m', '4g', '1048576') in bytes."""
    unit = text[-1] if text[-1] in SIZE_UNITS else ""
    return int(text[:-1] if unit else text) * SIZE_UNITS[unit]
ARG_RE = re.compile(r"^[^\x00-\x1f\x7f]{0,512}$")


def ip_literal(value: str) -> str:
    """`value` as a canonical IP address; ValueError unless it is a plain IPv4 or IPv6 address.

    An IPv6 scope ID (`fe80::1%eth0`) is refused: `ipaddress` accepts almost any text after
    the `%` (spaces, `;`, braces, newlines), which once turned `domain` into nginx directives.
    """
    if not value.isascii() or "%" in value:
        raise ValueError("an IP address here may not carry a scope ID (the part after %)")
    return str(ipaddress.ip_address(value))


def url_host(host: str) -> str:
    """A host as it stands in a URL or `HOST:PORT`: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host else host


def host_name(value: str) -> str:
    """A DNS name (RFC 1123) or an IP address without scope ID, normalised; else ValueError.

    The one grammar for every host stack.yaml or `init --domain` can hand to nginx, the
    certificate and the printed URLs.
    """
    try:
        return ip_literal(value)
    except ValueError:
        pass
    if not HOSTNAME_RE.fullmatch(value):
        raise ValueError("must be a DNS name (ASCII letters, digits, '-' between dots, at most "
                         "253 characters) or an IP address without a scope ID")
    return value.lower()

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Listener(Strict):
    port: int = Field(ge=1, le=65535)
    bind: str = "127.0.0.1"
    enabled: bool = True

    @field_validator("bind")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            return ip_literal(value)
        except ValueError:
            raise ValueError("must be an IP address such as 127.0.0.1, 0.0.0.0 or ::1 "
                             "(no scope ID)") from None


class Listeners(Strict):
    local: Listener = Listener(port=4000, bind="127.0.0.1")
    lan: Listener = Listener(port=8080, bind="0.0.0.0")
    https: Listener = Listener(port=443, bind="0.0.0.0")


class RateLimits(Strict):
    requests_per_second: int = Field(default=10, ge=1, le=100_000)
    burst: int = Field(default=20, ge=0, le=100_000)
    max_concurrent: int = Field(default=100, ge=1, le=100_000)


class Timeouts(Strict):
    """Seconds. `read` is the longest silence allowed between two chunks of a response."""

    connect: int = Field(default=10, ge=1, le=3600)
    read: int = Field(default=600, ge=1, le=86_400)
    send: int = Field(default=600, ge=1, le=86_400)
    client_body: int = Field(default=60, ge=1, le=3600)


class Resources(Strict):
    memory: Annotated[str, StringConstraints(pattern=SIZE_RE.pattern)] | None = None
    cpus: float | None = Field(default=None, gt=0, le=1024)
    pids: int | None = Field(default=None, ge=16, le=1_000_000)


@dataclass(frozen=True)
class Source:
    """Where a model's weights come from, parsed from `source:`."""

    kind: str  # volume | host | hf | ollama
    location: str  # volume name; hf: the repository ORG/REPO; empty for others
    path: str  # file in the volume, absolute host path, file in the hf repository ("" for the
    # whole repository) or ollama tag
    revision: str = ""  # hf: the branch, tag or commit after '@' ("" for the default, main)

    @property
    def ref(self) -> str:
        """What names the weights, for estimates from the name: hf's ORG/REPO[/FILE], else
        `path`."""
        return f"{self.location}/{self.path}".rstrip("/") if self.kind == "hf" else self.path


SOURCE_HELP = (
    "use volume:NAME/FILE (a Docker volume on the target), host:/ABS/PATH (a path on the "
    "target host), hf:ORG/REPO[@REVISION] (a whole Hugging Face repository: vllm, tgi), "
    "hf:ORG/REPO/FILE.gguf[@REVISION] (one file of it: llamacpp) or ollama:TAG"
)
# Hugging Face repository names (huggingface_hub's validate_repo_id): letters, digits, '-',
# '_', '.', at most 96, not starting or ending with '-' or '.', no '--' or '..'.
HF_NAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?")
# A branch, tag or commit: git ref characters ('refs/pr/1' included), or a 40-hex commit.
HF_REVISION_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}")
HF_FILE_PART_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}")
HF_EXAMPLES = ("e.g. hf:Qwen/Qwen2.5-0.5B-Instruct (vllm, tgi) or "
               "hf:bartowski/Qwen2.5-Coder-7B-Instruct-GGUF/Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf "
               "(llamacpp)")


def parse_hf(rest: str) -> Source:
    """`ORG/REPO[/PATH/FILE][@REVISION]` (what follows `hf:`); ValueError naming the part
    that is wrong and the fix."""
    name, at, revision = rest.partition("@")
    if at and (not HF_REVISION_RE.fullmatch(revision) or revision.endswith("/") or
               "//" in revision):
        raise ValueError(f"revision {revision!r} after '@' is not a branch, tag or commit; "
                         "write e.g. @main, @v1.0 or a 40-character commit hash, or drop the @")
    parts = name.split("/")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"hf: needs ORG/REPO ({name!r} is not); {HF_EXAMPLES}")
    for part in parts[:2]:
        if not HF_NAME_RE.fullmatch(part) or "--" in part or ".." in part:
            raise ValueError(f"{part!r} is not a Hugging Face organisation or repository name "
                             "(letters, digits, '-', '_', '.', at most 96, no '--' or '..', "
                             f"not starting or ending with '-' or '.'); {HF_EXAMPLES}")
    for part in parts[2:]:
        if not HF_FILE_PART_RE.fullmatch(part):
            raise ValueError(f"{part!r} is not a file or folder name of a repository; "
                             f"{HF_EXAMPLES}")
    return Source("hf", "/".join(parts[:2]), "/".join(parts[2:]), revision)


# Host locations no model lives in. A host: source bind-mounts the directory that holds the
# file (backends.model_mount), so mounting any of these, or a directory above one, would hand
# the model container the host: the engine's socket (root on the host), kernel interfaces,
# devices, credentials or the system's own binaries.
HOST_SYSTEM_PATHS = ("/run", "/var/run", "/proc", "/sys", "/dev", "/etc", "/boot", "/root",
                     "/var/lib/docker", "/var/lib/containerd", "/usr", "/bin", "/sbin")
HOST_SOURCE_FIX = ("keep the model in a directory of its own, e.g. host:/srv/models/NAME.gguf, "
                   "or copy it into a volume (volume:NAME/FILE)")


# Volumes of any llmstack project on the same engine: <project>-<service>-config
# (names.config_volume), nginx's request-body spool and the edge log socket's volume.
STACK_VOLUME_RE = re.compile(r"[a-z0-9][a-z0-9-]*-(?:(?:nginx|litellm|health|edge-metrics"
                             rf"|prometheus|model-.+)-config|{names.SPOOL_SUFFIX}"
                             rf"|{names.EDGE_LOG_SUFFIX}|{names.PROMETHEUS_DATA_SUFFIX})")


def is_stack_volume(project: str, name: str) -> bool:
    """Whether `name` is a volume llmstack creates: `<project>-*-config` or
    `<project>-nginx-spool` of this project, or a service's config volume or the spool of
    another project on the engine. A model mounting one would read the edge's keys and
    certificates, or (ollama mounts its volume read-write) rewrite them."""
    own = re.escape(project)
    return re.fullmatch(rf"{own}-.*-config", name) is not None or \
        name in (names.spool_volume(project), names.edge_log_volume(project),
                 names.prometheus_volume(project)) or \
        STACK_VOLUME_RE.fullmatch(name) is not None


def _system_location(mounted: str) -> str | None:
    """The system location `mounted` is, lies in or lies above (None when it touches none)."""
    top = "/" + mounted.strip("/").split("/")[0]
    if re.fullmatch(r"/lib(32|64|x32)?", top):
        return top
    return next((s for s in HOST_SYSTEM_PATHS if mounted == s or
                 mounted.startswith(s + "/") or s.startswith(mounted + "/")), None)


def host_source_path(path: str) -> str:
    """`path` normalised ('//' and trailing '/' dropped); ValueError, with the reason and the
    fix, when mounting it would expose the host instead of a model."""
    norm = "/" + "/".join(p for p in path.split("/") if p not in ("", "."))
    mounted = norm.rpartition("/")[0] or "/"  # what model_mount binds: the file's directory
    parts = mounted.strip("/").split("/") if mounted != "/" else []
    if any(p.endswith(".sock") for p in norm.split("/")):
        reason = f"host:{norm} is a socket (such as the Docker or containerd API: root on the " \
            "host)"
    elif mounted == "/":
        reason = f"host:{norm} would mount the host's root directory / into the model container"
    elif system := _system_location(mounted):
        reason = (f"host:{norm} would mount {mounted} into the model container, which exposes "
                  f"the system location {system}")
    elif len(parts) == 1 or (parts[0] == "home" and len(parts) == 2):
        reason = (f"host:{norm} would mount all of {mounted} (with whatever else it holds, "
                  "keys and credentials included) into the model container")
    else:
        return norm
    raise ValueError(f"{reason}; {HOST_SOURCE_FIX}")


def parse_source(value: str) -> Source:
    kind, sep, rest = value.partition(":")
    if not sep or not rest:
        raise ValueError(f"has no scheme; {SOURCE_HELP}")
    if not re.fullmatch(r"[A-Za-z0-9._/:@+-]{1,512}", rest) or ".." in rest.split("/"):
        raise ValueError("contains characters that are not allowed (or '..')")
    if kind == "volume":
        name, _, path = rest.partition("/")
        if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name):
            raise ValueError("volume name must match [a-zA-Z0-9][a-zA-Z0-9_.-]*")
        return Source("volume", name, path)
    if kind == "host":
        if not rest.startswith("/"):
            raise ValueError("host: paths must be absolute (a path on the target host)")
        return Source("host", "", host_source_path(rest))
    if kind == "hf":
        return parse_hf(rest)
    if kind == "ollama":
        return Source(kind, "", rest)
    raise ValueError(f"unknown scheme {kind!r}; {SOURCE_HELP}")


class ModelSpec(Strict):
    name: ModelName
    aliases: list[ModelName] = Field(default_factory=list, max_length=32)
    backend: str = "llamacpp"
    source: str
    task: Literal["chat", "embedding"] = "chat"
    gpus: Literal["cpu"] | list[int | str] = "cpu"
    gpu_share: bool = False
    context: int = Field(default=4096, ge=128, le=10_000_000)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    args: list[Annotated[str, StringConstraints(pattern=ARG_RE.pattern)]] = Field(
        default_factory=list, max_length=256)
    image: Annotated[str, StringConstraints(pattern=IMAGE_RE.pattern)] | None = None
    resources: Resources = Resources()
    # How `up` replaces the model's container (None: start-first, or stop-first when it has
    # GPUs of its own, which a second container could not get). See docs/UPDATES.md.
    update: Literal["start-first", "stop-first"] | None = None
    # The most seconds `up` waits for the model to become ready while it shows progress
    # (log output, disk reads, memory growth); one silent for 10 minutes fails sooner.
    load_timeout: int = Field(default=3600, ge=30, le=7 * 86_400)
    # How the edge reaches it: `gateway` through LiteLLM; `direct` from nginx straight to the
    # model's container for the chat, completion and embedding routes (docs/ROUTES.md).
    route: Literal["gateway", "direct"] = "gateway"

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        parse_source(value)
        return value

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, value: Literal["cpu"] | list[int | str]) -> Literal["cpu"] | list[int | str]:
        if value == "cpu":
            return value
        if not value:
            raise ValueError("is an empty list; write `cpu` or list GPU indices/UUIDs")
        for gpu in value:
            if isinstance(gpu, int) and not 0 <= gpu < 1024:
                raise ValueError(f"GPU index {gpu} is out of range")
            if isinstance(gpu, str) and not re.fullmatch(r"(GPU|MIG)-[0-9A-Za-z/-]{4,80}", gpu):
                raise ValueError(f"{gpu!r} is neither a GPU index nor a GPU-/MIG- UUID")
        return value

    @property
    def parsed_source(self) -> Source:
        return parse_source(self.source)

    @property
    def public_names(self) -> list[str]:
        return [self.name, *self.aliases]

    @property
    def gpu_ids(self) -> list[str]:
        return [] if self.gpus == "cpu" else [str(g) for g in self.gpus]


class ServiceResources(Strict):
    nginx: Resources = Resources(memory="256m", pids=256)
    litellm: Resources = Resources(memory="2g", pids=512)


# Kubernetes names: a RuntimeClass is a DNS subdomain; a node label value is at most 63
# characters of letters, digits, '-', '_' and '.', starting and ending with a letter or digit.
K8S_SUBDOMAIN_RE = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")
K8S_LABEL_VALUE_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")


class Kubernetes(Strict):
    """Read only by `llmstack export k8s`; `up` on one host ignores them."""

    # The RuntimeClass GPU pods run with (e.g. `nvidia` on k3s with the NVIDIA runtime).
    runtime_class: str | None = None
    # Schedule GPU models only on nodes whose nvidia.com/gpu.product label (set by NVIDIA's
    # GPU feature discovery) has this value, e.g. NVIDIA-H100-80GB-HBM3.
    gpu_product: str | None = None

    @field_validator("runtime_class")
    @classmethod
    def _runtime_class(cls, value: str | None) -> str | None:
        if value is not None and not K8S_SUBDOMAIN_RE.fullmatch(value):
            raise ValueError("must be a Kubernetes object name: lowercase letters, digits, "
                             "'-' and '.', e.g. nvidia")
        return value

    @field_validator("gpu_product")
    @classmethod
    def _gpu_product(cls, value: str | None) -> str | None:
        if value is not None and not K8S_LABEL_VALUE_RE.fullmatch(value):
            raise ValueError("must be a node label value: at most 63 letters, digits, '-', "
                             "'_' and '.', e.g. NVIDIA-H100-80GB-HBM3")
        return value


class Observability(Strict):
    """What the stack reports about itself (docs/OBSERVABILITY.md)."""

    # Each part's own Prometheus metrics, on the project network only: llama.cpp --metrics,
    # vLLM's and TGI's /metrics (always on), LiteLLM's Prometheus callback, and nginx's own
    # counts per listener, status, key name and route (the edge-metrics service, mtail).
    # `llmstack top` and `llmstack export prometheus` read them.
    metrics: bool = True
    # A Prometheus of the stack's own, scraping every part (the config `llmstack export
    # prometheus` writes), its UI and API on 127.0.0.1:prometheus_port only. Needs `metrics`.
    prometheus: bool = False
    prometheus_port: int = Field(default=9090, ge=1, le=65535)


class Images(Strict):
    """Where the stack's images come from (`source`), and any image named by hand.

    `images: auto` (or `images: {source: auto}`, the default) uses the registry when it
    answers and the images `llmstack images build` made otherwise; `registry` and `local`
    force one. A key naming an image (`nginx: nginx:1.28`) overrides the catalog for it."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    source: Literal["auto", "registry", "local"] = "auto"
    nginx: str | None = None
    litellm: str | None = None
    llamacpp: str | None = None
    llamacpp_cuda: str | None = Field(default=None, alias="llamacpp-cuda")
    vllm: str | None = None
    ollama: str | None = None
    tgi: str | None = None
    mtail: str | None = None
    prometheus: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `images: registry` is short for `images: {source: registry}`.
        return {"source": value} if isinstance(value, str) else value

    @field_validator("nginx", "litellm", "llamacpp", "llamacpp_cuda", "vllm", "ollama", "tgi",
                     "mtail", "prometheus")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None and not IMAGE_RE.fullmatch(value):
            raise ValueError("is not a valid image reference (e.g. nginx:1.28 or repo/name:tag)")
        return value

    @field_validator("litellm")
    @classmethod
    def _litellm(cls, value: str | None) -> str | None:
        bad = catalog.forbidden_litellm_version(value) if value else None
        if bad:
            raise ValueError(f"names LiteLLM {bad}, a compromised release that must never run; "
                             "remove it to use the catalog's image")
        return value

    @property
    def effective_source(self) -> str:
        """`registry` or `local`: `auto` counts as local until `up` decides (pull.choose)."""
        return "local" if self.source == "auto" else self.source

    def named(self, key: str) -> str | None:
        """The image stack.yaml names by hand for `key`, or None."""
        return cast("str | None", getattr(self, key.replace("-", "_")))

    def ref(self, key: str, source: str) -> str:
        """The image of `key` from `source` (registry or local): the hand-named one first,
        then the catalog's local build, else its upstream image (no local build of it)."""
        named = self.named(key)
        if named:
            return named
        entry = catalog.SERVICE_IMAGES[key]
        # No upstream image recorded (mtail): the local build from either source.
        if entry.local and (source == "local" or not entry.registry):
            return entry.local
        return entry.registry

    def for_key(self, key: str) -> str:
        return self.ref(key, self.effective_source)


class StackSpec(Strict):
    version: int = SCHEMA_VERSION
    project: ProjectName = "llmstack"
    domain: str = "localhost"
    listeners: Listeners = Listeners()
    rate_limit: RateLimits = RateLimits()
    timeouts: Timeouts = Timeouts()
    max_body_size: Annotated[str, StringConstraints(pattern=SIZE_RE.pattern)] = "10m"
    models: list[ModelSpec] = Field(min_length=1, max_length=64)
    images: Images = Images()
    resources: ServiceResources = ServiceResources()
    kubernetes: Kubernetes = Kubernetes()
    observability: Observability = Observability()

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        return host_name(value)

    def image_key(self, model: ModelSpec) -> str:
        """The `images:` key of the model's backend (its CUDA image when it has GPUs)."""
        backend = BACKENDS[model.backend]
        return backend.gpu_image_key if model.gpu_ids else backend.image_key

    def image_for(self, model: ModelSpec) -> str:
        return model.image or self.images.for_key(self.image_key(model))

    def edge_counts(self, source: str | None = None) -> bool:
        """Whether the stack runs nginx's own counts (the edge-metrics service): with
        observability.metrics, where an mtail image is at hand for `source` (default: the
        stack's own): llmstack's local build, one named under `images:`, or an upstream image
        in the catalog. None is recorded there, so a stack whose images come from a registry
        runs without them (`top` shows its direct-routed models' counts as unknown) instead
        of failing on an image no registry has."""
        if not self.observability.metrics:
            return False
        source = source or self.images.effective_source
        return (source == "local" or bool(self.images.named("mtail"))
                or bool(catalog.SERVICE_IMAGES["mtail"].registry))

    def with_image_source(self, source: str) -> StackSpec:
        """This stack with `images.source` decided (registry or local)."""
        return self.model_copy(update={"images": self.images.model_copy(
            update={"source": source})})


# --- Messages -------------------------------------------------------------------------------

_FRIENDLY = {
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "list_type": "must be a list",
    "model_type": "must be a mapping of keys to values",
    "dict_type": "must be a mapping of keys to values",
    "missing": "is required",
}


def _fields_at(loc: tuple[str | int, ...]) -> list[str]:
    """The keys that are allowed at a location, for 'did you mean'."""
    model: Any = StackSpec
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)),
                     None)
        if model is None:
            for c in args:  # list[ModelSpec]
                inner = getattr(c, "__args__", ())
                model = next((i for i in inner if isinstance(i, type)
                              and issubclass(i, BaseModel)), model)
    if model is None:
        return []
    extra = ["hosts"] if model is StackSpec else []  # read by inventory.py, not the model
    return [f.alias or name for name, f in model.model_fields.items()] + extra


def _path_str(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


def _clean_loc(loc: tuple[Any, ...], data: Any) -> tuple[str | int, ...]:
    """Keep the parts of a pydantic error location that exist in the document; drop the tags
    pydantic adds for union branches (such as 'list[union[int,str]]' or "literal['cpu']")."""
    out: list[str | int] = []
    node = data
    for part in loc:
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if (isinstance(node, dict) and part in node) or in_list:
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and part != "" and \
                not part.startswith(("list[", "literal[", "function-", "union[", "int", "str",
                                     "float", "bool", "dict[")):
            node = None  # a missing field: still part of the path
        else:
            continue
        out.append(part)
    return tuple(out)


def _problems_from_pydantic(exc: ValidationError, lines: dict[tuple[str | int, ...], int],
                            data: Any) -> list[Problem]:
    problems: dict[tuple[str, str], Problem] = {}
    for err in exc.errors():
        loc = _clean_loc(err["loc"], data)
        kind = err["type"]
        value = err.get("input")
        hint = ""
        if kind == "extra_forbidden":
            key = str(loc[-1])
            allowed = _fields_at(loc[:-1])
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            msg = "is not a known key"
            hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(allowed)}"
            value = None
        elif kind == "missing":
            msg, value = "is required", None
            hint = _missing_hint(loc)
        elif kind in ("literal_error",):
            expected = err.get("ctx", {}).get("expected", "")
            msg = f"must be one of {expected}"
            if isinstance(value, str):
                opts = re.findall(r"'([^']+)'", expected)
                close = difflib.get_close_matches(value, opts, n=1, cutoff=0.5)
                hint = f"did you mean {close[0]!r}?" if close else ""
        elif kind == "string_pattern_mismatch":
            msg = "contains characters that are not allowed"
            hint = _pattern_hint(loc)
        elif kind == "value_error":
            msg = str(err.get("ctx", {}).get("error", err["msg"]))
        else:
            msg = _FRIENDLY.get(kind, err["msg"].lower())
        if kind.startswith(("greater", "less")) or kind in ("too_short", "too_long"):
            msg = err["msg"][0].lower() + err["msg"][1:]
        path = _path_str(loc)
        line = lines.get(loc) or lines.get(loc[:-1])
        if isinstance(value, dict | list):
            value = None
        # A union (gpus: cpu | list) reports one error per branch: keep the first per path.
        problems.setdefault((path, kind if kind != "literal_error" else "x"),
                            Problem(path, msg, value, line, hint))
    # Drop duplicate union reports on one path (the literal branch and the list branch).
    seen: dict[str, Problem] = {}
    for (path, kind), problem in problems.items():
        if path.endswith("gpus") and kind in ("x", "list_type"):
            # One message for both branches of `cpu | [GPU, ...]`.
            problem = replace(problem, message="must be `cpu` or a list of GPU indices/UUIDs",
                              hint=problem.hint or "e.g. gpus: cpu, or gpus: [0, 1]")
            seen.setdefault(path + problem.message, problem)
            continue
        seen.setdefault(path + problem.message, problem)
    return list(seen.values())


def _missing_hint(loc: tuple[str | int, ...]) -> str:
    if loc == ("models",):
        return "add a `models:` list with at least one model (see `llmstack init`)"
    if loc and loc[-1] == "source":
        return SOURCE_HELP
    return "add it"


def _pattern_hint(loc: tuple[str | int, ...]) -> str:
    last = next((p for p in reversed(loc) if isinstance(p, str)), "")
    return {
        "project": "use 1-31 lowercase letters, digits and '-', starting with a letter or digit",
        "name": "use letters, digits and . _ : - (at most 64), starting with a letter or digit",
        "aliases": "use letters, digits and . _ : - (at most 64), starting with a letter or digit",
        "memory": "write a size such as 512m or 4g",
        "max_body_size": "write a size such as 512k, 10m or 1g",
        "args": "one argument per list item, no control characters",
        "image": "write an image reference such as repo/name:tag",
    }.get(last, "")


# --- Cross-field rules ----------------------------------------------------------------------


def check_rules(spec: StackSpec, lines: dict[tuple[str | int, ...], int]) -> list[Problem]:
    """Rules that span several fields; each problem names the field to change."""
    problems: list[Problem] = []

    def add(loc: tuple[str | int, ...], message: str, value: object, hint: str) -> None:
        problems.append(Problem(_path_str(loc), message, value, lines.get(loc), hint))

    if spec.version > SCHEMA_VERSION:
        add(("version",), f"is newer than this llmstack understands (max {SCHEMA_VERSION})",
            spec.version, "upgrade llmstack (pip install -U llmstack)")
    elif spec.version < 1:
        add(("version",), "must be 1 or more", spec.version, f"write version: {SCHEMA_VERSION}")

    seen: dict[str, tuple[str | int, ...]] = {}
    gpu_owner: dict[str, int] = {}
    for i, model in enumerate(spec.models):
        for j, name in enumerate(model.public_names):
            loc: tuple[str | int, ...] = ("models", i, "name") if j == 0 else \
                ("models", i, "aliases", j - 1)
            if name in seen:
                add(loc, f"duplicate model name (also at {_path_str(seen[name])})", name,
                    "give every model and alias a unique name")
            else:
                seen[name] = loc
        if len(set(model.gpu_ids)) != len(model.gpu_ids):
            add(("models", i, "gpus"), "lists a GPU twice", model.gpus, "list each GPU once")
        for gpu in dict.fromkeys(model.gpu_ids):
            other = gpu_owner.get(gpu)
            if other is not None and not (model.gpu_share and spec.models[other].gpu_share):
                add(("models", i, "gpus"),
                    f"GPU {gpu} is already given to model {spec.models[other].name!r}",
                    model.gpus, "give each model its own GPUs, or set gpu_share: true on both "
                    "models to share one on purpose")
            else:
                gpu_owner.setdefault(gpu, i)
        src = model.parsed_source
        if src.kind == "volume" and is_stack_volume(spec.project, src.location):
            add(("models", i, "source"), f"names {src.location}, a volume llmstack creates for "
                "a stack's configuration, keys or nginx spool, not a model volume", model.source,
                f"keep weights in a volume of their own, e.g. volume:{spec.project}-models/FILE")

        backend = BACKENDS.get(model.backend)
        if backend is None:
            close = difflib.get_close_matches(model.backend, list(BACKENDS), n=1, cutoff=0.5)
            add(("models", i, "backend"), "is not a known backend", model.backend,
                f"did you mean {close[0]!r}?" if close else f"use one of: {', '.join(BACKENDS)}")
            continue
        if model.task == "embedding" and not backend.supports_embeddings:
            capable = [b for b, be in BACKENDS.items() if be.supports_embeddings]
            add(("models", i, "task"), f"backend {model.backend!r} cannot serve embeddings",
                model.task, f"use one of: {', '.join(capable)}")
        kind = model.parsed_source.kind
        if kind not in backend.source_kinds:
            add(("models", i, "source"), f"backend {model.backend!r} cannot load a {kind}: source",
                model.source, f"use one of: {', '.join(k + ':' for k in backend.source_kinds)}")
        elif kind == "hf":
            problem = hf_form_problem(model.backend, backend.hf_form, src)
            if problem:
                add(("models", i, "source"), problem[0], model.source, problem[1])
        if model.route == "direct" and not backend.direct_route:
            capable = [b for b, be in BACKENDS.items() if be.direct_route]
            add(("models", i, "route"), f"backend {model.backend!r} answers only to its own "
                "model tag, so its stack.yaml name and aliases cannot reach it directly",
                model.route, f"use route: gateway, or one of: {', '.join(capable)}")
        if backend.needs_gpu and not model.gpu_ids:
            add(("models", i, "gpus"), f"backend {model.backend!r} needs at least one GPU",
                model.gpus, "list the GPUs it gets, e.g. gpus: [0], or use backend: llamacpp")
    active = [(n, lst) for n, lst in spec.listeners if lst.enabled]
    for a, (name_a, la) in enumerate(active):
        for name_b, lb in active[a + 1:]:
            overlap = la.bind == lb.bind or "0.0.0.0" in (la.bind, lb.bind) or \
                "::" in (la.bind, lb.bind)
            if la.port == lb.port and overlap:
                add(("listeners", name_b, "port"),
                    f"clashes with listeners.{name_a} ({la.bind}:{la.port})", lb.port,
                    "give each listener its own port")
    if not active:
        add(("listeners",), "every listener is disabled", None, "enable at least one listener")
    obs = spec.observability
    if obs.prometheus and not obs.metrics:
        add(("observability", "prometheus"), "needs the parts' metrics, which are off", True,
            "set observability.metrics: true, or drop observability.prometheus")
    if obs.prometheus:
        for name, lst in active:
            if lst.port == obs.prometheus_port and lst.bind in ("127.0.0.1", "0.0.0.0", "::"):
                add(("observability", "prometheus_port"), f"clashes with listeners.{name} "
                    f"({lst.bind}:{lst.port})", obs.prometheus_port,
                    "give Prometheus a port of its own (it binds 127.0.0.1)")
    from .capacity import MIN_CONNECTIONS, capacity, min_memory

    edge = spec.resources.nginx
    if edge.memory is not None and capacity(edge).connections < MIN_CONNECTIONS:
        add(("resources", "nginx", "memory"),
            f"is too small for {MIN_CONNECTIONS} connections per nginx worker", edge.memory,
            f"give nginx at least {-(-min_memory(edge) // 1024**2)}m (or fewer cpus)")
    return problems


def hf_form_problem(backend: str, form: str, src: Source) -> tuple[str, str] | None:
    """(message, fix) when an hf: source has the wrong form for its backend: llama.cpp loads
    one GGUF file, vLLM and TGI a whole repository (config, tokenizer and weights)."""
    repo = src.location + (f"@{src.revision}" if src.revision else "")
    if form == "file" and not src.path:
        return (f"backend {backend!r} loads one GGUF file, not a whole repository",
                f"name the file: hf:{src.location}/FILE.gguf (the repository's Files tab "
                "lists them), e.g. the Q4_K_M one")
    if form == "file" and not src.path.lower().endswith(".gguf"):
        return (f"backend {backend!r} loads GGUF files only ({src.path!r} is not one)",
                f"pick a .gguf file of {src.location}, or use backend: vllm for other formats")
    if form == "repo" and src.path:
        return (f"backend {backend!r} loads a whole repository, not one file",
                f"drop the file part: hf:{repo}")
    return None


def _rules_despite(exc: ValidationError, data: dict[str, Any],
                   lines: dict[tuple[str | int, ...], int]) -> list[Problem]:
    """Cross-field problems of a document that also has schema errors, so that one run reports
    both kinds: the rules run on a copy without the bad values (defaults take their place),
    and only problems outside the sections that had schema errors are kept."""
    errors = exc.errors()
    locs = [_clean_loc(e["loc"], data) for e in errors]
    if any(e["type"] == "missing" for e in errors) or \
            any(not loc or (loc[0] == "models" and len(loc) < 3) for loc in locs):
        return []  # nothing sound to check the rules on
    trimmed = copy.deepcopy(data)
    order = sorted(set(locs), reverse=True,  # later list items first: indices stay valid
                   key=lambda loc: [(0, p, "") if isinstance(p, int) else (1, 0, p) for p in loc])
    try:
        for loc in order:
            parent: Any = trimmed
            for part in loc[:-1]:
                parent = parent[part]
            del parent[loc[-1]]
        spec = StackSpec.model_validate(trimmed)
    except (KeyError, IndexError, TypeError, ValidationError):
        return []
    tainted = {_path_str(loc[:2] if loc[0] == "models" else loc[:1]) for loc in locs}
    return [p for p in check_rules(spec, lines)
            if not any(p.path == t or p.path.startswith((t + ".", t + "[")) for t in tainted)]


def validate_data(data: dict[str, Any], lines: dict[tuple[str | int, ...], int]
                  ) -> tuple[StackSpec | None, list[Problem]]:
    """A stack document (without `hosts:`) checked: the spec, or None and every problem."""
    try:
        spec = StackSpec.model_validate(data)
    except ValidationError as exc:
        found = _problems_from_pydantic(exc, lines, data)
        found += _rules_despite(exc, data, lines)
        return None, found
    except RecursionError:
        return None, [Problem("(document)", "is nested too deeply")]
    problems = check_rules(spec, lines)
    return (None if problems else spec), problems


@dataclass(frozen=True)
class HostSpec:
    """One host of the `hosts:` inventory: its engine and its resulting stack (inventory.py
    merges the overrides)."""

    name: str
    engine: str | None  # None: --host / DOCKER_HOST / the Docker context / the local socket
    key: Literal["fleet", "host"]  # the client key: the fleet's .env or one of its own
    spec: StackSpec
    text: str  # the host's resulting stack as a stack.yaml without `hosts:` (history)


@dataclass(frozen=True)
class Fleet:
    """A stack file: the stack itself and the stack of every host of its inventory."""

    base: StackSpec
    hosts: dict[str, HostSpec]


def parse_fleet(text: str, file: str = "stack.yaml") -> Fleet:
    """Validate a stack.yaml document and every host's resulting stack; raise SpecError with
    every problem found."""
    data, lines = load(text, file)
    if data is None:
        raise SpecError(file, [Problem("(document)", "is empty",
                                       hint="run `llmstack init` to write a starter stack.yaml")])
    if not isinstance(data, dict):
        raise SpecError(file, [Problem("(document)", "must be a mapping of keys to values",
                                       type(data).__name__, 1, "start from `llmstack init`")])
    body = {k: v for k, v in data.items() if k != "hosts"}
    base, problems = validate_data(body, lines)
    hosts: dict[str, HostSpec] = {}
    if "hosts" in data:
        from .inventory import resolve

        # Overrides merge into the stack's values with its defaults filled in: a host's
        # `listeners: {https: {port: 8443}}` keeps the https listener's bind, as "maps merge"
        # says, not the bind a listener written out in full would get by default.
        full = base.model_dump(mode="json", by_alias=True) if base is not None else body
        hosts, host_problems = resolve(data["hosts"], full, lines, base is not None)
        problems += host_problems
    if problems or base is None:
        raise SpecError(file, sorted(problems, key=lambda p: p.line or 0))
    return Fleet(base, hosts)


def parse(text: str, file: str = "stack.yaml") -> StackSpec:
    """Validate a stack.yaml document (its hosts too); raise SpecError with every problem."""
    return parse_fleet(text, file).base


def read_text(path: Path) -> str:
    """The stack file's text, or a SpecError saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), [Problem("(file)", "does not exist",
                                            hint="run `llmstack init` to create one")]) from None
    except UnicodeDecodeError:
        raise SpecError(str(path), [Problem("(file)", "is not UTF-8 text")]) from None
    except OSError as exc:
        raise SpecError(str(path), [Problem("(file)", f"cannot be read: {exc.strerror}")]) from None


def load_fleet(path: Path) -> Fleet:
    return parse_fleet(read_text(path), str(path))


def load_file(path: Path) -> StackSpec:
    return load_fleet(path).base
