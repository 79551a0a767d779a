"""Inference backends: one small module each; adding one is one file plus its tests."""

from __future__ import annotations

from . import llamacpp, ollama, tgi, vllm
from .base import Backend, Launch, Mount, Placement

BACKENDS: dict[str, Backend] = {
    m.BACKEND.name: m.BACKEND for m in (llamacpp, vllm, ollama, tgi)
}

__all__ = ["BACKENDS", "Backend", "Launch", "Mount", "Placement"]
