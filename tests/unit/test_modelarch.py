"""Attention shapes from config.json (real files of popular coding models, stored as
fixtures) and GGUF headers (written by the `gguf` package, read back from a prefix), and the
KV cache estimate and CUDA context reserve they lead to in the GPU budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmstack import gpu, modelarch
from llmstack.gpu import Gpu
from llmstack.spec import StackSpec

FIXTURES = Path(__file__).parent / "fixtures" / "models"
GIB = 1024 ** 3


def config(name: str) -> modelarch.Architecture:
    return modelarch.from_config((FIXTURES / f"{name}.config.json").read_bytes())


@pytest.mark.parametrize(("name", "shape", "kib_per_token"), [
    # Qwen2.5: 28 attention heads share 4 KV heads (GQA).
    ("Qwen2.5-Coder-7B-Instruct", (28, 4, 128, None), 56),
    # deepseek-coder 6.7B: plain multi-head attention (32 KV heads).
    ("deepseek-coder-6.7b-instruct", (32, 32, 128, None), 512),
    # Mistral 7B v0.1: 8 KV heads and a 4096-token sliding window on every layer.
    ("Mistral-7B-v0.1", (32, 8, 128, 4096), 128),
])
def test_config_json_shapes(name: str, shape: tuple[Any, ...], kib_per_token: int) -> None:
    arch = config(name)
    assert (arch.layers, arch.kv_heads, arch.head_dim, arch.sliding_window) == shape
    assert arch.kv_bytes_per_token() == kib_per_token * 1024
    assert arch.source == "config.json"


def test_qwen_coder_7b_at_32k_needs_about_1_75_gib_of_kv_cache() -> None:
    arch = config("Qwen2.5-Coder-7B-Instruct")
    assert arch.kv_bytes_per_token() * arch.cached_tokens(32768) / GIB == pytest.approx(1.75)
    # A sliding window caps what is cached.
    assert config("Mistral-7B-v0.1").cached_tokens(32768) == 4096


def test_a_config_without_the_shape_is_an_error() -> None:
    with pytest.raises(modelarch.ArchitectureError, match="num_hidden_layers"):
        modelarch.from_config(b'{"model_type": "bert"}')


def gguf_file(tmp_path: Path, arch: str, meta: dict[str, Any], vocab: int = 20000) -> bytes:
    """A GGUF file as llama.cpp's converter writes one: architecture keys, then the tokenizer
    arrays, then tensors (one small tensor here)."""
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    path = tmp_path / "model.gguf"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("test")
    writer.add_block_count(meta["layers"])
    writer.add_context_length(meta["ctx"])
    writer.add_embedding_length(meta["width"])
    writer.add_head_count(meta["heads"])
    writer.add_head_count_kv(meta["kv_heads"])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"tok{i}" for i in range(vocab)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def test_gguf_header_of_a_gqa_model_read_from_a_prefix(tmp_path: Path) -> None:
    # Qwen2.5-Coder-7B's shape as llama.cpp's converter writes it (qwen2 architecture).
    data = gguf_file(tmp_path, "qwen2", {"layers": 28, "ctx": 32768, "width": 3584,
                                         "heads": 28, "kv_heads": 4})
    arch = modelarch.from_gguf(data[:4096])  # the tokenizer arrays are cut off: fine
    assert (arch.layers, arch.kv_heads, arch.head_dim, arch.max_context) == (28, 4, 128, 32768)
    assert arch.source == "GGUF header"
    assert modelarch.from_gguf(data) == arch
    with pytest.raises(modelarch.ArchitectureError, match="no GGUF magic"):
        modelarch.from_gguf(b"PK\x03\x04" + data[4:100])
    with pytest.raises(modelarch.ArchitectureError, match=r"general\.architecture"):
        modelarch.from_gguf(data[:40])  # cut inside the first key
    with pytest.raises(modelarch.ArchitectureError, match=r"qwen2\.block_count"):
        modelarch.from_gguf(data[:data.index(b"qwen2.block_count")])


def a24(*models: dict[str, Any]) -> tuple[StackSpec, list[Gpu]]:
    spec = StackSpec.model_validate({"models": list(models)})
    return spec, [Gpu(0, "GPU-00000000-aaaa-4bbb-8ccc-dddddddddddd", "NVIDIA L4", 24576, 0)]


def test_plan_uses_the_config_and_says_so() -> None:
    spec, gpus = a24({"name": "qwen-coder-7b", "backend": "vllm",
                      "source": "hf:Qwen/Qwen2.5-Coder-7B-Instruct", "gpus": [0],
                      "context": 32768})
    guess = gpu.check(spec, gpus)
    assert guess.estimates[0].kv_source == "heuristic"
    assert guess.estimates[0].kv_mib is not None and guess.estimates[0].kv_mib > 15 * 1024
    assert any("KV cache" in f.detail for f in guess.findings)
    known = gpu.check(spec, gpus, architectures={
        "qwen-coder-7b": config("Qwen2.5-Coder-7B-Instruct")})
    est = known.estimates[0]
    assert est.kv_source == "config.json" and est.kv_mib == pytest.approx(1792)
    assert "from config.json: 28 layers x 4 KV heads x 128 head size" in est.basis[1]
    assert est.to_dict()["kv_cache_source"] == "config.json"
    assert [f for f in known.findings if f.status != "ok"] == []


def test_two_shares_filling_the_gpu_leave_no_room_for_cuda_contexts() -> None:
    """0.5 + 0.49 of a GPU passed with 0.3 GiB left; each process needs ~1 GiB beside."""
    spec, gpus = a24(
        {"name": "a-1b", "backend": "vllm", "source": "hf:o/a-1b", "gpus": [0],
         "gpu_share": True, "gpu_memory_utilization": 0.5},
        {"name": "b-1b", "backend": "vllm", "source": "hf:o/b-1b", "gpus": [0],
         "gpu_share": True, "gpu_memory_utilization": 0.49})
    report = gpu.check(spec, gpus)
    assert report.budgets[0].status == "fail"
    assert report.budgets[0].free_after_mib == pytest.approx(24576 * 0.01 - 2048)


def test_doctor_reads_the_config_or_gguf_header_on_the_target(tmp_path: Path) -> None:
    from llmstack import doctor
    from llmstack.engine.host import SourceStat
    from tests.fake_engine import FakeEngine

    qwen = (FIXTURES / "Qwen2.5-Coder-7B-Instruct.config.json").read_bytes()
    header = gguf_file(tmp_path, "llama", {"layers": 32, "ctx": 8192, "width": 4096,
                                           "heads": 32, "kv_heads": 8})
    engine = FakeEngine(source_files={"volume:weights/qwen-coder/config.json": qwen,
                                      "host:/srv/models/llama-8b.Q4_K_M.gguf": header})
    spec = StackSpec.model_validate({"models": [
        {"name": "qwen-7b", "backend": "vllm", "source": "volume:weights/qwen-coder",
         "gpus": [0]},
        {"name": "llama-8b", "source": "host:/srv/models/llama-8b.Q4_K_M.gguf", "gpus": [0],
         "gpu_share": True},
        {"name": "gone-7b", "backend": "vllm", "source": "volume:weights/gone", "gpus": [1]}]})
    qwen_arch = doctor.read_architecture(engine, "img", spec.models[0],
                                         SourceStat(True, 4096, is_dir=True))
    assert qwen_arch == config("Qwen2.5-Coder-7B-Instruct")
    gguf_arch = doctor.read_architecture(engine, "img", spec.models[1],
                                         SourceStat(True, 4_900_000_000))
    assert gguf_arch is not None and (gguf_arch.kv_heads, gguf_arch.source) == (
        8, "GGUF header")
    assert doctor.read_architecture(engine, "img", spec.models[2],
                                    SourceStat(True, 1, is_dir=True)) is None
    assert doctor.read_architecture(engine, "img", spec.models[0], SourceStat(False)) is None
