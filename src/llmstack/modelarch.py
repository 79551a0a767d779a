"""A model's attention shape from its `config.json` or its GGUF header: what the KV cache
needs per token. Pure: bytes in, numbers out.

KV cache per token = 2 (K and V) x layers x KV heads x head size x bytes per element. Grouped-
query models (Llama 3, Qwen2.5, Mistral) have far fewer KV heads than attention heads, so this
is 4-8x below what full multi-head attention would need; a model whose every layer attends
to a sliding window caches at most that many tokens.

The GGUF reader is hand-written (struct, about 60 lines) because it must read a prefix of the
file: the `gguf` package's reader maps the whole file, which `plan` cannot fetch from the
target. It follows the format of ggml's docs/gguf.md (version 2 and 3, little-endian) and is
checked against files written by the `gguf` package (tests/unit/test_modelarch.py).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

# How much of a GGUF file `plan` reads: the architecture keys come before the tokenizer's
# arrays in files written by llama.cpp's converters.
GGUF_HEAD_BYTES = 1024 * 1024
KV_ELEMENT_BYTES = 2  # f16/bf16 cache, the default of every backend here


class ArchitectureError(ValueError):
    """A config.json or GGUF header that does not say the model's attention shape."""


@dataclass(frozen=True)
class Architecture:
    layers: int
    kv_heads: int
    head_dim: int
    source: str  # "config.json" | "GGUF header"
    max_context: int | None = None
    sliding_window: int | None = None  # every layer caches at most this many tokens

    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * KV_ELEMENT_BYTES

    def cached_tokens(self, context: int) -> int:
        return min(context, self.sliding_window) if self.sliding_window else context

    def describe(self) -> str:
        window = f", sliding window {self.sliding_window}" if self.sliding_window else ""
        return (f"{self.source}: {self.layers} layers x {self.kv_heads} KV heads x "
                f"{self.head_dim} head size{window}")


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        and value > 0 else None


def from_config(data: bytes | str | dict[str, Any]) -> Architecture:
    """The attention shape from a Hugging Face `config.json` (its text part for multimodal
    models)."""
    config = json.loads(data) if isinstance(data, bytes | str) else data
    if not isinstance(config, dict):
        raise ArchitectureError("config.json is not a JSON object")
    config = config.get("text_config") or config
    layers = _int(config.get("num_hidden_layers") or config.get("n_layer"))
    heads = _int(config.get("num_attention_heads") or config.get("n_head"))
    kv_heads = _int(config.get("num_key_value_heads")) or (1 if config.get("multi_query")
                                                           else heads)
    hidden = _int(config.get("hidden_size") or config.get("n_embd"))
    head_dim = _int(config.get("head_dim")) or (hidden // heads if hidden and heads else None)
    if not (layers and kv_heads and head_dim):
        raise ArchitectureError("config.json names no num_hidden_layers, num_attention_heads "
                                "/ num_key_value_heads and hidden_size / head_dim")
    window = _int(config.get("sliding_window"))
    if config.get("use_sliding_window") is False or config.get("layer_types"):
        window = None  # off, or only some layers slide: count every layer in full
    return Architecture(layers, kv_heads, head_dim, "config.json",
                        _int(config.get("max_position_embeddings")), window)


# GGUF value types (ggml docs/gguf.md): struct format and size of the fixed-size ones.
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Truncated(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Truncated
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("<Q")).decode("utf-8", "replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item in _SCALARS:  # skipped whole (tokenizer scores, per-layer counts)
                size = struct.calcsize(_SCALARS[item])
                raw = self.take(size * count)
                return [struct.unpack_from(_SCALARS[item], raw, i * size)[0]
                        for i in range(min(count, 4096))]
            return [self.value(item) for _ in range(count)]
        raise ArchitectureError(f"GGUF value of unknown type {kind}")


def gguf_metadata(head: bytes) -> dict[str, Any]:
    """The key/values of a GGUF file from its first bytes (as many as they hold)."""
    reader = _Reader(head)
    try:
        if reader.take(4) != b"GGUF":
            raise ArchitectureError("not a GGUF file (no GGUF magic)")
        version = reader.unpack("<I")
        if version not in (2, 3):
            raise ArchitectureError(f"GGUF version {version} is not supported (2 and 3 are)")
        reader.unpack("<Q")  # tensor count
        count = reader.unpack("<Q")
    except _Truncated:
        raise ArchitectureError("GGUF header is truncated") from None
    meta: dict[str, Any] = {}
    try:
        for _ in range(count):
            key = reader.string()
            meta[key] = reader.value(reader.unpack("<I"))
    except _Truncated:
        pass  # the rest is past what was read
    return meta


def from_gguf(head: bytes) -> Architecture:
    """The attention shape from the first bytes of a GGUF file."""
    meta = gguf_metadata(head)
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ArchitectureError("GGUF header names no general.architecture")

    def get(key: str) -> Any:
        value = meta.get(f"{arch}.{key}")
        return max(value) if isinstance(value, list) and value else value  # per-layer lists

    layers, heads = _int(get("block_count")), _int(get("attention.head_count"))
    kv_heads = _int(get("attention.head_count_kv")) or heads
    width = _int(get("embedding_length"))
    head_dim = _int(get("attention.key_length")) or (width // heads if width and heads
                                                     else None)
    if not (layers and kv_heads and head_dim):
        raise ArchitectureError(f"GGUF header lacks {arch}.block_count, "
                                f"{arch}.attention.head_count(_kv) or {arch}.embedding_length")
    # A sliding window in GGUF (gemma2/3, ...) covers only some layers: every layer counts.
    return Architecture(layers, kv_heads, head_dim, "GGUF header", _int(get("context_length")))
