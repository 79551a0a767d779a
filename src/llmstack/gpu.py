"""GPUs of the target host and what the stack asks of them. Pure: no Docker, no I/O.

- `parse_nvidia_smi` reads `nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used
  --format=csv,noheader,nounits` (the engine runs it in a short-lived container).
- `device_request` turns a model's `gpus:` into the one Docker device request it gets.
- `estimate` guesses a model's VRAM per GPU (weights + KV cache + runtime overhead).
- `check` resolves `gpus:` against the host and returns findings and a budget per GPU.

The estimate is a heuristic, documented here because users read its numbers in `plan`:

weights   file size of a GGUF/safetensors file when the source is one file on the target;
          otherwise parameter count x bytes per parameter. The parameter count comes from the
          model's name or source ("deepseek-coder-6.7b", "Qwen2.5-7B", "Mixtral-8x7B" = 56B,
          "SmolLM2-135M"); bytes per parameter from `--dtype`/`--quantization` in args, from
          the name (AWQ/GPTQ/int4 ~0.56, FP8/int8 1.0, GGUF Qn_x by its bits) or the backend's
          default (vLLM/TGI bf16 = 2, GGUF ~Q4 = 0.56).
kv cache  2 (K and V) x layers x kv width x context x 2 bytes (f16), for one full-length
          sequence. With the model's config.json or GGUF header (modelarch: layers, KV heads,
          head size, sliding window) that is exact for grouped-query models. Without either,
          layers and width come from
          the parameter count of a typical dense decoder: params = 12 x layers x width^2 with
          width = 128 x layers (Llama-2-7B: 32 x 4096, estimate 33 x 4224). That assumes full
          multi-head attention, an upper bound: grouped-query models (Llama 3, Qwen2.5, Mistral)
          need 4-8x less. Hence a model that fits only without the KV estimate is a warning,
          and only weights + overhead that cannot fit are an error.
overhead  per GPU: CUDA context, activations and graphs: 2 GiB for vLLM/TGI, 0.5 GiB for
          llama.cpp/Ollama. A share-reserving server (vLLM, TGI) also needs about 1 GiB beside
          its share for its CUDA context (CUDA_CONTEXT_MIB), so two shares adding up to 0.99
          of a GPU do not fit.
split     tensor parallel (vLLM, TGI --num-shard, llama.cpp's layer split) divides weights
          and KV cache evenly over the model's GPUs; overhead is paid on each.
claims    vLLM reserves gpu_memory_utilization x the GPU's total memory at start and fails
          when that much is not free: that reservation is exact. TGI fills what is free with
          KV cache up to --cuda-memory-fraction, which llmstack derives from the same
          gpu_memory_utilization (memory_fraction), so it is counted the same way. llama.cpp
          and Ollama take what they need: counted by their estimate.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .checks import CONFIG, Finding
from .modelarch import Architecture

if TYPE_CHECKING:
    from .spec import ModelSpec, StackSpec

MIB = 1024 * 1024
NVIDIA_SMI_QUERY = ["--query-gpu=index,uuid,name,memory.total,memory.used",
                    "--format=csv,noheader,nounits"]
# The same with each GPU's busy percentage over the last sample period (`llmstack top`).
NVIDIA_SMI_TOP_QUERY = ["--query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu",
                        "--format=csv,noheader,nounits"]

# Per-GPU runtime overhead (MiB) by backend; see the module docstring.
OVERHEAD_MIB = {"vllm": 2048.0, "tgi": 2048.0, "llamacpp": 512.0, "ollama": 512.0}
# What a CUDA process holds outside a vLLM/TGI share: its context (driver, cuBLAS, NCCL).
CUDA_CONTEXT_MIB = 1024.0
KV_BYTES = 2  # f16 K/V cache elements, the default of every backend here
# Bytes per parameter of a backend's default weights when nothing says otherwise.
DEFAULT_BYTES = {"vllm": 2.0, "tgi": 2.0, "llamacpp": 0.5625, "ollama": 0.5625}
# Effective bits per weight of GGUF quantisations (block scales included).
GGUF_BITS = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K": 5.5,
             "Q5_1": 6.0, "Q5_0": 5.5, "Q4_K": 4.5, "Q4_1": 5.0, "Q4_0": 4.5, "IQ4": 4.5,
             "Q3_K": 3.44, "IQ3": 3.44, "Q2_K": 2.63, "IQ2": 2.5, "IQ1": 1.75}
DTYPE_BYTES = {"float32": 4.0, "fp32": 4.0, "float": 4.0, "float16": 2.0, "fp16": 2.0,
               "half": 2.0, "bfloat16": 2.0, "bf16": 2.0, "auto": 2.0}
QUANT_BYTES = {"awq": 0.5625, "gptq": 0.5625, "bitsandbytes": 0.5625, "marlin": 0.5625,
               "fp8": 1.0, "int8": 1.0, "eetq": 1.0, "compressed-tensors": 1.0}

_PARAMS_RE = re.compile(r"(?<![A-Za-z0-9.])(?:(\d+)x)?(\d+(?:\.\d+)?)([bBmM])(?![A-Za-z0-9])")
_GGUF_RE = re.compile(r"(?<![A-Za-z0-9])(I?Q\d_[A-Z0-9]+|I?Q\d|BF16|F16|F32)(?![A-Za-z0-9])",
                      re.IGNORECASE)


class GpuQueryError(ValueError):
    """nvidia-smi answered something that is not its CSV (a driver error, a wrong query)."""


@dataclass(frozen=True)
class Gpu:
    """One GPU as nvidia-smi reports it; memory in MiB (None when it says [N/A])."""

    index: int
    uuid: str
    name: str
    memory_total_mib: int | None
    memory_used_mib: int | None
    utilization_pct: int | None = None  # only from NVIDIA_SMI_TOP_QUERY

    @property
    def memory_free_mib(self) -> int | None:
        if self.memory_total_mib is None or self.memory_used_mib is None:
            return None
        return self.memory_total_mib - self.memory_used_mib

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "uuid": self.uuid, "name": self.name,
                "memory_total_mib": self.memory_total_mib,
                "memory_used_mib": self.memory_used_mib,
                "memory_free_mib": self.memory_free_mib,
                "utilization_pct": self.utilization_pct}


def _mib(value: str) -> int | None:
    value = value.strip()
    if value.startswith("[") or not value:  # [N/A], [Not Supported], [Insufficient Permissions]
        return None
    return round(float(value))


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """GPUs from the CSV of `nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used
    --format=csv,noheader,nounits` (NVIDIA_SMI_QUERY, or NVIDIA_SMI_TOP_QUERY with
    utilization.gpu as a sixth column); raises GpuQueryError with nvidia-smi's own words when the
    output is an error message instead."""
    gpus: list[Gpu] = []
    rows = [r for r in csv.reader(io.StringIO(text), skipinitialspace=True) if any(r)]
    for row in rows:
        cells = [c.strip() for c in row]
        if len(cells) not in (5, 6) or not cells[0].isdigit():
            detail = " ".join(text.split())[:300]
            raise GpuQueryError(f"nvidia-smi did not list GPUs: {detail or '(no output)'}")
        try:
            gpus.append(Gpu(int(cells[0]), cells[1], cells[2], _mib(cells[3]), _mib(cells[4]),
                            _mib(cells[5]) if len(cells) == 6 else None))
        except ValueError:
            raise GpuQueryError(f"nvidia-smi printed an unreadable line: {', '.join(cells)}"
                                ) from None
    return sorted(gpus, key=lambda g: g.index)


# moby's name for the NVIDIA device driver (the toolkit's hook or its CDI hook, either way).
DEVICE_DRIVER = "nvidia"


def device_request(gpu_ids: Sequence[int | str]) -> dict[str, Any]:
    """Keyword arguments of docker.types.DeviceRequest for exactly these GPUs.

    Always explicit device ids: never count=-1 (every GPU of the host) and never privileged
    mode, so a model sees only the GPUs stack.yaml gives it. The driver is named: moby picks
    the first driver claiming the `gpu` capability otherwise, and its AMD driver claims it
    too (daemon/nvidia_linux.go); llmstack's GPU images are CUDA images."""
    ids = [str(g) for g in gpu_ids]
    if not ids:
        raise ValueError("a device request needs at least one GPU id")
    for gpu in ids:
        if gpu.lower() in ("all", "-1") or not re.fullmatch(r"\d{1,4}|(GPU|MIG)-[0-9A-Za-z/-]+",
                                                            gpu):
            raise ValueError(f"{gpu!r} is not a GPU index or UUID")
    return {"driver": DEVICE_DRIVER, "device_ids": ids, "capabilities": [["gpu"]]}


# --- Sharing a GPU: start order and memory shares ----------------------------------------------


def _is_uuid(gpu_id: str) -> bool:
    return not gpu_id.isdigit()


def may_share(a: ModelSpec, b: ModelSpec) -> bool:
    """Whether two models may be on one GPU, judged from stack.yaml alone: they name a GPU
    alike, or (both with gpu_share) one names GPUs by index and the other by UUID, which only
    the host can tell apart, so they count as sharing."""
    ids_a, ids_b = set(a.gpu_ids), set(b.gpu_ids)
    if not ids_a or not ids_b:
        return False
    if ids_a & ids_b:
        return True
    mixed = any(_is_uuid(g) != _is_uuid(h) for g in ids_a for h in ids_b)
    return a.gpu_share and b.gpu_share and mixed


def start_order(models: Sequence[ModelSpec]) -> list[ModelSpec]:
    """GPU models in the order they start when they share a GPU: stack.yaml order, TGI last
    (it takes what the others leave, see memory_fraction)."""
    gpu_models = [m for m in models if m.gpu_ids]
    return sorted(gpu_models, key=lambda m: (m.backend == "tgi", gpu_models.index(m)))


def start_after(models: Sequence[ModelSpec]) -> dict[str, list[str]]:
    """{model name: the models that must be ready before it starts}: each GPU model waits for
    the models before it in start_order that may share one of its GPUs. Two servers starting
    together on one GPU each count the other's memory as free and fail when it is gone
    (vLLM: "No available memory for the cache blocks"); models on separate GPUs start
    together."""
    order = start_order(models)
    return {m.name: [p.name for p in order[:i] if may_share(p, m)] for i, m in enumerate(order)}


def memory_fraction(models: Sequence[ModelSpec], model: ModelSpec) -> float:
    """The value of the model's GPU-memory flag.

    vLLM's --gpu-memory-utilization is per instance: the model's own gpu_memory_utilization.
    TGI's --cuda-memory-fraction is per GPU: TGI fills KV cache until (1 - fraction) x total
    is left free (get_cuda_free_memory in TGI's import_utils.py), counting every process on
    the GPU. TGI starts after the models it shares a GPU with, so it gets its own share plus
    theirs, per GPU (the smallest, when its GPUs have different neighbours), at most 1."""
    own = model.gpu_memory_utilization
    if model.backend != "tgi" or not model.gpu_ids:
        return own
    order = start_order(models)
    before = order[:next(i for i, m in enumerate(order) if m.name == model.name)]
    per_gpu = []
    for gpu_id in model.gpu_ids:
        neighbours = [p for p in before if may_share(p, model)
                      and (gpu_id in p.gpu_ids or not set(p.gpu_ids) & set(model.gpu_ids))]
        per_gpu.append(own + sum(p.gpu_memory_utilization for p in neighbours))
    return round(min(1.0, min(per_gpu)), 4)


# --- Estimates --------------------------------------------------------------------------------


def params_from_name(text: str) -> float | None:
    """Parameter count written in a model name: '6.7b', '7B', '135M', '8x7B' (experts)."""
    best: float | None = None
    for experts, number, unit in _PARAMS_RE.findall(text):
        value = float(number) * (1e9 if unit.lower() == "b" else 1e6)
        value *= int(experts) if experts else 1
        best = max(best or 0.0, value)
    return best


def _arg_value(args: Sequence[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def bytes_per_param(model: ModelSpec) -> tuple[float, str]:
    """Bytes per weight and where that number came from."""
    args = list(model.args)
    quant = _arg_value(args, "--quantization") or _arg_value(args, "--quantize")
    if quant and quant.lower() in QUANT_BYTES:
        return QUANT_BYTES[quant.lower()], f"--quantization {quant}"
    dtype = _arg_value(args, "--dtype")
    if dtype and dtype.lower() in DTYPE_BYTES:
        return DTYPE_BYTES[dtype.lower()], f"--dtype {dtype}"
    name = model.parsed_source.ref.rsplit("/", 1)[-1]
    match = _GGUF_RE.search(name)
    if match:
        tag = match.group(1).upper()
        bits = GGUF_BITS.get(tag) or next((b for k, b in GGUF_BITS.items()
                                           if tag.startswith(k)), None)
        if bits:
            return bits / 8, f"{tag} in the file name"
    lowered = name.lower()
    for key, value in (("awq", 0.5625), ("gptq", 0.5625), ("int4", 0.5625), ("4bit", 0.5625),
                       ("fp8", 1.0), ("int8", 1.0), ("8bit", 1.0)):
        if key in lowered:
            return value, f"{key} in the name"
    default = DEFAULT_BYTES.get(model.backend, 2.0)
    return default, f"{model.backend} default"


def kv_bytes_per_token(params: float) -> float:
    """K+V bytes per token of context for a dense decoder of `params` parameters (upper
    bound, full multi-head attention; see the module docstring)."""
    layers = max(1, round((params / (12 * 128 * 128)) ** (1 / 3)))
    width = 128 * layers
    return 2 * layers * width * KV_BYTES


# Backends that hold a share of each GPU (gpu_memory_utilization): vLLM reserves it at start,
# TGI fills its KV cache up to it (--cuda-memory-fraction, see memory_fraction).
RESERVING_BACKENDS = ("vllm", "tgi")


def _reserve(model: ModelSpec) -> float | None:
    return float(model.gpu_memory_utilization) if model.backend in RESERVING_BACKENDS else None


@dataclass(frozen=True)
class Estimate:
    """What one model needs on each of its GPUs (MiB)."""

    model: str
    gpus: list[str]
    weights_mib: float | None
    kv_mib: float | None
    overhead_mib: float
    reserve_fraction: float | None  # vLLM reserves this share of each GPU's total
    basis: list[str] = field(default_factory=list)
    kv_source: str | None = None  # config.json | GGUF header | heuristic (None: no estimate)

    @property
    def shards(self) -> int:
        return max(1, len(self.gpus))

    @property
    def certain_mib(self) -> float | None:
        """Weights share + overhead per GPU: what the model needs for sure."""
        if self.weights_mib is None:
            return None
        return self.weights_mib / self.shards + self.overhead_mib

    @property
    def need_mib(self) -> float | None:
        """Certain need plus this GPU's share of the (heuristic) KV cache."""
        if self.certain_mib is None:
            return None
        return self.certain_mib + (self.kv_mib or 0.0) / self.shards

    def to_dict(self) -> dict[str, Any]:
        r = _round
        return {"model": self.model, "gpus": self.gpus, "weights_mib": r(self.weights_mib),
                "kv_cache_mib": r(self.kv_mib), "overhead_mib": r(self.overhead_mib),
                "per_gpu_mib": r(self.need_mib), "reserve_fraction": self.reserve_fraction,
                "kv_cache_source": self.kv_source, "basis": self.basis}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def estimate(model: ModelSpec, file_bytes: int | None = None,
             arch: Architecture | None = None) -> Estimate:
    """VRAM per GPU for `model`; `file_bytes` is the size of its weights file on the target
    when the source is a single file (read through the engine), else None; `arch` its
    attention shape from its config.json or GGUF header, when read."""
    src = model.parsed_source
    params = params_from_name(f"{model.name} {src.ref}")
    basis: list[str] = []
    weights: float | None = None
    if file_bytes and file_bytes > 0:
        weights = file_bytes / MIB
        basis.append(f"weights = file size {weights / 1024:.2f} GiB")
        if params is None:
            bpp, _ = bytes_per_param(model)
            params = file_bytes / bpp
    elif params is not None:
        bpp, why = bytes_per_param(model)
        weights = params * bpp / MIB
        basis.append(f"weights = {params / 1e9:g}B params (from the name) x {bpp:g} bytes "
                     f"({why})")
    else:
        basis.append("weights unknown: no parameter count in the name and no single weights "
                     "file (write the size in the name, e.g. my-model-7b, to get an estimate)")
    kv: float | None = None
    if arch is not None:
        tokens = arch.cached_tokens(model.context)
        kv = arch.kv_bytes_per_token() * tokens / MIB
        basis.append(f"kv cache = {tokens} tokens x {arch.kv_bytes_per_token() / 1024:g} "
                     f"KiB/token (from {arch.describe()})")
    elif params is not None:
        kv = kv_bytes_per_token(params) * model.context / MIB
        basis.append(f"kv cache = {model.context} tokens x "
                     f"{kv_bytes_per_token(params) / 1024:.0f} KiB/token (heuristic upper bound "
                     "from the parameter count: no config.json or GGUF header was read)")
    overhead = OVERHEAD_MIB.get(model.backend, 1024.0)
    reserve = _reserve(model)
    if reserve is not None:
        basis.append(f"{model.backend} reserves {reserve:g} x each GPU's memory")
    kv_source = arch.source if arch is not None else ("heuristic" if kv is not None else None)
    return Estimate(model.name, model.gpu_ids, weights, kv, overhead, reserve, basis, kv_source)


# --- Checks against the host -------------------------------------------------------------------


@dataclass
class Claim:
    model: str
    mib: float  # what it takes on this GPU (reservation or estimated need)
    certain_mib: float  # the part of it that is not a heuristic
    note: str
    running: bool = False  # already running: its memory is inside memory_used_mib


@dataclass
class GpuBudget:
    gpu: Gpu
    claims: list[Claim] = field(default_factory=list)

    @property
    def planned_mib(self) -> float:
        return sum(c.mib for c in self.claims if not c.running)

    @property
    def free_after_mib(self) -> float | None:
        free = self.gpu.memory_free_mib
        return None if free is None else free - self.planned_mib

    @property
    def status(self) -> str:
        free = self.gpu.memory_free_mib
        if free is None:
            return "warn"
        if sum(c.certain_mib for c in self.claims if not c.running) > free:
            return "fail"
        return "warn" if self.planned_mib > free else "ok"

    def to_dict(self) -> dict[str, Any]:
        return {**self.gpu.to_dict(), "status": self.status,
                "planned_mib": _round(self.planned_mib),
                "free_after_mib": _round(self.free_after_mib),
                "claims": [{"model": c.model, "mib": _round(c.mib), "running": c.running,
                            "note": c.note} for c in self.claims]}


@dataclass
class GpuReport:
    budgets: list[GpuBudget]
    estimates: list[Estimate]
    findings: list[Finding]  # gpu-assignment | gpu-memory, scope config: stack.yaml must change

    def to_dict(self) -> dict[str, Any]:
        return {"gpus": [b.to_dict() for b in self.budgets],
                "models": [e.to_dict() for e in self.estimates],
                "findings": [f.to_dict() for f in self.findings]}


def _gib(mib: float | None) -> str:
    return "?" if mib is None else f"{mib / 1024:.1f} GiB"


def resolve(gpu_id: str, gpus: list[Gpu]) -> Gpu | None:
    """The host GPU an index or UUID names (None when the host has no such GPU)."""
    for gpu in gpus:
        if gpu_id == str(gpu.index) or gpu_id.lower() == gpu.uuid.lower():
            return gpu
    return None


def check(spec: StackSpec, gpus: list[Gpu], file_sizes: dict[str, int] | None = None,
          running: set[str] | frozenset[str] = frozenset(),
          architectures: dict[str, Architecture] | None = None) -> GpuReport:
    """Every GPU model of `spec` against the host's GPUs.

    `file_sizes`: {model name: bytes of its weights file}; `running`: names of models whose
    containers run already (their memory is in nvidia-smi's memory.used, so not added);
    `architectures`: {model name: its attention shape, from its config.json or GGUF header}."""
    file_sizes = file_sizes or {}
    architectures = architectures or {}
    budgets = {g.index: GpuBudget(g) for g in gpus}
    findings: list[Finding] = []
    estimates: list[Estimate] = []
    owners: dict[int, list[ModelSpec]] = {}
    have = ", ".join(f"{g.index} ({g.uuid}, {g.name})" for g in gpus) or "none"

    def add(check: str, status: str, detail: str, fix: str) -> None:
        findings.append(Finding(check, status, detail, fix, scope=CONFIG))

    for i, model in enumerate(spec.models):
        if not model.gpu_ids:
            continue
        est = estimate(model, file_sizes.get(model.name), architectures.get(model.name))
        estimates.append(est)
        where = f"models[{i}].gpus ({model.name})"
        resolved: list[Gpu] = []
        for gpu_id in model.gpu_ids:
            gpu = resolve(gpu_id, gpus)
            if gpu is None and gpu_id.startswith("MIG-"):
                add("gpu-assignment", "warn", f"{where}: {gpu_id} is a MIG device; its memory "
                    "is not checked", "check it with `nvidia-smi -L` on the host")
            elif gpu is None:
                add("gpu-assignment", "fail", f"{where}: the host has no GPU {gpu_id} (it has: "
                    f"{have})", "use an index or UUID that `llmstack doctor` lists, or deploy "
                    "to a host with more GPUs")
            else:
                resolved.append(gpu)
                owners.setdefault(gpu.index, []).append(model)
        if est.weights_mib is None:
            add("gpu-memory", "warn", f"{where}: cannot estimate its memory: {est.basis[0]}",
                "name the size (e.g. my-model-7b) or use a single weights file")
        for gpu in resolved:
            total = gpu.memory_total_mib
            if est.reserve_fraction is not None and total is not None:
                mib = est.reserve_fraction * total
                note = f"reserves {est.reserve_fraction:g} x {_gib(total)} + " \
                       f"{_gib(CUDA_CONTEXT_MIB)} CUDA context; needs ~{_gib(est.need_mib)}"
                if est.certain_mib is not None and est.certain_mib > mib:
                    add("gpu-memory", "fail", f"{where}: weights and overhead "
                        f"(~{_gib(est.certain_mib)} per GPU) exceed the {_gib(mib)} "
                        f"{model.backend} reserves on GPU {gpu.index}",
                        "give it more GPUs (tensor parallel), a bigger GPU or a quantised "
                        "model, or raise gpu_memory_utilization")
                elif est.need_mib is not None and est.need_mib > mib:
                    add("gpu-memory", "warn", f"{where}: with a {model.context}-token KV cache "
                        f"it may need ~{_gib(est.need_mib)} per GPU, more than the {_gib(mib)} "
                        f"{model.backend} reserves on GPU {gpu.index}",
                        "lower context or give it more GPUs" + (
                            " (the KV estimate is an upper bound)"
                            if est.kv_source == "heuristic" else ""))
                mib = certain = mib + CUDA_CONTEXT_MIB
            else:
                mib, certain = est.need_mib or 0.0, est.certain_mib or 0.0
                note = f"needs ~{_gib(est.need_mib)}"
            budgets[gpu.index].claims.append(
                Claim(model.name, mib, certain, note, running=model.name in running))
    for index, models in owners.items():
        unshared = [m.name for m in models if not m.gpu_share]
        if len(models) > 1 and unshared:
            add("gpu-assignment", "fail", f"GPU {index} is given to {len(models)} models ("
                + ", ".join(m.name for m in models) + ") but gpu_share is not set on "
                + ", ".join(unshared), "give each model its own GPU, or set gpu_share: true on "
                "every model sharing it (and split gpu_memory_utilization)")
    for budget in budgets.values():
        g = budget.gpu
        if not budget.claims or budget.status == "ok":
            continue
        if budget.status == "fail":
            add("gpu-memory", "fail", f"GPU {g.index} ({g.name}): the models need "
                f"{_gib(budget.planned_mib)} but only {_gib(g.memory_free_mib)} of "
                f"{_gib(g.memory_total_mib)} is free", "move a model to another GPU, lower "
                "gpu_memory_utilization or context, or stop what uses the GPU (nvidia-smi)")
        else:
            add("gpu-memory", "warn", f"GPU {g.index} ({g.name}): estimated need "
                f"{_gib(budget.planned_mib)} is above the free {_gib(g.memory_free_mib)} (the "
                "KV cache estimate is an upper bound)", "lower context or move a model if it "
                "fails to load")
    return GpuReport([budgets[k] for k in sorted(budgets)], estimates, findings)


def budget_lines(report: GpuReport) -> list[str]:
    """The budget per GPU as text lines for `plan` and `doctor`."""
    lines = []
    for b in report.budgets:
        g = b.gpu
        if not b.claims:
            continue
        lines.append(f"GPU {g.index} {g.name} ({g.uuid}): {_gib(g.memory_total_mib)} total, "
                     f"{_gib(g.memory_free_mib)} free")
        for c in b.claims:
            state = "  (running: counted in used)" if c.running else ""
            lines.append(f"  {c.model:<24} {_gib(c.mib):>10}  {c.note}{state}")
        lines.append(f"  {'left after up':<24} {_gib(b.free_after_mib):>10}  [{b.status}]")
    return lines


def needs_gpus(spec: StackSpec) -> bool:
    return any(m.gpu_ids for m in spec.models)
