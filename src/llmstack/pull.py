"""Which images a stack runs (upstream from a registry, or built here) and pulling them.

`choose` decides `images: auto` for one engine: the registry when its images are already there
or the registry answers, the local builds otherwise, with one line saying which and why.
`ensure` pulls what the choice still misses, each image by its pinned digest, refusing a tag
whose registry digest differs from the pin. Everything goes through `engine.api.Engine`
(the engine pulls for itself, so a remote host downloads on that host).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .errors import DigestMismatch, RegistryError
from .images import MTAIL, OWN_IMAGE_PREFIX, parse_reference

if TYPE_CHECKING:
    from .engine.api import Engine
    from .spec import StackSpec

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Choice:
    """The image source decided for one `up`: its stack, what is missing, and why."""

    source: str  # "registry" | "local"
    reason: str  # one line for the user
    spec: StackSpec  # the stack with images.source decided
    missing: list[str] = field(default_factory=list)  # refs not on the engine yet

    @property
    def line(self) -> str:
        return f"images: {self.source} ({self.reason})"


def stack_refs(spec: StackSpec, source: str) -> list[str]:
    """Every image the stack runs when its images come from `source`, without repeats."""
    refs = [spec.images.ref("nginx", source), spec.images.ref("litellm", source)]
    if spec.edge_counts(source):
        refs.append(spec.images.ref("mtail", source))
    if spec.observability.prometheus:
        refs.append(spec.images.ref("prometheus", source))
    refs += [m.image or spec.images.ref(spec.image_key(m), source) for m in spec.models]
    return list(dict.fromkeys(refs))


def _absent(engine: Engine, refs: list[str]) -> list[str]:
    return [ref for ref, image_id in engine.image_ids(refs).items() if image_id is None]


def choose(spec: StackSpec, engine: Engine) -> Choice:
    """`_choose`, with llmstack's mtail build for nginx's own counts when registry images are
    chosen and that build is on the engine (no upstream mtail is recorded: see
    StackSpec.edge_counts)."""
    choice = _choose(spec, engine)
    decided = choice.spec
    if (choice.source == "registry" and decided.observability.metrics
            and not decided.images.named("mtail") and not _absent(engine, [MTAIL.tag])):
        images = decided.images.model_copy(update={"mtail": MTAIL.tag})
        choice = replace(choice, spec=decided.model_copy(update={"images": images}))
    return choice


def _choose(spec: StackSpec, engine: Engine) -> Choice:
    """Decide where the stack's images come from on this engine (no download).

    `auto`: the upstream images when the engine has them all; else the local builds when the
    engine has them all (built, or loaded from a bundle: the registry is not asked, so a
    flapping network never switches a running stack's images); else the registry when it
    answers; else the local builds, with the registry's answer as the reason (preflight then
    names what is missing and the offline path)."""
    wanted = spec.images.source
    if wanted != "auto":
        missing = _absent(engine, stack_refs(spec, wanted))
        return Choice(wanted, "images.source in stack.yaml", spec.with_image_source(wanted),
                      missing)
    missing = _absent(engine, stack_refs(spec, "registry"))
    if not missing:
        return Choice("registry", "the upstream images are on the engine",
                      spec.with_image_source("registry"))
    local = spec.with_image_source("local")
    local_missing = _absent(engine, stack_refs(spec, "local"))
    if not local_missing:
        return Choice("local", "the images built or loaded here are on the engine; "
                      "`images: registry` in stack.yaml pulls upstream ones instead", local)
    # Tags of llmstack's own builds exist in no registry: nothing to ask one for.
    pullable = [ref for ref in missing if not ref.startswith(OWN_IMAGE_PREFIX)]
    if not pullable:
        return Choice("local", "the images are llmstack's own builds", local, local_missing)
    first = parse_reference(pullable[0])
    try:
        engine.registry_digest(pullable[0])
    except RegistryError as exc:
        return Choice("local", f"no images from registry {first.registry}: {exc.message}",
                      local, local_missing)
    return Choice("registry", f"registry {first.registry} answers",
                  spec.with_image_source("registry"), missing)


def check_pin(engine: Engine, ref: str) -> None:
    """Refuse `ref` when the registry serves its tag under another digest than the pin."""
    parsed = parse_reference(ref)
    if not (parsed.tag and parsed.digest):
        return
    served = engine.registry_digest(parsed.tagged)
    if served != parsed.digest:
        raise DigestMismatch(
            f"{parsed.tagged}: the registry serves {served}, but the image is pinned to "
            f"{parsed.digest}; refusing it (the tag was moved or the image replaced)",
            "check the image's provenance; if the new digest is the one you want, pin it "
            f"under `images:` in stack.yaml ({parsed.tagged}@{served})")


def ensure(choice: Choice, engine: Engine, progress: Progress) -> list[str]:
    """Pull the images a registry choice misses, each checked against its pin; the pulled
    refs. A local choice pulls nothing (preflight names what is missing and how to get it)."""
    if choice.source != "registry":
        return []
    pulled = []
    for ref in choice.missing:
        if ref.startswith(OWN_IMAGE_PREFIX):
            # llmstack's own builds are in no registry: preflight says how to get them.
            progress(f"not pulled: {ref} is built here (`llmstack images build`) or loaded "
                     "from a bundle (`llmstack images load`)")
            continue
        check_pin(engine, ref)
        progress(f"pulling {ref}")
        engine.pull(ref, progress)
        pulled.append(ref)
    return pulled
