"""vLLM's OpenAI server: Hugging Face repos or local weights, GPUs only, tensor parallel."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Launch, model_mount, source_env

if TYPE_CHECKING:
    from ..spec import ModelSpec


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
    idle_keepalive_s = 5  # vllm.entrypoints TIMEOUT_KEEP_ALIVE = 5, passed to uvicorn

    def served_name(self, model: ModelSpec) -> str:
        return model.name

    def launch(self, model: ModelSpec, pin: str = "") -> Launch:
        mounts, path = model_mount(model, pin=pin)
        gpus = 0 if model.gpus == "cpu" else len(model.gpus)
        cmd = ["--model", path, "--served-model-name", model.name,
               "--host", "0.0.0.0", "--port", str(self.port),
               "--max-model-len", str(model.context),
               "--tensor-parallel-size", str(max(gpus, 1)),
               "--gpu-memory-utilization", f"{model.gpu_memory_utilization:g}"]
        if model.task == "embedding":
            cmd += ["--task", "embed"]
        env = source_env(model)
        # Tensor parallel workers talk through /dev/shm; Docker's 64 MB default is too small.
        shm = "8g" if gpus > 1 else "2g"
        return Launch(command=cmd + list(model.args), mounts=mounts, env=env, shm_size=shm)


BACKEND = Vllm()
