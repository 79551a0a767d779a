"""Will the GPU images start on this host? Pure checks of what doctor gathers.

- An NVIDIA CUDA image says the CUDA it needs in its config: `NVIDIA_REQUIRE_CUDA=cuda>=12.8
  brand=...`. The NVIDIA container toolkit refuses to start it on a driver whose CUDA version
  (the `CUDA Version:` of `nvidia-smi`) is older ("requirement error: unsatisfied condition:
  cuda>=12.8"), so doctor says so, with the fix, before `up` pulls or starts anything.
- Rootless Docker cannot manage cgroups for the toolkit: its config.toml must set
  `no-cgroups = true` under [nvidia-container-cli] (NVIDIA container toolkit install guide,
  "Rootless mode": `nvidia-ctk config --set nvidia-container-cli.no-cgroups --in-place`).
- On a cgroup v2 host with the systemd cgroup driver, `systemctl daemon-reload` can take the
  GPUs away from running containers (nvidia-container-toolkit issue #48): a warning.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping

from .checks import Finding

TOOLKIT_CONFIG = "/etc/nvidia-container-runtime/config.toml"
_DRIVER_CUDA_RE = re.compile(r"CUDA Version\s*:\s*(\d+)\.(\d+)")
_REQUIRE_RE = re.compile(r"(?:^|\s)cuda>=(\d+)\.(\d+)")


def driver_cuda(nvidia_smi: str) -> tuple[int, int] | None:
    """The CUDA version the driver supports, from `nvidia-smi` (its table header) or
    `nvidia-smi -q`; None when it does not say (no driver, an error message)."""
    match = _DRIVER_CUDA_RE.search(nvidia_smi)
    return (int(match.group(1)), int(match.group(2))) if match else None


def required_cuda(env: list[str]) -> tuple[int, int] | None:
    """The `cuda>=X.Y` of an image's NVIDIA_REQUIRE_CUDA (its config's Env), or None."""
    for item in env:
        key, _, value = item.partition("=")
        if key == "NVIDIA_REQUIRE_CUDA":
            match = _REQUIRE_RE.search(value)
            return (int(match.group(1)), int(match.group(2))) if match else None
    return None


def _version(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


def cuda_findings(images: Mapping[str, list[str]], nvidia_smi: str) -> list[Finding]:
    """Each GPU image's required CUDA against the driver's. `images`: {image: its Env}."""
    have = driver_cuda(nvidia_smi)
    out = []
    for image, env in images.items():
        need = required_cuda(env)
        if need is None:
            continue
        if have is None:
            out.append(Finding("gpu-cuda", "warn", f"{image} needs CUDA {_version(need)}; the "
                               "driver's CUDA version is unknown (nvidia-smi did not print it)",
                               "run nvidia-smi on the host and compare its CUDA Version"))
        elif have < need:
            out.append(Finding("gpu-cuda", "fail", f"{image} needs CUDA >= {_version(need)} "
                               f"(NVIDIA_REQUIRE_CUDA) but the driver supports CUDA "
                               f"{_version(have)}: the NVIDIA runtime will refuse to start it",
                               "upgrade the NVIDIA driver (see the CUDA toolkit release notes "
                               "for the minimum driver of each CUDA version), or name an image "
                               "built for an older CUDA under `images:` in stack.yaml"))
        else:
            out.append(Finding("gpu-cuda", "ok", f"{image} needs CUDA {_version(need)}; the "
                               f"driver supports {_version(have)}"))
    return out


def no_cgroups(config_toml: bytes | None) -> bool | None:
    """`no-cgroups` of the toolkit's config.toml; None when the file is missing/unreadable."""
    if not config_toml:
        return None
    try:
        data = tomllib.loads(config_toml.decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError:
        return None
    cli = data.get("nvidia-container-cli") or {}
    return bool(cli.get("no-cgroups", False))


def host_findings(security_options: list[str], cgroup_version: str, cgroup_driver: str,
                  config_toml: bytes | None) -> list[Finding]:
    """Rootless Docker without the toolkit's no-cgroups; cgroup v2 + systemd (a warning)."""
    out = []
    rootless = any("name=rootless" in option for option in security_options)
    if rootless:
        setting = no_cgroups(config_toml)
        if setting is not True:
            seen = "is not set" if setting is False else f"could not be read ({TOOLKIT_CONFIG})"
            out.append(Finding("gpu-rootless", "fail", "the engine is rootless Docker and the "
                               f"NVIDIA toolkit's no-cgroups {seen}: GPU containers fail to "
                               "start (a rootless engine cannot set up device cgroups)",
                               "sudo nvidia-ctk config --set nvidia-container-cli.no-cgroups "
                               "--in-place, then restart the rootless engine"))
        else:
            out.append(Finding("gpu-rootless", "ok", "rootless Docker with the NVIDIA toolkit's "
                               "no-cgroups = true"))
    if cgroup_version == "2" and cgroup_driver == "systemd" and not rootless:
        out.append(Finding("gpu-cgroups", "warn", "cgroup v2 with the systemd cgroup driver: "
                           "`systemctl daemon-reload` on the host can detach the GPUs from "
                           "running containers (CUDA errors until they restart; "
                           "nvidia-container-toolkit issue #48)",
                           "after a daemon-reload run `llmstack up` (it recreates what fails), "
                           "or see the toolkit's troubleshooting guide for the device rules"))
    return out
