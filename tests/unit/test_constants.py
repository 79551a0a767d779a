"""Each constant in one place: own image tags, the image uid, the config root, and the LiteLLM
releases that must never run (1.82.7 and 1.82.8 were compromised)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from llmstack import images, initialize, names, plan, render, spec
from llmstack.engine import images as builder
from llmstack.errors import SpecError
from tests.helpers import REPO

DOCKERFILES = sorted((REPO / "images").glob("*/Dockerfile"))


def test_own_image_tags_come_from_the_build_catalog() -> None:
    own = spec.Images()
    assert own.ref("nginx", "local") == images.NGINX.tag
    assert own.ref("litellm", "local") == images.LITELLM.tag == \
        f"{images.OWN_IMAGE_PREFIX}litellm:{images.LITELLM_VERSION}-{images.LITELLM_BUILD}"
    assert own.ref("llamacpp", "local") == images.LLAMACPP.tag
    assert all(s.tag.startswith(images.OWN_IMAGE_PREFIX) for s in images.CATALOG.values())


def test_every_upstream_image_but_tgi_is_pinned_by_digest() -> None:
    for key, entry in images.SERVICE_IMAGES.items():
        if not entry.registry:  # none recorded (mtail): the local build serves both sources
            assert entry.local and spec.Images().ref(key, "registry") == entry.local, key
            continue
        ref = images.parse_reference(entry.registry)
        assert ref.tag, key
        assert (ref.digest is None) == (key == "tgi"), key
        assert ref.digest is None or re.fullmatch(r"sha256:[0-9a-f]{64}", ref.digest)
        # no local build: the registry image serves `local` too (bundles bring it)
        assert spec.Images().ref(key, "local") == (entry.local or entry.registry)


def test_the_image_uid_is_one_constant_passed_to_every_build() -> None:
    assert f"{images.IMAGE_UID}:{images.IMAGE_UID}" == plan.OWN_UID
    assert DOCKERFILES
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        if "LLMSTACK_UID" in text:
            # The Dockerfile's default only serves a bare `docker build`; llmstack passes it.
            assert f"ARG LLMSTACK_UID={images.IMAGE_UID}\n" in text, dockerfile
    for spec_ in images.CATALOG.values():
        if isinstance(spec_, images.BuiltImage):
            assert builder.build_args(spec_)["LLMSTACK_UID"] == str(images.IMAGE_UID)


def test_every_config_path_derives_from_the_config_root() -> None:
    assert plan.CONFIG_ROOT == names.CONFIG_ROOT
    assert f"{names.CONFIG_ROOT}/{names.NGINX}" == render.NGINX_CONF_DIR
    assert render.SECRETS_DIR.startswith(render.NGINX_CONF_DIR + "/")
    stack = spec.parse(initialize.starter())
    for svc in plan.desired(stack, render.render(stack), "sk-x"):
        assert svc.config_mount == f"{names.CONFIG_ROOT}/{svc.service}"
        if svc.config:
            assert any(a.startswith(svc.config_mount + "/") for a in svc.command), svc.service
    # The mtail image makes the edge log volume's folder (owned by its user) where plan mounts it.
    mtail = (REPO / "images" / "mtail" / "Dockerfile").read_text()
    assert f"mkdir -p {render.EDGE_LOG_DIR}/{render.EDGE_LOG_SUBDIR}" in mtail
    assert f"chown -R llmstack:llmstack {render.EDGE_LOG_DIR}" in mtail
    # The images create the folders the config volumes are mounted on.
    for dockerfile in DOCKERFILES:
        for path in re.findall(r"/etc/llmstack/[a-z]+", dockerfile.read_text()):
            assert path.startswith(names.CONFIG_ROOT + "/"), dockerfile


# --- compromised LiteLLM releases ---------------------------------------------------------------


def _with_litellm(image: str) -> Any:
    data = yaml.safe_load(initialize.starter())
    data["images"] = {"source": data.get("images", "auto"), "litellm": image}
    return spec.parse(yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("image", [
    "llmstack/litellm:1.82.7", "llmstack/litellm:1.82.8", "ghcr.io/berriai/litellm:v1.82.7",
    "ghcr.io/berriai/litellm:main-v1.82.8-stable", "litellm/litellm:1.82.7.post1",
    "registry.local:5000/litellm:v1.82.8@sha256:" + "a" * 64,
])
def test_stack_yaml_refuses_a_compromised_litellm_release(image: str) -> None:
    with pytest.raises(SpecError) as info:
        _with_litellm(image)
    [problem] = info.value.problems
    assert problem.path == "images.litellm" and "compromised" in problem.message


@pytest.mark.parametrize("image", [
    "llmstack/litellm:1.108.7", "ghcr.io/berriai/litellm:v1.82.70", "litellm/litellm:11.82.7",
    "registry.local:1827/litellm:latest", "ghcr.io/berriai/litellm:main-stable",
])
def test_other_litellm_releases_are_accepted(image: str) -> None:
    assert _with_litellm(image).images.litellm == image


def test_the_pinned_litellm_is_not_compromised() -> None:
    assert {"1.82.7", "1.82.8"} <= images.LITELLM_FORBIDDEN_VERSIONS
    assert images.LITELLM_VERSION not in images.LITELLM_FORBIDDEN_VERSIONS
    assert images.forbidden_litellm_version(images.LITELLM.tag) is None


@pytest.mark.parametrize("version", ["1.82.7", "1.82.8"])
def test_the_image_build_refuses_a_compromised_litellm(monkeypatch: pytest.MonkeyPatch,
                                                       version: str) -> None:
    monkeypatch.setattr(images, "LITELLM_VERSION", version)
    with pytest.raises(builder.ImageBuildError, match="compromised"):
        builder.build_args(images.LITELLM)
    assert "LITELLM_VERSION" not in builder.build_args(images.NGINX)
