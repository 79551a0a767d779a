"""Hugging Face text-generation-inference: GPUs, chat/completions only (no embeddings)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Launch, model_mount, source_env

if TYPE_CHECKING:
    from ..spec import ModelSpec


class Tgi:
    name = "tgi"
    image_key = "tgi"
    gpu_image_key = "tgi"
    port = 80
    health_path = "/health"
    api_base_path = "/v1"
    supports_embeddings = False
    needs_gpu = True
    source_kinds = ("hf", "volume", "host")
    hf_form = "repo"
    cache_dir = "/data"  # the image's HF_HOME
    idle_keepalive_s = None  # its router serves with axum/hyper: no idle timeout set

    def served_name(self, model: ModelSpec) -> str:
        return "tgi"  # TGI serves one model and ignores the requested name

    def launch(self, model: ModelSpec, pin: str = "") -> Launch:
        mounts, path = model_mount(model, target="/data/models", pin=pin)
        gpus = 0 if model.gpus == "cpu" else len(model.gpus)
        cmd = ["--model-id", path, "--port", str(self.port),
               "--max-total-tokens", str(model.context), "--num-shard", str(max(gpus, 1))]
        return Launch(command=cmd + list(model.args), mounts=mounts, env=source_env(model),
                      shm_size="1g")


BACKEND = Tgi()
