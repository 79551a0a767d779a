"""GPUs: nvidia-smi parsing (real output shapes), device requests, VRAM arithmetic, checks."""

from __future__ import annotations

from typing import Any

import pytest

from llmstack import gpu
from llmstack.gpu import MIB, Gpu
from llmstack.spec import ModelSpec, StackSpec

# `nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used --format=csv,noheader,nounits`
# as printed by real drivers (values in MiB; total is what the driver reports, not the label).
DGX_H100 = "".join(
    f"{i}, GPU-{u}, NVIDIA H100 80GB HBM3, 81559, {used}\n" for i, (u, used) in enumerate([
        ("5b2a3c8e-0f1d-7e44-9b12-6c0d4e8f2a13", 0), ("c1f0a7d2-3b5e-4a6c-8d9f-0e1a2b3c4d5e", 0),
        ("0d9e8f7a-6b5c-4d3e-2f1a-0b9c8d7e6f5a", 4), ("a8b7c6d5-e4f3-4a2b-9c1d-0e9f8a7b6c5d", 0),
        ("11223344-5566-4778-899a-abbccddeeff0", 0), ("f0e1d2c3-b4a5-4968-8776-655443322110", 0),
        ("9a8b7c6d-5e4f-4a3b-2c1d-0e0f1a2b3c4d", 0), ("1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
                                                      35210)]))
WORKSTATION = (
    "0, GPU-8c9b3f2e-1d4a-4e5b-9a7c-3f2e1d4a4e5b, NVIDIA GeForce RTX 4090, 24564, 1123\r\n"
    "1, GPU-2e7d1c0b-9a8f-4e6d-b5c4-a3b2c1d0e9f8, NVIDIA GeForce RTX 3090, 24576, 18\r\n")
VGPU_NA = "0, GPU-3f6a8b1c-2d4e-4f5a-8b9c-0d1e2f3a4b5c, GRID A100D-40C, 40960, [N/A]\n"
NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.\n")


def host(*specs: tuple[int, int, int]) -> list[Gpu]:
    """GPUs (index, total MiB, used MiB) with deterministic UUIDs."""
    return [Gpu(i, f"GPU-0000000{i}-aaaa-4bbb-8ccc-dddddddddddd", "NVIDIA A100-SXM4-80GB", t, u)
            for i, t, u in specs]


def stack(*models: dict[str, Any]) -> StackSpec:
    return StackSpec.model_validate({"models": list(models)})


def vllm(name: str, source: str, gpus: list[int | str], **extra: Any) -> dict[str, Any]:
    return {"name": name, "backend": "vllm", "source": source, "gpus": gpus, **extra}


# --- nvidia-smi ----------------------------------------------------------------------------------


def test_eight_gpu_dgx_output_is_parsed_in_index_order() -> None:
    gpus = gpu.parse_nvidia_smi(DGX_H100)
    assert [g.index for g in gpus] == list(range(8))
    assert gpus[0] == Gpu(0, "GPU-5b2a3c8e-0f1d-7e44-9b12-6c0d4e8f2a13", "NVIDIA H100 80GB HBM3",
                          81559, 0)
    assert gpus[7].memory_free_mib == 81559 - 35210


def test_workstation_output_with_crlf_and_mixed_cards() -> None:
    gpus = gpu.parse_nvidia_smi(WORKSTATION)
    assert [(g.name, g.memory_total_mib, g.memory_used_mib) for g in gpus] == [
        ("NVIDIA GeForce RTX 4090", 24564, 1123), ("NVIDIA GeForce RTX 3090", 24576, 18)]


def test_not_available_memory_is_unknown_not_zero() -> None:
    (only,) = gpu.parse_nvidia_smi(VGPU_NA)
    assert only.memory_used_mib is None
    assert only.memory_free_mib is None


def test_driver_failure_message_is_reported_in_its_own_words() -> None:
    with pytest.raises(gpu.GpuQueryError, match="couldn't communicate with the NVIDIA driver"):
        gpu.parse_nvidia_smi(NO_DRIVER)


def test_no_output_means_no_gpus() -> None:
    assert gpu.parse_nvidia_smi("\n") == []


# --- device requests -----------------------------------------------------------------------------


def test_device_request_names_exactly_the_listed_gpus() -> None:
    assert gpu.device_request([0, 1]) == {"driver": "nvidia", "device_ids": ["0", "1"],
                                          "capabilities": [["gpu"]]}
    uuid = "GPU-8c9b3f2e-1d4a-4e5b-9a7c-3f2e1d4a4e5b"
    assert gpu.device_request([uuid])["device_ids"] == [uuid]
    assert "count" not in gpu.device_request([3])


@pytest.mark.parametrize("bad", [[], ["all"], [-1], ["0,1"]])
def test_device_request_refuses_all_or_nothing(bad: list[Any]) -> None:
    with pytest.raises(ValueError):
        gpu.device_request(bad)


def test_the_engine_starts_a_gpu_model_with_that_device_request_and_no_privileges() -> None:
    from docker.errors import NotFound
    from docker.types import DeviceRequest

    from llmstack import plan
    from llmstack.engine.containers import Project

    created: dict[str, Any] = {}

    class FakeContainers:
        def get(self, name: str) -> Any:
            raise NotFound(name)

        def create(self, image: str, **kwargs: Any) -> Any:
            created.update(kwargs, image=image)
            return type("C", (), {"id": "abc", "start": lambda self: None})()

    client = type("Client", (), {"containers": FakeContainers()})()
    svc = plan.ServiceSpec(service="model-x", role="model", image="vllm/vllm-openai:v0.11.0",
                           command=["--model", "m"], gpus=["1", "3"])
    Project(client, "p").start(svc)  # type: ignore[arg-type]
    assert created["device_requests"] == [DeviceRequest(driver="nvidia", device_ids=["1", "3"],
                                                        capabilities=[["gpu"]])]
    assert created["device_requests"][0]["Count"] in (0, None)
    assert not created.get("privileged")
    assert created["cap_drop"] == ["ALL"]


# --- estimates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "params"), [
    ("hf:deepseek-ai/deepseek-coder-6.7b-instruct", 6.7e9),
    ("hf:Qwen/Qwen2.5-Coder-7B-Instruct", 7e9),
    ("hf:mistralai/Mixtral-8x7B-Instruct-v0.1", 56e9),
    ("SmolLM2-135M-Instruct.Q4_1.gguf", 135e6),
    ("hf:hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", 70e9),
    ("hf:openai-community/gpt2", None),
    ("hf:microsoft/Phi-3-mini-4k-instruct", None),
])
def test_parameter_count_from_names(text: str, params: float | None) -> None:
    assert gpu.params_from_name(text) == params


@pytest.mark.parametrize(("model", "expected"), [
    ({"backend": "vllm", "source": "hf:org/m-7b"}, 2.0),
    ({"backend": "vllm", "source": "hf:org/m-7b", "args": ["--dtype", "float32"]}, 4.0),
    ({"backend": "vllm", "source": "hf:org/m-7b", "args": ["--quantization=fp8"]}, 1.0),
    ({"backend": "vllm", "source": "hf:org/m-7b-AWQ"}, 0.5625),
    ({"backend": "llamacpp", "source": "volume:v/m-7b.Q4_1.gguf"}, 5.0 / 8),
    ({"backend": "llamacpp", "source": "volume:v/m-7b.Q8_0.gguf"}, 8.5 / 8),
    ({"backend": "llamacpp", "source": "volume:v/m-7b-Q4_K_M.gguf"}, 4.5 / 8),
])
def test_bytes_per_parameter(model: dict[str, Any], expected: float) -> None:
    spec = ModelSpec.model_validate({"name": "m", "gpus": [0], **model})
    assert gpu.bytes_per_param(spec)[0] == pytest.approx(expected)


def test_kv_cache_heuristic_matches_a_7b_dense_model() -> None:
    # 7e9 params -> 33 layers of width 4224 (Llama-2-7B: 32 x 4096, 512 KiB per token).
    assert gpu.kv_bytes_per_token(7e9) == 2 * 33 * 4224 * 2
    assert 0.9 < gpu.kv_bytes_per_token(7e9) / (2 * 32 * 4096 * 2) < 1.15


def test_vllm_estimate_splits_weights_and_kv_over_tensor_parallel_gpus() -> None:
    model = ModelSpec.model_validate(vllm("m", "hf:org/model-7b", [0, 1], context=8192))
    est = gpu.estimate(model)
    weights = 7e9 * 2 / MIB
    kv = 2 * 33 * 4224 * 2 * 8192 / MIB
    assert est.weights_mib == pytest.approx(weights)
    assert est.kv_mib == pytest.approx(kv)
    assert est.need_mib == pytest.approx(weights / 2 + kv / 2 + 2048)
    assert est.reserve_fraction == 0.9


def test_a_weights_file_size_beats_the_name() -> None:
    model = ModelSpec.model_validate({"name": "m", "source": "volume:models/m-7b.Q4_1.gguf",
                                      "gpus": [0], "context": 4096})
    est = gpu.estimate(model, file_bytes=4_100_000_000)
    assert est.weights_mib == pytest.approx(4_100_000_000 / MIB)
    assert est.need_mib == pytest.approx(4_100_000_000 / MIB + 512
                                         + gpu.kv_bytes_per_token(7e9) * 4096 / MIB)
    assert "file size" in est.basis[0]


# --- checks against the host ---------------------------------------------------------------------


def findings(report: gpu.GpuReport, status: str) -> list[str]:
    return [f"{f.check}: {f.detail}" for f in report.findings if f.status == status]


def test_a_gpu_the_host_lacks_is_refused_naming_what_it_has() -> None:
    report = gpu.check(stack(vllm("a", "hf:org/m-7b", [2])), host((0, 81920, 0), (1, 81920, 0)))
    (fail,) = findings(report, "fail")
    assert "models[0].gpus (a): the host has no GPU 2" in fail
    assert "0 (GPU-00000000-" in fail and "1 (GPU-00000001-" in fail


def test_gpu_findings_are_config_scope_checks_findings_exit_1() -> None:
    from llmstack import checks

    report = gpu.check(stack(vllm("a", "hf:org/m-7b", [2])), host((0, 81920, 0)))
    (fail,) = report.findings
    assert isinstance(fail, checks.Finding) and fail.scope == "config"
    assert checks.exit_code(report.findings) == 1
    assert report.to_dict()["findings"] == [{"check": "gpu-assignment", "status": "fail",
                                             "detail": fail.detail, "fix": fail.fix,
                                             "scope": "config"}]


def test_one_gpu_named_by_index_and_by_uuid_is_still_shared() -> None:
    gpus = host((0, 81920, 0))
    spec = stack(vllm("a", "hf:org/m-7b", [0], gpu_memory_utilization=0.4),
                 vllm("b", "hf:org/n-7b", [gpus[0].uuid], gpu_memory_utilization=0.4))
    fails = findings(gpu.check(spec, gpus), "fail")
    assert any("gpu-assignment: GPU 0 is given to 2 models (a, b)" in f for f in fails)


def test_two_vllm_models_sharing_a_gpu_must_split_its_memory() -> None:
    gpus = host((0, 81920, 0))
    both = stack(vllm("a", "hf:org/m-1b", [0], gpu_share=True),
                 vllm("b", "hf:org/n-1b", [0], gpu_share=True))
    # 2 x 0.9 x 80 GiB, plus 1 GiB of CUDA context each.
    assert any("GPU 0" in f and "need 146.0 GiB" in f
               for f in findings(gpu.check(both, gpus), "fail"))
    halves = stack(vllm("a", "hf:org/m-1b", [0], gpu_share=True, gpu_memory_utilization=0.45),
                   vllm("b", "hf:org/n-1b", [0], gpu_share=True, gpu_memory_utilization=0.45))
    report = gpu.check(halves, gpus)
    assert findings(report, "fail") == [] and findings(report, "warn") == []
    assert report.budgets[0].free_after_mib == pytest.approx(81920 * 0.1 - 2 * 1024)


def test_a_70b_model_does_not_fit_one_24gb_gpu_but_fits_four_80gb() -> None:
    spec = stack(vllm("big", "hf:meta-llama/Llama-3.1-70B-Instruct", [0]))
    fails = findings(gpu.check(spec, host((0, 24564, 0))), "fail")
    assert any("weights and overhead (~132.4 GiB per GPU) exceed the 21.6 GiB" in f
               for f in fails)
    tp4 = stack(vllm("big", "hf:meta-llama/Llama-3.1-70B-Instruct", [0, 1, 2, 3]))
    report = gpu.check(tp4, host(*[(i, 81559, 0) for i in range(4)]))
    assert findings(report, "fail") == []
    assert [len(b.claims) for b in report.budgets] == [1, 1, 1, 1]


def test_only_the_kv_estimate_overflowing_is_a_warning() -> None:
    spec = stack(vllm("m", "hf:org/m-7b", [0], context=32768))
    report = gpu.check(spec, host((0, 24564, 0)))
    assert findings(report, "fail") == []
    assert any("32768-token KV cache" in w for w in findings(report, "warn"))


def test_memory_used_by_other_processes_counts() -> None:
    spec = stack(vllm("m", "hf:org/m-7b", [0]))
    report = gpu.check(spec, host((0, 81559, 40000)))
    assert any("only 40.6 GiB of 79.6 GiB is free" in f for f in findings(report, "fail"))


def test_a_running_model_is_not_counted_twice() -> None:
    spec = stack(vllm("m", "hf:org/m-7b", [0]))
    used_by_itself = host((0, 81559, 73400))
    assert findings(gpu.check(spec, used_by_itself, running={"m"}), "fail") == []
    assert findings(gpu.check(spec, used_by_itself), "fail") != []


def test_unknown_size_is_a_warning_not_a_guess() -> None:
    report = gpu.check(stack(vllm("m", "hf:org/custom-model", [0])), host((0, 81559, 0)))
    assert any("cannot estimate its memory" in w for w in findings(report, "warn"))
    assert findings(report, "fail") == []


def test_budget_lines_show_each_gpu_and_its_models() -> None:
    spec = stack({"name": "small", "source": "volume:models/m-1b.Q4_1.gguf", "gpus": [1]})
    report = gpu.check(spec, host((0, 81559, 0), (1, 24564, 1000)), {"small": 700 * MIB})
    lines = gpu.budget_lines(report)
    assert lines[0].startswith("GPU 1 NVIDIA A100-SXM4-80GB (GPU-00000001-")
    assert "small" in lines[1] and "needs ~" in lines[1]
    assert lines[-1].strip().startswith("left after up") and lines[-1].endswith("[ok]")
    assert not any(line.startswith("GPU 0") for line in lines)  # unused GPUs are not listed
