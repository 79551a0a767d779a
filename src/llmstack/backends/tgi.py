"""Hugging Face text-generation-inference: GPUs, chat/completions only (no embeddings)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import DEFAULT_PLACEMENT, Launch, MetricNames, Placement, model_mount, source_env

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
    direct_route = True  # one model per server: its OpenAI routes ignore the request's "model"
    idle_keepalive_s = None  # its router serves with axum/hyper: no idle timeout set
    # text-generation-launcher's log lines (launcher/src/main.rs, router warmup).
    load_phases = (
        (r"Starting download process|Download file", "downloading weights"),
        (r"Starting shard|Waiting for shard to be ready", "loading shards"),
        (r"Shard ready in", "shards ready"),
        (r"Warming up model|Warmup", "warming up"),
        (r"Starting Webserver|Connected", "starting the router"),
    )
    # router/src/server.rs metrics (docs: reference/metrics); /metrics is always served.
    metrics = MetricNames("/metrics", running="tgi_batch_current_size",
                          waiting="tgi_queue_size",
                          generated_tokens="tgi_request_generated_tokens_sum")

    def ready_check(self, model: ModelSpec, base: str) -> dict[str, Any] | None:
        return None

    def served_name(self, model: ModelSpec) -> str:
        return "tgi"  # TGI serves one model and ignores the requested name

    def launch(self, model: ModelSpec, placement: Placement = DEFAULT_PLACEMENT,
               pin: str = "") -> Launch:
        mounts, path = model_mount(model, target="/data/models", pin=pin)
        gpus = 0 if model.gpus == "cpu" else len(model.gpus)
        cmd = ["--model-id", path, "--port", str(self.port),
               "--max-total-tokens", str(model.context), "--num-shard", str(max(gpus, 1))]
        # TGI fills the GPU with KV cache until only (1 - fraction) x total is left free, so
        # its fraction counts what the models started before it on its GPUs hold (the plan
        # computes it: gpu.memory_fraction); unset, it takes everything that is free.
        fraction = placement.memory_fraction or model.gpu_memory_utilization
        cmd += ["--cuda-memory-fraction", f"{fraction:g}"]
        return Launch(command=cmd + list(model.args), mounts=mounts, env=source_env(model),
                      shm_size="1g")


BACKEND = Tgi()
