"""Every backend's container as the engine receives it: image, command line, mounts, env,
shm, GPUs and the security settings (golden file).

"create" in the golden file is what `Project.start` passes to docker's `containers.create` for
the model's service (recorded by a stand-in client; the config hash label is a placeholder).
The golden file tests/unit/golden_backends.json is reviewed by hand; after an intended change
regenerate it with `UPDATE_GOLDEN=1 python -m pytest tests/unit/test_backends.py` and read
the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from llmstack import images, names, plan, render
from llmstack.backends import BACKENDS, vllm
from llmstack.spec import StackSpec
from tests.unit.recording_engine import as_json, started

GOLDEN = Path(__file__).with_name("golden_backends.json")

CASES: dict[str, dict[str, Any]] = {
    "llamacpp-cpu-chat": {"name": "deepseek-coder", "backend": "llamacpp",
                          "source": "volume:llmstack-models/SmolLM2-135M-Instruct.Q4_1.gguf",
                          "context": 2048, "args": ["--threads", "2"]},
    "llamacpp-cpu-embedding": {"name": "smollm2-embed", "backend": "llamacpp",
                               "task": "embedding",
                               "source": "volume:llmstack-models/SmolLM2-135M-Instruct.Q4_1.gguf"},
    "llamacpp-cuda-host-file": {"name": "qwen-coder", "backend": "llamacpp",
                                "source": "host:/srv/models/qwen2.5-coder-7b-q4_k_m.gguf",
                                "gpus": [1], "context": 16384},
    "llamacpp-cpu-hf-file": {"name": "qwen-coder", "backend": "llamacpp",
                             "source": "hf:bartowski/Qwen2.5-Coder-7B-Instruct-GGUF/"
                                       "Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf"},
    "vllm-one-gpu-hf": {"name": "deepseek-coder", "backend": "vllm",
                        "source": "hf:deepseek-ai/deepseek-coder-6.7b-instruct", "gpus": [0],
                        "context": 8192},
    "vllm-tensor-parallel-uuids": {"name": "llama-70b", "backend": "vllm",
                                   "source": "volume:hf-weights/Llama-3.1-70B-Instruct",
                                   "gpus": ["GPU-5b2a3c8e-0f1d-7e44-9b12-6c0d4e8f2a13",
                                            "GPU-c1f0a7d2-3b5e-4a6c-8d9f-0e1a2b3c4d5e"],
                                   "context": 32768, "gpu_memory_utilization": 0.85,
                                   "args": ["--enable-prefix-caching"]},
    "vllm-embedding": {"name": "bge", "backend": "vllm", "task": "embedding",
                       "source": "hf:BAAI/bge-large-en-v1.5", "gpus": [2], "context": 512},
    # The same embedding model without `context`: vLLM takes the model's own limit.
    "vllm-embedding-model-context": {"name": "bge", "backend": "vllm", "task": "embedding",
                                     "source": "hf:BAAI/bge-large-en-v1.5", "gpus": [2]},
    # An older vLLM named in stack.yaml: the flag that release knows.
    "vllm-embedding-v0.9.2": {"name": "bge", "backend": "vllm", "task": "embedding",
                              "source": "hf:BAAI/bge-large-en-v1.5", "gpus": [2],
                              "image": "docker.io/vllm/vllm-openai:v0.9.2"},
    "tgi-two-shards": {"name": "mistral", "backend": "tgi",
                       "source": "hf:mistralai/Mistral-7B-Instruct-v0.3", "gpus": [0, 1],
                       "context": 8192},
    "ollama-cpu-tag": {"name": "llama3", "backend": "ollama", "source": "ollama:llama3.1:8b"},
    "ollama-gpu-volume": {"name": "coder", "backend": "ollama",
                          "source": "volume:ollama-data", "gpus": [0]},
}


# The commits stack.lock pins these sources at (tgi's is not pinned yet: the path names the
# requested revision until the first fetch).
PINS = {
    "hf:bartowski/Qwen2.5-Coder-7B-Instruct-GGUF/Qwen2.5-Coder-7B-Instruct-Q4_K_M.gguf":
        "0123456789abcdef0123456789abcdef01234567",
    "hf:deepseek-ai/deepseek-coder-6.7b-instruct": "89abcdef0123456789abcdef0123456789abcdef",
    "hf:BAAI/bge-large-en-v1.5": "d4aa6901d3a41ba39fb536a557fa166f842b0e09",
}


def container(case: dict[str, Any]) -> dict[str, Any]:
    spec = StackSpec.model_validate({"models": [case]})
    model = spec.models[0]
    backend = BACKENDS[model.backend]
    service = names.model_service(model.name)
    wanted = [s for s in plan.desired(spec, render.render(spec), "sk-internal", PINS)
              if s.service == service]
    return {
        "create": as_json(started(spec.project, wanted)[service]),
        "port": backend.port,
        "readiness": backend.health_path,
        "served_name": backend.served_name(model),
    }


def test_every_backend_has_a_golden_case() -> None:
    assert {c["backend"] for c in CASES.values()} == set(BACKENDS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_container_matches_golden(name: str) -> None:
    actual = container(CASES[name])
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden[name] = actual
        GOLDEN.write_text(json.dumps(dict(sorted(golden.items())), indent=2) + "\n")
    assert name in golden, f"no golden entry for {name}: run with UPDATE_GOLDEN=1 and review"
    assert actual == golden[name]


# The properties the golden file must keep, stated once more in words.


def test_vllm_tensor_parallel_size_and_shared_memory_follow_the_gpus() -> None:
    one = container(CASES["vllm-one-gpu-hf"])
    two = container(CASES["vllm-tensor-parallel-uuids"])
    one, two = one["create"], two["create"]
    tp = two["command"].index("--tensor-parallel-size")
    assert two["command"][tp + 1] == "2"
    assert one["command"][one["command"].index("--tensor-parallel-size") + 1] == "1"
    assert two["shm_size"] == "8g" and one["shm_size"] == "2g"
    assert two["command"][two["command"].index("--gpu-memory-utilization") + 1] == "0.85"
    assert two["command"][two["command"].index("--served-model-name") + 1] == "llama-70b"
    [request] = two["device_requests"]
    assert request["DeviceIDs"] == CASES["vllm-tensor-parallel-uuids"]["gpus"]
    assert request["Capabilities"] == [["gpu"]] and not request["Count"]


def test_llamacpp_uses_its_cuda_image_and_offloads_only_with_gpus() -> None:
    cpu = container(CASES["llamacpp-cpu-chat"])["create"]
    cuda = container(CASES["llamacpp-cuda-host-file"])["create"]
    assert cpu["image"] == "llmstack/llamacpp:forky" and "--n-gpu-layers" not in cpu["command"]
    assert cuda["image"] == images.SERVICE_IMAGES["llamacpp-cuda"].registry
    assert cuda["command"][cuda["command"].index("--n-gpu-layers") + 1] == "999"
    assert cuda["mounts"] == [{"Source": "/srv/models", "Target": "/models", "Type": "bind",
                               "ReadOnly": True}]
    assert "device_requests" not in cpu
    assert cuda["device_requests"][0]["DeviceIDs"] == ["1"]


def flag(create: dict[str, Any], name: str) -> str | None:
    command = create["command"]
    return command[command.index(name) + 1] if name in command else None


def test_vllm_embeddings_use_the_runner_flag_of_the_pinned_release() -> None:
    pinned = container(CASES["vllm-embedding"])["create"]
    assert pinned["image"] == images.SERVICE_IMAGES["vllm"].registry
    assert images.parse_reference(pinned["image"]).tag == "v0.11.0"
    assert flag(pinned, "--runner") == "pooling" and "--task" not in pinned["command"]
    assert flag(pinned, "--max-model-len") == "512"
    old = container(CASES["vllm-embedding-v0.9.2"])["create"]
    assert flag(old, "--task") == "embed" and "--runner" not in old["command"]


@pytest.mark.parametrize(("image", "flags"), [
    ("docker.io/vllm/vllm-openai:v0.11.0@sha256:" + "0" * 64, ["--runner", "pooling"]),
    ("vllm/vllm-openai:v0.10.1.1", ["--runner", "pooling"]),
    ("vllm/vllm-openai:v0.10.0", ["--task", "embed"]),
    ("registry.local:5000/vllm/vllm-openai:0.9.2", ["--task", "embed"]),
    ("vllm/vllm-openai:latest", ["--runner", "pooling"]),
    ("vllm/vllm-openai:nightly-2c3a1f", ["--runner", "pooling"]),
])
def test_vllm_embedding_flags_follow_the_image_tag(image: str, flags: list[str]) -> None:
    assert vllm.embedding_flags(image) == flags


def test_embedding_models_get_max_model_len_only_when_context_is_set() -> None:
    """Most embedding models allow 512 tokens; vLLM exits when --max-model-len is above."""
    unset = container(CASES["vllm-embedding-model-context"])["create"]
    assert "--max-model-len" not in unset["command"]
    chat = container({k: v for k, v in CASES["vllm-one-gpu-hf"].items() if k != "context"})
    assert flag(chat["create"], "--max-model-len") == "4096"  # a chat model's KV cache bound


def test_llamacpp_serves_on_the_port_its_images_healthcheck_probes() -> None:
    """ghcr.io/ggml-org/llama.cpp:server(-cuda) HEALTHCHECK: curl -f localhost:8080/health."""
    for case in ("llamacpp-cpu-chat", "llamacpp-cuda-host-file"):
        got = container(CASES[case])
        assert flag(got["create"], "--port") == "8080" == str(got["port"])


def test_ollama_gets_its_context_and_a_cpu_model_no_gpu() -> None:
    cpu = container({**CASES["ollama-cpu-tag"], "context": 16384})["create"]
    assert cpu["environment"]["OLLAMA_CONTEXT_LENGTH"] == "16384"
    assert cpu["environment"]["NVIDIA_VISIBLE_DEVICES"] == "void"
    on_gpu = container(CASES["ollama-gpu-volume"])["create"]
    assert on_gpu["environment"]["OLLAMA_CONTEXT_LENGTH"] == "4096"
    assert "NVIDIA_VISIBLE_DEVICES" not in on_gpu["environment"]


def test_tgi_shards_over_its_gpus() -> None:
    tgi = container(CASES["tgi-two-shards"])["create"]
    assert tgi["command"][tgi["command"].index("--num-shard") + 1] == "2"
    # Without it TGI fills every free byte of its GPUs with KV cache.
    assert flag(tgi, "--cuda-memory-fraction") == "0.9"
    assert tgi["device_requests"] == [{"Driver": "nvidia", "Count": 0, "DeviceIDs": ["0", "1"],
                                       "Capabilities": [["gpu"]], "Options": {}}]


def test_own_images_run_unprivileged_and_root_images_get_only_their_few_capabilities() -> None:
    own = container(CASES["llamacpp-cpu-chat"])["create"]
    assert own["user"] == plan.OWN_UID and own["read_only"] is True
    assert own["cap_drop"] == ["ALL"] and "cap_add" not in own
    for case in ("vllm-one-gpu-hf", "ollama-cpu-tag", "tgi-two-shards"):
        root = container(CASES[case])["create"]
        assert "user" not in root and root["read_only"] is False, case
        assert root["cap_drop"] == ["ALL"], case
        assert root["cap_add"] == list(plan.ROOT_IMAGE_CAPS), case
        assert root["security_opt"] == ["no-new-privileges=true"], case


def test_up_waits_for_ollama_through_the_health_services_check() -> None:
    from llmstack import deploy

    spec = StackSpec.model_validate({"models": [CASES["ollama-cpu-tag"],
                                                CASES["llamacpp-cpu-chat"]]})
    wanted = {s.service: s for s in plan.desired(spec, render.render(spec), "sk-internal")}
    ollama, llama = wanted[names.model_service("llama3")], wanted[
        names.model_service("deepseek-coder")]
    health = json.loads(render.render(spec).services[names.HEALTH]["health.json"])
    assert ollama.ready_check == names.model_check("llama3")
    assert health["checks"][ollama.ready_check]["kind"] == "ollama"
    assert deploy._probe_url(spec.project, ollama) == (
        f"http://{names.container(spec.project, names.HEALTH)}:{names.HEALTH_PORT}"
        "/ready/model:llama3")
    assert llama.ready_check is None
    assert deploy._probe_url(spec.project, llama).endswith(":8080/health")
