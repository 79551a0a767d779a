"""doctor on GPU hosts: each image's required CUDA against the driver's, rootless Docker
without the toolkit's no-cgroups, cgroup v2 + systemd; against recorded outputs."""

from __future__ import annotations

import dataclasses

from llmstack import cudacompat, doctor
from llmstack.engine import host
from llmstack.gpu import Gpu
from tests.unit.test_doctor import by_check, facts_with, gpu_spec

# `nvidia-smi` (no arguments) on a driver 550 host: the header has the driver's CUDA version.
SMI_550 = """\
Tue Dec  2 21:14:03 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
|-----------------------------------------+------------------------+----------------------+
| GPU  Name                 Persistence-M | Bus-Id          Disp.A | Volatile Uncorr. ECC |
| Fan  Temp   Perf          Pwr:Usage/Cap |           Memory-Usage | GPU-Util  Compute M. |
|                                         |                        |               MIG M. |
|=========================================+========================+======================|
|   0  NVIDIA L40S                    On  |   00000000:01:00.0 Off |                    0 |
| N/A   31C    P8             32W /  350W |       3MiB /  46068MiB |      0%      Default |
+-----------------------------------------+------------------------+----------------------+
"""
SMI_570 = SMI_550.replace("550.54.15", "570.86.15").replace("CUDA Version: 12.4",
                                                            "CUDA Version: 12.8")
# `nvidia-smi -q` prints it as a field.
SMI_Q = "Driver Version                            : 535.183.01\nCUDA Version : 12.2\n"
# Env of an nvidia/cuda:12.8.1-runtime based image (vLLM v0.11.0 is built on CUDA 12.8), as
# `docker image inspect` shows it (the brand list shortened).
CUDA_128_ENV = [
    "PATH=/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/sbin",
    "NVIDIA_REQUIRE_CUDA=cuda>=12.8 brand=unknown,driver>=470,driver<471 "
    "brand=grid,driver>=470,driver<471 brand=tesla,driver>=470,driver<471 "
    "brand=tesla,driver>=535,driver<536",
    "NVIDIA_DRIVER_CAPABILITIES=compute,utility", "NVIDIA_VISIBLE_DEVICES=all",
    "CUDA_VERSION=12.8.1"]
# The toolkit's default /etc/nvidia-container-runtime/config.toml (excerpt, as installed).
TOOLKIT_DEFAULT = b"""\
#accept-nvidia-visible-devices-as-volume-mounts = false
disable-require = false
supported-driver-capabilities = "compat32,compute,display,graphics,ngx,utility,video"

[nvidia-container-cli]
environment = []
ldconfig = "@/sbin/ldconfig.real"
load-kmods = true
#no-cgroups = false

[nvidia-container-runtime]
log-level = "info"
mode = "auto"
runtimes = ["docker-runc", "runc", "crun"]
"""
TOOLKIT_ROOTLESS = TOOLKIT_DEFAULT.replace(b"#no-cgroups = false", b"no-cgroups = true")
# `docker info` SecurityOptions of a rootless engine and of a rootful one.
ROOTLESS = ["name=seccomp,profile=builtin", "name=rootless", "name=cgroupns"]
ROOTFUL = ["name=apparmor", "name=seccomp,profile=builtin", "name=cgroupns"]
VLLM = "docker.io/vllm/vllm-openai:v0.11.0"


def test_driver_cuda_version_from_both_nvidia_smi_forms() -> None:
    assert cudacompat.driver_cuda(SMI_550) == (12, 4)
    assert cudacompat.driver_cuda(SMI_Q) == (12, 2)
    assert cudacompat.driver_cuda("NVIDIA-SMI has failed because it couldn't communicate "
                                  "with the NVIDIA driver.") is None


def test_required_cuda_from_the_image_env() -> None:
    assert cudacompat.required_cuda(CUDA_128_ENV) == (12, 8)
    assert cudacompat.required_cuda(["PATH=/usr/bin"]) is None


def test_an_image_needing_newer_cuda_than_the_driver_fails_with_the_fix() -> None:
    (old,) = cudacompat.cuda_findings({VLLM: CUDA_128_ENV}, SMI_550)
    assert old.status == "fail" and "needs CUDA >= 12.8" in old.detail
    assert "supports CUDA 12.4" in old.detail and "upgrade the NVIDIA driver" in old.fix
    (new,) = cudacompat.cuda_findings({VLLM: CUDA_128_ENV}, SMI_570)
    assert new.status == "ok"
    (unknown,) = cudacompat.cuda_findings({VLLM: CUDA_128_ENV}, "")
    assert unknown.status == "warn"
    assert cudacompat.cuda_findings({"llmstack/llamacpp:forky": ["PATH=/bin"]}, SMI_550) == []


def test_rootless_docker_needs_the_toolkits_no_cgroups() -> None:
    (bad,) = cudacompat.host_findings(ROOTLESS, "2", "systemd", TOOLKIT_DEFAULT)
    assert bad.status == "fail" and "no-cgroups is not set" in bad.detail
    assert "nvidia-ctk config --set nvidia-container-cli.no-cgroups --in-place" in bad.fix
    (unread,) = cudacompat.host_findings(ROOTLESS, "2", "systemd", None)
    assert unread.status == "fail" and "could not be read" in unread.detail
    (good,) = cudacompat.host_findings(ROOTLESS, "2", "systemd", TOOLKIT_ROOTLESS)
    assert good.status == "ok"


def test_cgroup_v2_with_systemd_warns_about_daemon_reload() -> None:
    (warn,) = cudacompat.host_findings(ROOTFUL, "2", "systemd", None)
    assert warn.status == "warn" and "daemon-reload" in warn.detail
    assert cudacompat.host_findings(ROOTFUL, "1", "cgroupfs", None) == []


def test_doctor_reports_them_for_a_gpu_stack() -> None:
    engine = dataclasses.replace(facts_with().engine, security_options=tuple(ROOTLESS),
                                 cgroup_version="2", cgroup_driver="systemd")
    gpu = host.GpuProbe("ok", [Gpu(0, "GPU-a", "NVIDIA L40S", 46068, 3)], image=VLLM,
                        nvidia_smi=SMI_550)
    facts = facts_with(engine=engine, gpu=gpu, image_env={VLLM: CUDA_128_ENV},
                       toolkit_config=TOOLKIT_DEFAULT)
    findings, _ = doctor.evaluate_gpus(gpu_spec(), facts)
    assert [f.status for f in by_check(findings, "gpu-cuda")] == ["fail"]
    assert [f.status for f in by_check(findings, "gpu-rootless")] == ["fail"]
    # A CPU-only stack is not failed for the GPU images it does not run.
    from tests.unit.test_doctor import spec
    findings, _ = doctor.evaluate_gpus(spec(), facts)
    assert by_check(findings, "gpu-cuda") == [] and by_check(findings, "gpu-rootless") == []


def test_docker_info_fields_reach_engine_facts() -> None:
    from tests.unit.test_doctor import FakeClient, now_rfc3339

    class RootlessClient(FakeClient):
        def info(self) -> dict[str, object]:
            return {**super().info(), "SecurityOptions": ROOTLESS, "CgroupVersion": "2",
                    "CgroupDriver": "systemd"}

    facts = host.engine_facts(RootlessClient(now_rfc3339()))  # type: ignore[arg-type]
    assert facts.security_options == tuple(ROOTLESS)
    assert (facts.cgroup_version, facts.cgroup_driver) == ("2", "systemd")
    assert facts.to_dict()["security_options"] == ROOTLESS
