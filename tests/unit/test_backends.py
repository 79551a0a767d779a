"""Every backend's container: image, command line, mounts, env, shm and GPUs (golden file).

The golden file tests/unit/golden_backends.json is reviewed by hand; after an intended change
regenerate it with `UPDATE_GOLDEN=1 python -m pytest tests/unit/test_backends.py` and read
the diff.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from llmstack import gpu
from llmstack.backends import BACKENDS
from llmstack.spec import StackSpec

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
    "tgi-two-shards": {"name": "mistral", "backend": "tgi",
                       "source": "hf:mistralai/Mistral-7B-Instruct-v0.3", "gpus": [0, 1],
                       "context": 8192},
    "ollama-cpu-tag": {"name": "llama3", "backend": "ollama", "source": "ollama:llama3.1:8b"},
    "ollama-gpu-volume": {"name": "coder", "backend": "ollama",
                          "source": "volume:ollama-data", "gpus": [0]},
}


def container(case: dict[str, Any]) -> dict[str, Any]:
    spec = StackSpec.model_validate({"models": [case]})
    model = spec.models[0]
    backend = BACKENDS[model.backend]
    launch = backend.launch(model)
    return {
        "image": spec.image_for(model),
        "command": launch.command,
        "mounts": [asdict(m) for m in launch.mounts],
        "env": launch.env,
        "shm_size": launch.shm_size,
        "device_request": gpu.device_request(model.gpu_ids) if model.gpu_ids else None,
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
    tp = two["command"].index("--tensor-parallel-size")
    assert two["command"][tp + 1] == "2"
    assert one["command"][one["command"].index("--tensor-parallel-size") + 1] == "1"
    assert two["shm_size"] == "8g" and one["shm_size"] == "2g"
    assert two["command"][two["command"].index("--gpu-memory-utilization") + 1] == "0.85"
    assert two["command"][two["command"].index("--served-model-name") + 1] == "llama-70b"
    assert two["device_request"]["device_ids"] == CASES["vllm-tensor-parallel-uuids"]["gpus"]


def test_llamacpp_uses_its_cuda_image_and_offloads_only_with_gpus() -> None:
    cpu = container(CASES["llamacpp-cpu-chat"])
    cuda = container(CASES["llamacpp-cuda-host-file"])
    assert cpu["image"] == "llmstack/llamacpp:forky" and "--n-gpu-layers" not in cpu["command"]
    assert cuda["image"] == "ghcr.io/ggml-org/llama.cpp:server-cuda"
    assert cuda["command"][cuda["command"].index("--n-gpu-layers") + 1] == "999"
    assert cuda["mounts"] == [{"source": "/srv/models", "target": "/models", "kind": "bind",
                               "read_only": True, "managed": False}]
    assert cpu["device_request"] is None


def test_tgi_shards_over_its_gpus() -> None:
    tgi = container(CASES["tgi-two-shards"])
    assert tgi["command"][tgi["command"].index("--num-shard") + 1] == "2"
    assert tgi["device_request"] == {"device_ids": ["0", "1"], "capabilities": [["gpu"]]}
