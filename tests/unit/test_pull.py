"""Which images a stack runs (`images: auto|registry|local`), pins, registry errors, bundles:
the pure decisions on the fake engine, and the error texts Docker really gives."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from llmstack import images, initialize, pull, spec
from llmstack.engine.bundle import BundleError, read_manifest, verify
from llmstack.engine.registry import classify
from llmstack.errors import (
    DigestMismatch,
    ImageNotInRegistry,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
)
from tests.fake_engine import FakeEngine


def stack(source: Any = "auto", **named: str) -> spec.StackSpec:
    data = spec.parse(initialize.starter()).model_dump(by_alias=True, exclude_none=True)
    data["images"] = {"source": source, **named}
    return spec.StackSpec.model_validate(data)


def refs(source: str, s: spec.StackSpec | None = None) -> list[str]:
    return pull.stack_refs(s or stack(), source)


def test_the_catalog_gives_each_source_its_refs() -> None:
    assert refs("local") == [images.NGINX.tag, images.LITELLM.tag, images.MTAIL.tag,
                             images.LLAMACPP.tag]
    # mtail has no recorded upstream image: registry images run without nginx's own counts
    # (unless stack.yaml names an mtail image, or choose() finds llmstack's build there).
    assert refs("registry") == [images.SERVICE_IMAGES["nginx"].registry,
                                images.SERVICE_IMAGES["litellm"].registry,
                                images.SERVICE_IMAGES["llamacpp"].registry]
    off = spec.StackSpec.model_validate({**stack().model_dump(by_alias=True, exclude_none=True),
                                         "observability": {"metrics": False}})
    assert images.MTAIL.tag not in refs("local", off) + refs("registry", off)
    named = stack(nginx="mirror.example/nginx:1@sha256:" + "a" * 64)
    assert refs("registry", named)[0] == refs("local", named)[0] == named.images.nginx


def test_images_shorthand_and_unknown_source() -> None:
    assert stack("registry").images.source == "registry"
    data = spec.parse(initialize.starter()).model_dump(by_alias=True, exclude_none=True)
    data["images"] = "mirror"
    with pytest.raises(Exception, match="auto"):
        spec.StackSpec.model_validate(data)


def test_auto_takes_upstream_images_the_engine_has_without_asking_a_registry() -> None:
    engine = FakeEngine(missing_images=set(refs("local")) - set(refs("registry")))
    choice = pull.choose(stack(), engine)
    assert (choice.source, choice.missing) == ("registry", [])
    assert choice.spec.images.source == "registry" and engine.calls == []


def test_auto_takes_local_images_the_engine_has_without_asking_a_registry() -> None:
    engine = FakeEngine(missing_images=set(refs("registry")) - set(refs("local")))
    choice = pull.choose(stack(), engine)
    assert (choice.source, choice.missing) == ("local", []) and engine.calls == []
    assert "built or loaded here" in choice.line


def test_auto_pulls_when_nothing_is_there_and_the_registry_answers() -> None:
    # Nothing but llmstack's own mtail build (no registry has it) is on the engine.
    pullable = [r for r in refs("registry") if r != images.MTAIL.tag]
    missing = (set(refs("registry")) | set(refs("local"))) - {images.MTAIL.tag}
    served = {images.parse_reference(r).tagged: images.parse_reference(r).digest or "sha256:x"
              for r in pullable}
    engine = FakeEngine(missing_images=set(missing), registry=served)
    choice = pull.choose(stack(), engine)
    assert choice.source == "registry" and choice.missing == pullable
    lines: list[str] = []
    assert pull.ensure(choice, engine, lines.append) == pullable
    assert [c for c in engine.calls if c.startswith("pull ")] == [
        f"pull {r}" for r in pullable]
    # every pin was checked against the registry's digest of its tag before its pull
    for ref in pullable:
        tagged = images.parse_reference(ref).tagged
        assert engine.calls.index(f"registry {tagged}") < engine.calls.index(f"pull {ref}")
    assert pull.choose(stack(), engine).missing == []  # now present


def test_auto_without_registry_or_images_says_why_and_leaves_the_fix_to_preflight() -> None:
    engine = FakeEngine(missing_images=set(refs("registry")) | set(refs("local")),
                        registry_error=RegistryUnreachable("registry docker.io did not answer"))
    choice = pull.choose(stack(), engine)
    assert choice.source == "local" and choice.missing == refs("local")
    assert "did not answer" in choice.reason
    assert pull.ensure(choice, engine, print) == []


def test_a_moved_tag_is_refused_before_anything_is_pulled() -> None:
    ref = images.SERVICE_IMAGES["nginx"].registry
    parsed = images.parse_reference(ref)
    engine = FakeEngine(missing_images={ref}, registry={parsed.tagged: "sha256:" + "b" * 64})
    choice = pull.Choice("registry", "test", stack("registry"), [ref])
    with pytest.raises(DigestMismatch) as info:
        pull.ensure(choice, engine, print)
    assert "sha256:" + "b" * 64 in info.value.message and parsed.digest in info.value.message
    assert f"{parsed.tagged}@sha256:{'b' * 64}" in info.value.hint
    assert not [c for c in engine.calls if c.startswith("pull ")]


@pytest.mark.parametrize(("ref", "repository", "tag", "digest", "registry"), [
    ("nginx", "nginx", None, None, "docker.io"),
    ("localhost:5000/a/b:1", "localhost:5000/a/b", "1", None, "localhost:5000"),
    ("127.0.0.1:5000/x@sha256:" + "c" * 64, "127.0.0.1:5000/x", None, "sha256:" + "c" * 64,
     "127.0.0.1:5000"),
    ("ghcr.io/ggml-org/llama.cpp:server@sha256:" + "d" * 64, "ghcr.io/ggml-org/llama.cpp",
     "server", "sha256:" + "d" * 64, "ghcr.io"),
    ("vllm/vllm-openai:v0.11.0", "vllm/vllm-openai", "v0.11.0", None, "docker.io"),
])
def test_references_split_into_their_parts(ref: str, repository: str, tag: str | None,
                                           digest: str | None, registry: str) -> None:
    parsed = images.parse_reference(ref)
    assert (parsed.repository, parsed.tag, parsed.digest, parsed.registry) == (
        repository, tag, digest, registry)


# Messages as Docker Engine 20.10 and the CNCF registry 2.8 give them (recorded here).
@pytest.mark.parametrize(("message", "kind", "says"), [
    ('Get "https://registry-1.docker.io/v2/": dial tcp: lookup registry-1.docker.io on '
     "10.255.255.53:53: no such host", RegistryUnreachable, "llmstack images load"),
    ('Get "http://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused',
     RegistryUnreachable, "llmstack images build"),
    ("Head \"http://127.0.0.1:5001/v2/x/manifests/1\": no basic auth credentials",
     RegistryAuthError, "docker login"),
    ("unauthorized: authentication required", RegistryAuthError, "docker login"),
    ("manifest for 127.0.0.1:5000/x:1 not found: manifest unknown: manifest unknown",
     ImageNotInRegistry, "images:"),
    ('Get "https://10.0.0.5:5000/v2/": http: server gave HTTP response to HTTPS client',
     RegistryUnreachable, "insecure-registries"),
    ("something else entirely", RegistryError, "llmstack images build"),
])
def test_registry_errors_become_llmstacks_own_with_a_fix(message: str, kind: type,
                                                         says: str) -> None:
    error = classify("127.0.0.1:5000/x:1", message)
    assert type(error) is kind and says in error.hint and message in error.message


# --- bundles ------------------------------------------------------------------------------------


def _bundle(path: Path, files: dict[str, bytes], manifest_files: dict[str, str]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in [*files.items(), ("llmstack-bundle.json", json.dumps(
                {"format": 1, "images": [], "files": manifest_files}).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_bundle_is_checked_member_by_member_before_anything_loads(tmp_path: Path) -> None:
    import hashlib

    good = hashlib.sha256(b"layer").hexdigest()
    path = tmp_path / "b.tar"
    _bundle(path, {"images/0.tar": b"layer"}, {"images/0.tar": good})
    with tarfile.open(path) as tar:
        verify(tar, read_manifest(tar, path), path, print)

    _bundle(path, {"images/0.tar": b"layeR"}, {"images/0.tar": good})
    with tarfile.open(path) as tar, pytest.raises(BundleError, match="altered or damaged"):
        verify(tar, read_manifest(tar, path), path, print)

    _bundle(path, {}, {"images/0.tar": good})
    with tarfile.open(path) as tar, pytest.raises(BundleError, match="incomplete"):
        verify(tar, read_manifest(tar, path), path, print)

    with tarfile.open(path, "w") as tar:
        tar.addfile(tarfile.TarInfo("x"), io.BytesIO(b""))
    with tarfile.open(path) as tar, pytest.raises(BundleError, match="not an llmstack bundle"):
        read_manifest(tar, path)


def test_llmstacks_own_builds_are_never_asked_of_a_registry() -> None:
    engine = FakeEngine(missing_images={images.NGINX.tag})
    lines: list[str] = []
    choice = pull.Choice("registry", "test", stack("registry"), [images.NGINX.tag])
    assert pull.ensure(choice, engine, lines.append) == []
    assert engine.calls == [] and "llmstack images build" in lines[0]


def test_registry_images_use_llmstacks_mtail_build_only_when_the_engine_has_it() -> None:
    upstream_only = set(refs("local")) - set(refs("registry"))  # the local builds, mtail too
    bare = pull.choose(stack(), FakeEngine(missing_images=upstream_only))
    assert bare.source == "registry" and bare.missing == []
    assert not bare.spec.edge_counts() and bare.spec.images.mtail is None
    with_build = pull.choose(stack(), FakeEngine(
        missing_images=upstream_only - {images.MTAIL.tag}))
    assert with_build.source == "registry" and with_build.missing == []
    assert with_build.spec.edge_counts() and with_build.spec.images.mtail == images.MTAIL.tag
    explicit = pull.choose(stack("registry"), FakeEngine(missing_images=upstream_only))
    assert not explicit.spec.edge_counts()
