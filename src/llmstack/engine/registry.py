"""Registry reads and pulls through the engine API: the engine talks to the registry, so a
remote host pulls for itself, and the credentials are those `docker login` stored on this
machine (the Docker SDK reads ~/.docker/config.json, credential helpers included, and sends
them to the engine with each request)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import docker
import docker.errors

from llmstack.errors import (
    OFFLINE_HINT,
    DigestMismatch,
    ImageNotInRegistry,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
)
from llmstack.images import parse_reference

Progress = Callable[[str], None]
PROGRESS_EVERY_S = 2.0  # one progress line per image at most this often

_AUTH = ("unauthorized", "authentication required", "no basic auth credentials",
         "incorrect username or password", "access to the resource is denied", "denied:")
_MISSING = ("manifest unknown", "not found", "does not exist", "name unknown")
_UNREACHABLE = ("no such host", "connection refused", "i/o timeout", "timeout",
                "network is unreachable", "no route to host", "dial tcp", "eof",
                "connection reset", "server misbehaving", "http response to https client",
                "tls:", "x509:")


def classify(ref: str, error: object) -> RegistryError:
    """The engine's registry error as llmstack's own type, naming the registry and the fix."""
    text = str(getattr(error, "explanation", None) or error)
    low = text.lower()
    registry = parse_reference(ref).registry
    if any(s in low for s in _AUTH):
        return RegistryAuthError(
            f"registry {registry} refused access to {ref}: {text}",
            f"log in on this machine (`docker login {registry}`; llmstack passes those "
            "credentials to the engine), check the user's pull rights, or: " + OFFLINE_HINT)
    if any(s in low for s in _MISSING):
        return ImageNotInRegistry(
            f"registry {registry} has no {ref}: {text}",
            "check the repository, tag and digest under `images:` in stack.yaml")
    if any(s in low for s in _UNREACHABLE):
        hint = OFFLINE_HINT
        if "http response to https client" in low:
            hint = (f"{registry} speaks plain HTTP: list it in the engine's daemon.json "
                    "\"insecure-registries\", or serve it with TLS; or: " + OFFLINE_HINT)
        return RegistryUnreachable(f"registry {registry} did not answer for {ref}: {text}",
                                   hint)
    return RegistryError(f"pulling {ref} from {registry} failed: {text}", OFFLINE_HINT)


def registry_digest(client: docker.DockerClient, ref: str) -> str:
    """The digest the registry serves for `ref` now, read by the engine (no download)."""
    try:
        data = client.api.inspect_distribution(ref)
    except docker.errors.APIError as exc:
        raise classify(ref, exc) from exc
    except docker.errors.DockerException as exc:
        raise classify(ref, exc) from exc
    return str(data["Descriptor"]["digest"])


def pull(client: docker.DockerClient, ref: str, progress: Progress) -> str:
    """Pull `ref` through the engine (by its digest when it names one), with progress lines;
    check the pulled image against the digest; tag it as named. The image id."""
    parsed = parse_reference(ref)
    try:
        stream = client.api.pull(parsed.repository, tag=parsed.digest or parsed.tag or "latest",
                                 stream=True, decode=True)
        _follow(ref, stream, progress)
        image = client.images.get(f"{parsed.repository}@{parsed.digest}" if parsed.digest
                                  else parsed.tagged)
    except docker.errors.APIError as exc:
        raise classify(ref, exc) from exc
    if parsed.digest:
        digests = [d.rpartition("@")[2] for d in image.attrs.get("RepoDigests") or []]
        if parsed.digest not in digests:
            raise DigestMismatch(f"{ref}: the engine pulled an image whose digests are "
                                 f"{', '.join(digests) or 'none'}, not {parsed.digest}",
                                 "check the registry and the pin under `images:`")
        if parsed.tag:
            # A pull by digest leaves the image untagged: name it as stack.yaml does.
            client.api.tag(image.id, parsed.repository, parsed.tag)
    return str(image.id)


def _follow(ref: str, stream: Any, progress: Progress) -> None:
    """Read the engine's pull messages: an error becomes a RegistryError; bytes of every
    layer are summed into one line every PROGRESS_EVERY_S seconds."""
    layers: dict[str, tuple[int, int]] = {}
    done: set[str] = set()
    last = time.monotonic()
    for msg in stream:
        if "error" in msg:
            raise classify(ref, msg.get("error"))
        layer, status = msg.get("id"), str(msg.get("status", ""))
        detail = msg.get("progressDetail") or {}
        if layer and detail.get("total") and status == "Downloading":
            layers[layer] = (int(detail.get("current", 0)), int(detail["total"]))
        if layer and status in ("Download complete", "Pull complete", "Already exists"):
            done.add(layer)
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S and layers:
            last = now
            got = sum(c for c, _ in layers.values()) / 1e6
            total = sum(t for _, t in layers.values()) / 1e6
            progress(f"  {ref}: {got:.0f}/{total:.0f} MB, {len(done)} layer(s) done")
        if status.startswith("Status:") or status.startswith("Digest:"):
            progress(f"  {status}")
