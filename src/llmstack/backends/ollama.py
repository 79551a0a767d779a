"""Ollama: pulls its own models by tag; OpenAI-compatible routes under /v1."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Launch, Mount

if TYPE_CHECKING:
    from ..spec import ModelSpec


class Ollama:
    name = "ollama"
    image_key = "ollama"
    gpu_image_key = "ollama"
    port = 11434
    health_path = "/api/tags"
    api_base_path = "/v1"
    supports_embeddings = True
    needs_gpu = False
    source_kinds = ("ollama", "volume")
    hf_form = ""
    cache_dir = "/root/.ollama"
    idle_keepalive_s = None  # Go net/http.Server without IdleTimeout/ReadTimeout

    def served_name(self, model: ModelSpec) -> str:
        src = model.parsed_source
        return src.path if src.kind == "ollama" else model.name

    def launch(self, model: ModelSpec, pin: str = "") -> Launch:
        src = model.parsed_source
        mounts = [Mount(src.location, self.cache_dir, read_only=False)] if src.kind == "volume" \
            else []
        env = {"OLLAMA_HOST": f"0.0.0.0:{self.port}", "OLLAMA_KEEP_ALIVE": "-1"}
        return Launch(command=["serve", *model.args], mounts=mounts, env=env)


BACKEND = Ollama()
