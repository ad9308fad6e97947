"""Qwen2 inference: model, loading, long context and the generation engine.

    from model_core import load_engine, SamplingParams
    engine = load_engine()                      # the offline default model
    engine.generate([engine.tokenizer.encode("Hello")], SamplingParams(max_new_tokens=8))
"""

from __future__ import annotations

from pathlib import Path

from model_core.config import KNOWN_SIZES, ModelConfig
from model_core.engine import Engine, EngineStats, Generation, RuntimeOptions, ServingOptions
from model_core.errors import (
    CheckpointError,
    KVBudgetError,
    ModelError,
    PromptTooLongError,
    SamplingError,
    UnsupportedArchitectureError,
)
from model_core.sampling import SamplingParams

__all__ = [
    "KNOWN_SIZES", "CheckpointError", "Engine", "EngineStats", "Generation", "KVBudgetError",
    "ModelConfig", "ModelError", "PromptTooLongError", "RuntimeOptions", "SamplingError",
    "SamplingParams", "ServingOptions",
    "UnsupportedArchitectureError", "default_model_path", "load_engine",
]


def default_model_path() -> Path:
    """The offline default model: Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M), shipped in six PyPI
    packages and assembled once into the user cache (see `model_core.paths`)."""
    from model_core.paths import default_model_path as find

    return find()


def load_engine(path: str | Path | None = None, *, dtype: str = "float32", device: str = "cpu",
                attention: str | None = None, long_context: str | None = None,
                long_context_options: dict | None = None, prefill_chunk: int | None = None,
                kv_budget_tokens: int | None = None, prefix_cache: bool | float = True,
                max_batch: int | None = None, quantize: str | None = None) -> Engine:
    """Load a checkpoint folder, a GGUF file or an offline model by name (None: the default) into
    a ready Engine.

    attention: backend name from `model_core.attention.ATTENTION` (default: by device).
    long_context: None / "none" (as config.json says), "yarn" or "dca"; options override sizes.
    kv_budget_tokens: the engine loop's KV memory, allocated once (None: the model's window).
    prefix_cache: reuse the KV of repeated prompt prefixes; True keeps unreferenced cached blocks
    in up to the whole budget, a float in [0, 1] is that share, False / 0 turns it off.
    max_batch: the most requests the loop runs at once (None: ServingOptions' default).
    quantize: weights kept quantized (`model_core.quantize`): None is "gguf" for GGUF files on
    the CPU (each tensor at its file's precision), "none" otherwise; "int8" / "int4" / "bf16"
    quantize any checkpoint at load; "none" keeps float weights (the reference path).
    """
    from model_core.attention import ATTENTION, default_backend
    from model_core.loading import load_model

    backend = attention or default_backend(device)
    if backend not in ATTENTION:
        raise ModelError(f"unknown attention backend {backend!r}; available: {', '.join(sorted(ATTENTION))}")
    from model_core.paths import resolve_model

    model, config, tokenizer = load_model(resolve_model(path), dtype=dtype, device=device, quantize=quantize)
    runtime = RuntimeOptions(backend=backend)
    if prefill_chunk:
        runtime.prefill_chunk = prefill_chunk
    from model_core.long_context import configure  # also applies config.json's YaRN / DCA blocks

    model, config, runtime, window = configure(model, config, runtime, long_context, long_context_options or {})
    serving = ServingOptions(kv_budget_tokens=kv_budget_tokens, prefix_cache=float(prefix_cache))
    if max_batch:
        serving.max_batch = max_batch
    return Engine(model, config, tokenizer, device=device, runtime=runtime, window=window, serving=serving)
