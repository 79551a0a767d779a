"""Models sharing a GPU: they start one at a time in a stable order (models on other GPUs
start together), and TGI's --cuda-memory-fraction counts its neighbours' shares."""

from __future__ import annotations

from typing import Any

import pytest

from llmstack import deploy, gpu, names, plan, render
from llmstack.spec import StackSpec
from tests.fake_engine import FakeEngine
from tests.unit.test_deploy import Events, starts
from tests.unit.test_gpu import findings, host


def model(name: str, backend: str, gpus: list[int | str], share: float,
          **extra: Any) -> dict[str, Any]:
    return {"name": name, "backend": backend, "source": f"hf:org/{name}-7b", "gpus": gpus,
            "gpu_share": True, "gpu_memory_utilization": share, **extra}


def stack(*models: dict[str, Any]) -> StackSpec:
    return StackSpec.model_validate({"models": list(models)})


def svc(name: str) -> str:
    return names.model_service(name)


# TGI first in stack.yaml on GPU 0 with two vLLMs; a third vLLM alone on GPU 1; a llama.cpp
# model on the CPU.
MIXED = stack(model("tgi-a", "tgi", [0], 0.3), model("vllm-b", "vllm", [0], 0.3),
              model("vllm-c", "vllm", [1], 0.9), model("vllm-d", "vllm", [0], 0.3),
              {"name": "cpu-e", "source": "volume:v/e.gguf"})


def wanted(spec: StackSpec) -> dict[str, plan.ServiceSpec]:
    return {s.service: s for s in plan.desired(spec, render.render(spec), "sk-internal")}


def test_models_sharing_a_gpu_wait_for_each_other_tgi_last() -> None:
    assert [m.name for m in gpu.start_order(MIXED.models)] == [
        "vllm-b", "vllm-c", "vllm-d", "tgi-a"]
    assert gpu.start_after(MIXED.models) == {
        "vllm-b": [], "vllm-c": [], "vllm-d": ["vllm-b"], "tgi-a": ["vllm-b", "vllm-d"]}
    services = wanted(MIXED)
    assert services[svc("vllm-b")].start_after == (names.HEALTH,)
    assert services[svc("vllm-c")].start_after == (names.HEALTH,)  # its own GPU: parallel
    assert services[svc("vllm-d")].start_after == (names.HEALTH, svc("vllm-b"))
    assert services[svc("tgi-a")].start_after == (names.HEALTH, svc("vllm-b"), svc("vllm-d"))
    assert services[svc("cpu-e")].start_after == (names.HEALTH,)


def test_the_order_is_stable_and_does_not_change_config_hashes() -> None:
    again = wanted(MIXED)
    assert {k: (v.start_after, v.config_hash()) for k, v in again.items()} == {
        k: (v.start_after, v.config_hash()) for k, v in wanted(MIXED).items()}


def test_models_on_separate_gpus_start_together() -> None:
    spec = stack(model("a", "vllm", [0], 0.9), model("b", "vllm", [1], 0.9),
                 model("c", "tgi", [2, 3], 0.9))
    assert gpu.start_after(spec.models) == {"a": [], "b": [], "c": []}


def test_an_index_and_a_uuid_may_be_one_gpu_so_they_wait() -> None:
    uuid = "GPU-5b2a3c8e-0f1d-7e44-9b12-6c0d4e8f2a13"
    spec = stack(model("a", "vllm", [0], 0.4), model("b", "vllm", [uuid], 0.4))
    assert gpu.start_after(spec.models) == {"a": [], "b": ["a"]}
    # Without gpu_share they cannot share a GPU (gpu.check fails if they do): no waiting.
    apart = stack({**model("a", "vllm", [0], 0.9), "gpu_share": False},
                  {**model("b", "vllm", [uuid], 0.9), "gpu_share": False})
    assert gpu.start_after(apart.models) == {"a": [], "b": []}


def test_up_starts_a_gpu_neighbour_only_once_the_first_is_ready(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deploy, "POLL_INTERVAL", 0.0)
    spec = stack(model("a", "vllm", [0], 0.45), model("b", "vllm", [0], 0.45),
                 model("c", "vllm", [1], 0.9))
    services = [s for s in plan.desired(spec, render.render(spec), "sk-internal")
                if s.role in ("model", names.HEALTH)]
    engine = FakeEngine(network=True)
    engine.answers = {svc("a"): ["503", "503", "200"], svc("c"): ["503", "200"]}
    events = Events()
    deploy._start_in_order(engine, services,
                           {s.service: plan.Action("create", s.service, "new") for s in services},
                           {}, events, deploy.UpResult([]))
    order = [(s, st) for s, st, _ in events.seen if st in ("starting", "ready")]
    assert order.index((svc("c"), "starting")) < order.index((svc("a"), "ready"))
    assert order.index((svc("b"), "starting")) > order.index((svc("a"), "ready"))
    assert starts(engine) == [names.HEALTH, svc("a"), svc("c"), svc("b")]


# --- TGI's share ---------------------------------------------------------------------------------


def flag(service: plan.ServiceSpec, name: str) -> str:
    return service.command[service.command.index(name) + 1]


def test_tgi_fraction_is_its_share_plus_what_started_before_it_on_its_gpu() -> None:
    services = wanted(MIXED)
    # TGI leaves (1 - fraction) x total free (TGI's get_cuda_free_memory): after vllm-b and
    # vllm-d hold 0.3 each, 0.9 leaves TGI its own 0.3.
    assert flag(services[svc("tgi-a")], "--cuda-memory-fraction") == "0.9"
    assert flag(services[svc("vllm-b")], "--gpu-memory-utilization") == "0.3"  # per instance
    alone = wanted(stack(model("t", "tgi", [0, 1], 0.8)))
    assert flag(alone[svc("t")], "--cuda-memory-fraction") == "0.8"


def test_a_sharded_tgi_gets_the_smallest_of_its_gpus_totals() -> None:
    spec = stack(model("v", "vllm", [1], 0.5), model("t", "tgi", [0, 1], 0.4))
    assert gpu.memory_fraction(spec.models, spec.models[1]) == 0.4  # GPU 0: 0.4, GPU 1: 0.9


def test_tgi_counts_in_the_gpu_budget_by_its_share() -> None:
    gpus = host((0, 81920, 0))
    spec = stack(model("v", "vllm", [0], 0.5), model("t", "tgi", [0], 0.6))
    report = gpu.check(spec, gpus)
    # share x total + 1 GiB for each process's CUDA context
    assert [c.mib for c in report.budgets[0].claims] == pytest.approx([41984, 50176])
    assert any("GPU 0" in f for f in findings(report, "fail"))
    fits = gpu.check(stack(model("v", "vllm", [0], 0.5), model("t", "tgi", [0], 0.4)), gpus)
    assert [c.note.split(";")[0] for c in fits.budgets[0].claims] == [
        "reserves 0.5 x 80.0 GiB + 1.0 GiB CUDA context",
        "reserves 0.4 x 80.0 GiB + 1.0 GiB CUDA context"]
