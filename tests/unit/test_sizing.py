"""Default memory limits of model containers: estimate x safety + overhead, floors, fallback."""

from __future__ import annotations

from typing import Any

import pytest

from llmstack import sizing
from llmstack.spec import ModelSpec

DEMO = "volume:llmstack-models/SmolLM2-135M-Instruct.Q4_1.gguf"


def model(**fields: Any) -> ModelSpec:
    return ModelSpec.model_validate({"name": "m", **fields})


@pytest.mark.parametrize(("fields", "limit"), [
    # The demo model: llama-server uses 150-250 MiB; (80 + 162) x 1.25 + 768 MiB.
    ({"source": DEMO}, "1280m"),
    # A smaller context: under the 1 GiB floor of a CPU llama.cpp model.
    ({"source": DEMO, "context": 1024}, "1g"),
    # 7B Q4_K_M on CPU: weights and the (upper bound) KV cache live in RAM.
    ({"source": "host:/srv/models/qwen2.5-coder-7b-q4_k_m.gguf", "context": 8192}, "11g"),
    # ... and on a GPU: loading buffers only, the GPU floor.
    ({"source": "host:/srv/models/qwen2.5-coder-7b-q4_k_m.gguf", "gpus": [0],
      "context": 8192}, "4g"),
    ({"backend": "ollama", "source": "ollama:llama3.1:8b"}, "10g"),
    # vLLM: processes per rank, /dev/shm (2g, 8g with two GPUs) and a share of the weights.
    ({"backend": "vllm", "source": "hf:deepseek-ai/deepseek-coder-6.7b-instruct",
      "gpus": [0]}, "15g"),
    ({"backend": "vllm", "source": "hf:org/Llama-3.1-70B-Instruct", "gpus": [0, 1]}, "61g"),
    ({"backend": "tgi", "source": "hf:mistralai/Mistral-7B-Instruct-v0.3", "gpus": [0, 1]},
     "14g"),
    # Nothing to estimate from: the documented fallback.
    ({"source": "host:/srv/models/model.gguf"}, "16g"),
    ({"backend": "ollama", "source": "volume:ollama-data"}, "16g"),
    ({"backend": "vllm", "source": "hf:BAAI/bge-large-en-v1.5", "gpus": [0]}, "16g"),
])
def test_default_memory_limit(fields: dict[str, Any], limit: str) -> None:
    assert sizing.default_memory(model(**fields)) == limit


def test_demo_model_limit_is_well_above_what_llama_server_uses() -> None:
    measured_rss = 250 * 1024**2  # the top of what the demo's llama-server was measured at
    limit_mib = sizing.size_mib(sizing.default_memory(model(source=DEMO)))
    assert limit_mib * 1024**2 >= 4 * measured_rss


@pytest.mark.parametrize(("backend", "gpus", "floor"), [
    ("llamacpp", "cpu", "1g"), ("ollama", "cpu", "2g"), ("llamacpp", [0], "4g"),
])
def test_tiny_models_get_the_floor(backend: str, gpus: Any, floor: str) -> None:
    tiny = model(backend=backend, source="volume:v/tiny-1m.Q4_0.gguf", gpus=gpus, context=128)
    _, why = sizing.default_memory_mib(tiny)
    assert why.startswith("floor") and sizing.default_memory(tiny) == floor


def test_limit_grows_with_context_weights_and_gpus() -> None:
    def mib(**fields: Any) -> float:
        return sizing.default_memory_mib(model(**fields))[0]

    base = {"source": "volume:v/m-7b.Q4_0.gguf"}
    assert mib(**base, context=32768) > mib(**base, context=4096)
    assert mib(source="volume:v/m-13b.Q4_0.gguf") > mib(**base)
    vllm = {"backend": "vllm", "source": "hf:org/m-7b"}
    assert mib(**vllm, gpus=[0, 1]) > mib(**vllm, gpus=[0])


@pytest.mark.parametrize(("mib", "text"), [
    (1.0, "256m"), (1024.0, "1g"), (1025.0, "1280m"), (8191.0, "8g"), (8193.0, "9g"),
    (61 * 1024 - 0.5, "61g"),
])
def test_limits_round_up_to_docker_sizes(mib: float, text: str) -> None:
    assert sizing.round_limit(mib) == text


def test_model_resources_keep_the_users_settings() -> None:
    own = model(source=DEMO, resources={"memory": "3g", "cpus": 2, "pids": 128})
    assert sizing.model_resources(own) == own.resources
    partial = model(source=DEMO, resources={"cpus": 1.5, "pids": 64})
    res = sizing.model_resources(partial)
    assert (res.memory, res.cpus, res.pids) == ("1280m", 1.5, 64)
    assert partial.resources.memory is None  # the spec itself is not changed
