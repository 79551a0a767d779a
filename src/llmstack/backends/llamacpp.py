"""llama.cpp's llama-server: GGUF files, CPU or CUDA, chat and embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import DEFAULT_PLACEMENT, Launch, Placement, model_mount, source_env

if TYPE_CHECKING:
    from ..spec import ModelSpec


class LlamaCpp:
    name = "llamacpp"
    image_key = "llamacpp"
    gpu_image_key = "llamacpp-cuda"
    # The port upstream's images (server, server-cuda) are built for: their HEALTHCHECK curls
    # http://localhost:8080/health, so serving anywhere else shows the container unhealthy.
    port = 8080
    health_path = "/health"  # 503 while loading, 200 when ready
    api_base_path = "/v1"
    supports_embeddings = True
    needs_gpu = False
    source_kinds = ("volume", "host", "hf")
    hf_form = "file"
    cache_dir: str | None = None
    direct_route = True  # one model per server: it answers whatever "model" a request names
    idle_keepalive_s = 5  # cpp-httplib CPPHTTPLIB_KEEPALIVE_TIMEOUT_SECOND; llama-server has no
    # flag for it. Measured: "Keep-Alive: timeout=5, max=100", idle close after 5.0 s.

    def ready_check(self, model: ModelSpec, base: str) -> dict[str, Any] | None:
        return None

    def served_name(self, model: ModelSpec) -> str:
        return model.name

    def launch(self, model: ModelSpec, placement: Placement = DEFAULT_PLACEMENT,
               pin: str = "") -> Launch:
        mounts, path = model_mount(model, pin=pin)
        cmd = ["--host", "0.0.0.0", "--port", str(self.port), "-m", path,
               "--alias", model.name, "--ctx-size", str(model.context)]
        if model.task == "embedding":
            # Embeddings need their own server: pooled vectors instead of generation.
            cmd += ["--embeddings", "--pooling", "mean"]
        if model.gpus != "cpu":
            cmd += ["--n-gpu-layers", "999"]
        return Launch(command=cmd + list(model.args), mounts=mounts, env=source_env(model))


BACKEND = LlamaCpp()
