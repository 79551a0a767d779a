"""vLLM's OpenAI server: Hugging Face repos or local weights, GPUs only, tensor parallel."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .. import images
from .base import DEFAULT_PLACEMENT, Launch, MetricNames, Placement, model_mount, source_env

if TYPE_CHECKING:
    from ..spec import ModelSpec

# `--runner pooling` replaced `--task embed` in vLLM 0.10.1 (PR #21470: `task` is deprecated
# in vllm/config/model.py of v0.11.0 and removed in 0.13).
RUNNER_FLAG_SINCE = (0, 10, 1)


def version_of(image: str) -> tuple[int, ...] | None:
    """The release an image reference's tag names ("vllm/vllm-openai:v0.11.0" -> (0, 11, 0)),
    or None for a tag that names none (latest, nightly, a digest only)."""
    tag = images.parse_reference(image).tag or ""
    match = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[.+-].*)?", tag)
    return tuple(int(p) for p in match.groups() if p is not None) if match else None


def embedding_flags(image: str) -> list[str]:
    """The flags that make the vLLM of `image` serve embeddings: `--runner pooling`, or for
    releases before RUNNER_FLAG_SINCE `--task embed` (an untagged image counts as new)."""
    version = version_of(image)
    if version is not None and version < RUNNER_FLAG_SINCE:
        return ["--task", "embed"]
    return ["--runner", "pooling"]


class Vllm:
    name = "vllm"
    image_key = "vllm"
    gpu_image_key = "vllm"
    port = 8000
    health_path = "/health"
    api_base_path = "/v1"
    supports_embeddings = True
    needs_gpu = True
    source_kinds = ("hf", "volume", "host")
    hf_form = "repo"
    cache_dir = "/root/.cache/huggingface"
    direct_route = True  # --served-model-name lists every public name on that route
    idle_keepalive_s = 5  # vllm.entrypoints TIMEOUT_KEEP_ALIVE = 5, passed to uvicorn
    # vLLM's log lines while it starts (model_loader, gpu_model_runner, compilation): weights,
    # then torch.compile (minutes on a cold cache, quiet), profiling, CUDA graphs, the server.
    load_phases = (
        (r"Loading safetensors checkpoint shards: +(\d+)%", r"loading weights \1%"),
        (r"Loading weights took|Model loading took", "weights loaded, compiling"),
        (r"Dynamo bytecode transform time|torch\.compile take|Compiling a graph",
         "compiling with torch.compile (slow on a cold cache)"),
        (r"Memory profiling|Available KV cache memory|GPU KV cache size",
         "measuring memory for the KV cache"),
        (r"Capturing CUDA graph", "capturing CUDA graphs"),
        (r"Starting vLLM API server|Application startup complete", "starting the API server"),
    )
    # vllm/v1/metrics/loggers.py (PrometheusStatLogger); /metrics is always served.
    metrics = MetricNames("/metrics", running="vllm:num_requests_running",
                          waiting="vllm:num_requests_waiting",
                          generated_tokens="vllm:generation_tokens_total")

    def ready_check(self, model: ModelSpec, base: str) -> dict[str, Any] | None:
        return None

    def served_name(self, model: ModelSpec) -> str:
        return model.name

    def launch(self, model: ModelSpec, placement: Placement = DEFAULT_PLACEMENT,
               pin: str = "") -> Launch:
        mounts, path = model_mount(model, pin=pin)
        gpus = 0 if model.gpus == "cpu" else len(model.gpus)
        fraction = placement.memory_fraction or model.gpu_memory_utilization
        # vLLM refuses a request naming any other model (404): on the direct route it gets
        # the aliases too, which LiteLLM otherwise maps to model.name.
        served = model.public_names if model.route == "direct" else [model.name]
        cmd = ["--model", path, "--served-model-name", *served,
               "--host", "0.0.0.0", "--port", str(self.port)]
        # Embedding models allow few tokens (512 for most BERT-style ones) and vLLM exits when
        # --max-model-len is above the model's own limit: it is sent for them only when
        # stack.yaml sets `context`. A chat model always gets it: its own limit (often 128k)
        # would size the KV cache and may not fit the GPU.
        if model.task != "embedding" or "context" in model.model_fields_set:
            cmd += ["--max-model-len", str(model.context)]
        cmd += ["--tensor-parallel-size", str(max(gpus, 1)),
                "--gpu-memory-utilization", f"{fraction:g}"]
        if model.task == "embedding":
            cmd += embedding_flags(placement.image or images.SERVICE_IMAGES["vllm"].registry)
        env = source_env(model)
        # Tensor parallel workers talk through /dev/shm; Docker's 64 MB default is too small.
        shm = "8g" if gpus > 1 else "2g"
        return Launch(command=cmd + list(model.args), mounts=mounts, env=env, shm_size=shm)


BACKEND = Vllm()
