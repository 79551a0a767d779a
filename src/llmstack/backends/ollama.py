"""Ollama: pulls its own models by tag; OpenAI-compatible routes under /v1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import DEFAULT_PLACEMENT, Launch, Mount, Placement

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
    # Ollama serves every pulled tag and answers only to a tag's own name: the stack.yaml name
    # and aliases exist only in LiteLLM's model list.
    direct_route = False
    idle_keepalive_s = None  # Go net/http.Server without IdleTimeout/ReadTimeout
    # ollama serve's log lines: the server, then the runner it starts for the model on the
    # warm-up request (its readiness check sends one, see healthd.py).
    load_phases = (
        (r"Listening on", "serving, waiting for the model's tag"),
        (r"starting llama server|loading model|load_tensors", "loading the model"),
        (r"llama runner started", "model loaded, warming up"),
    )
    metrics = None  # Ollama serves no metrics endpoint (ollama/ollama#3144)

    def served_name(self, model: ModelSpec) -> str:
        src = model.parsed_source
        return src.path if src.kind == "ollama" else model.name

    def ready_check(self, model: ModelSpec, base: str) -> dict[str, Any] | None:
        """/api/tags answers before the model is pulled, and Ollama loads a model on its first
        request: ready is the tag listed and a warm-up answered (an empty prompt only loads
        a chat model; an embedding model embeds one word)."""
        tag = self.served_name(model)
        if model.task == "embedding":
            warm_path, body = "/api/embed", {"model": tag, "input": "warm-up"}
        else:
            warm_path, body = "/api/generate", {"model": tag, "prompt": ""}
        return {"kind": "ollama", "url": f"{base}{self.health_path}", "tag": tag,
                "warm_url": f"{base}{warm_path}", "warm_up": body}

    def launch(self, model: ModelSpec, placement: Placement = DEFAULT_PLACEMENT,
               pin: str = "") -> Launch:
        src = model.parsed_source
        mounts = [Mount(src.location, self.cache_dir, read_only=False)] if src.kind == "volume" \
            else []
        env = {"OLLAMA_HOST": f"0.0.0.0:{self.port}", "OLLAMA_KEEP_ALIVE": "-1",
               # The context of every model it loads (its own default is 4096).
               "OLLAMA_CONTEXT_LENGTH": str(model.context)}
        if model.gpus == "cpu":
            # The image sets NVIDIA_VISIBLE_DEVICES=all: on a host whose default runtime is
            # nvidia that hands a CPU model every GPU. "void" gives it none.
            env["NVIDIA_VISIBLE_DEVICES"] = "void"
        return Launch(command=["serve", *model.args], mounts=mounts, env=env)


BACKEND = Ollama()
