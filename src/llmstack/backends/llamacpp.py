"""llama.cpp's llama-server: GGUF files, CPU or CUDA, chat and embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import DEFAULT_PLACEMENT, Launch, MetricNames, Placement, model_mount, source_env

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
    # llama-server's own log lines (tools/server/server.cpp, src/llama-model-loader.cpp).
    load_phases = (
        (r"load_model: loading model|llama_model_loader: loaded meta", "reading the GGUF file"),
        (r"load_tensors:", "loading tensors"),
        (r"llama_context:|llama_kv_cache|load_model: initializing",
         "allocating the context and KV cache"),
        (r"warming up the model", "warming up"),
        (r"model loaded", "model loaded, starting the server"),
    )
    # tools/server/server.cpp handle_metrics (served only with --metrics).
    metrics = MetricNames("/metrics", running="llamacpp:requests_processing",
                          waiting="llamacpp:requests_deferred",
                          generated_tokens="llamacpp:tokens_predicted_total",
                          generating_seconds="llamacpp:tokens_predicted_seconds_total")

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
        if placement.metrics:
            cmd += ["--metrics"]
        if model.gpus != "cpu":
            cmd += ["--n-gpu-layers", "999"]
        return Launch(command=cmd + list(model.args), mounts=mounts, env=source_env(model))


BACKEND = LlamaCpp()
