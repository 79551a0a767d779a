"""Default memory limits (host RAM, not VRAM) of model containers. Pure: no Docker, no I/O.

Every container gets a memory limit; for a model, unless `resources.memory` in stack.yaml
says otherwise, it is derived from the model's estimated needs (llmstack/gpu.py's estimate:
weights from the name's parameter count, KV cache as a heuristic upper bound):

resident  what the model keeps in host RAM. On CPU: weights + KV cache (llama.cpp maps the
          whole GGUF file and keeps the cache in RAM). With GPUs the weights and cache live
          in VRAM; host RAM holds loading buffers, the tensors a backend keeps on the CPU
          (llama.cpp's token embeddings) and pinned staging: a share of the weights.
limit     resident x SAFETY + a fixed overhead (server process, runtime libraries and CUDA
          contexts, the container's /tmp tmpfs) + per GPU (one worker process each for vLLM
          and TGI) + the container's /dev/shm (tmpfs pages count against the limit), never
          below the backend's floor, rounded up: to 256 MiB below 8 GiB, to whole GiB above.
fallback  when nothing can be estimated (no parameter count in the name, e.g. an ollama
          volume or hf:org/phi-3-mini), FALLBACK_MIB (16 GiB) or the fixed part, if larger:
          generous, because a limit that is too low kills the model (OOM) while one that is
          too high only bounds less. Name the size (my-model-7b) or set resources.memory.

The demo model (SmolLM2-135M Q4_1, 98 MB, context 4096; llama-server measured at 150-250 MiB
RSS) gets 1280m: (80 MiB weights + 162 MiB KV) x 1.25 + 768 MiB overhead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import gpu
from .backends import BACKENDS
from .spec import ModelSpec, Resources, size_bytes

GIB = 1024  # MiB
SAFETY = 1.25  # weights from a name and the KV heuristic are guesses: leave room
FALLBACK_MIB = 16 * GIB


@dataclass(frozen=True)
class HostProfile:
    """What one backend needs in host RAM, either on CPU or with GPUs (MiB)."""

    weights_share: float  # share of the weights (and, on CPU, the KV cache) held in RAM
    base_mib: float  # server process, libraries, CUDA contexts, /tmp tmpfs (256m)
    per_gpu_mib: float = 0.0  # one more worker process (and its CUDA context) per GPU
    floor_mib: float = 1 * GIB


CPU = {
    "llamacpp": HostProfile(1.0, 768, floor_mib=1 * GIB),
    "ollama": HostProfile(1.0, 1536, floor_mib=2 * GIB),  # server + runner processes
}
GPU = {
    "llamacpp": HostProfile(0.25, 1536, 512, floor_mib=4 * GIB),
    # Ollama moves layers that do not fit in VRAM to the CPU: keep room for half of them.
    "ollama": HostProfile(0.5, 1536, 512, floor_mib=4 * GIB),
    # API server, engine core and torch.compile workers; one process per tensor-parallel rank.
    "vllm": HostProfile(0.25, 6 * GIB, 3 * GIB, floor_mib=8 * GIB),
    "tgi": HostProfile(0.25, 2 * GIB, 3 * GIB, floor_mib=8 * GIB),  # launcher, router, shards
}
OTHER = HostProfile(1.0, 4 * GIB, 3 * GIB, floor_mib=8 * GIB)  # a backend not listed above


def size_mib(size: str) -> float:
    """MiB of a size such as '2g', '512m' or '1048576' (stack.yaml's size grammar)."""
    return size_bytes(size) / (1024 * 1024)


def round_limit(mib: float) -> str:
    """`mib` rounded up: to 256 MiB steps below 8 GiB, to whole GiB above; as a size."""
    if mib < 8 * GIB:
        steps = math.ceil(mib / 256) * 256
        return f"{steps // GIB}g" if steps % GIB == 0 else f"{steps}m"
    return f"{math.ceil(mib / GIB)}g"


def default_memory_mib(model: ModelSpec) -> tuple[float, str]:
    """Host RAM the model's container should be allowed (MiB, unrounded) and how it was
    worked out."""
    gpus = len(model.gpu_ids)
    profile = (GPU if gpus else CPU).get(model.backend, OTHER)
    backend = BACKENDS.get(model.backend)
    shm = backend.launch(model).shm_size if backend else None
    fixed = profile.base_mib + profile.per_gpu_mib * gpus + (size_mib(shm) if shm else 0.0)
    est = gpu.estimate(model)
    if est.weights_mib is None:
        return max(FALLBACK_MIB, fixed, profile.floor_mib), "fallback: size unknown"
    resident = est.weights_mib * profile.weights_share
    if not gpus:  # on the CPU the KV cache lives in RAM too
        resident += (est.kv_mib or 0.0) * profile.weights_share
    need = resident * SAFETY + fixed
    why = f"{resident:.0f} MiB resident x {SAFETY:g} + {fixed:.0f} MiB overhead"
    if need < profile.floor_mib:
        return profile.floor_mib, f"floor ({why})"
    return need, why


def default_memory(model: ModelSpec) -> str:
    """The memory limit a model container gets when stack.yaml sets none (e.g. '1280m')."""
    return round_limit(default_memory_mib(model)[0])


def model_resources(model: ModelSpec) -> Resources:
    """The model's `resources:` with the default memory limit where it sets none; its cpus
    and pids stay as written."""
    if model.resources.memory is not None:
        return model.resources
    return model.resources.model_copy(update={"memory": default_memory(model)})
