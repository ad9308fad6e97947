"""Long-context modes: how a loaded model is set up to read past its trained length.

    configure(model, config, runtime, long_context, options) -> (model, config, runtime, window)

`load_engine(long_context=..., long_context_options=...)` calls it. Modes (`LONG_CONTEXT`):
- "none" (or None): as config.json says: its `dual_chunk_attention_config` turns DCA on, its
  YaRN `rope_scaling` sets the window to factor × original; otherwise nothing changes.
- "yarn": static YaRN (model_core.rope.yarn_inv_freq). Adds `rope_scaling {rope_type: yarn,
  factor, original_max_position_embeddings}` to the config (config.json's own block is the
  default); factor defaults to window / original (4 for 32K -> 128K). Window: factor × original.
- "dca": Dual Chunk Attention (model_core.dca) with its temperature. Sizes from the options, else
  config.json's `dual_chunk_attention_config` (vLLM's defaults 8192 / 1024 / 0 for missing
  keys), else ChunkLlama's rule for the trained length: chunk_size 3/4 of it, local_size 1/16
  (24,576 / 2,048 for a 32K-trained Qwen2). As in vLLM, DCA replaces a YaRN rope_scaling (its
  temperature is the "YaRN" part); other rope types are kept. Window: 131,072 or the option.

Options (None values are ignored, so a command line can pass every flag):
`factor` (yarn), `chunk_size`, `local_size` (dca), `original_max_position_embeddings` (yarn,
dca), `window` (all modes; with "none" it lets plain RoPE run past the trained length).
The returned config's `max_position_embeddings` is the window (CONTRACTS.md: it is the window).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from model_core.config import ModelConfig
from model_core.engine import RuntimeOptions
from model_core.errors import ModelError

DEFAULT_WINDOW = 131072
OPTIONS = {
    "none": {"window"},
    "yarn": {"factor", "original_max_position_embeddings", "window"},
    "dca": {"chunk_size", "local_size", "original_max_position_embeddings", "window"},
}


class LongContextError(ModelError):
    """Bad long-context settings (unknown mode, option or size)."""

    user_error = True


def configure(
    model,
    config: ModelConfig,
    runtime: RuntimeOptions,
    long_context: str | None,
    options: dict[str, Any],
):
    """(model, config, runtime, window) for the long-context mode; model's rope is updated in place."""
    options = {key: value for key, value in (options or {}).items() if value is not None}
    kind = long_context or "none"
    if kind not in LONG_CONTEXT:
        raise LongContextError(
            f"unknown long-context mode {kind!r}; choose one of {', '.join(LONG_CONTEXT)}"
        )
    if kind == "none":
        kind = _from_checkpoint(config)
    foreign = sorted(set(options) - OPTIONS[kind])
    if foreign:
        raise LongContextError(
            f"option(s) {', '.join(foreign)} do not apply to long-context mode {kind!r}"
        )
    config, runtime, window = LONG_CONTEXT[kind](config, runtime, options)
    if window < 1:
        raise LongContextError(f"the window must be positive, got {window}")
    config = config.replace(max_position_embeddings=window)
    model.config = config
    model.reset_rope()
    return model, config, runtime, window


def _from_checkpoint(config: ModelConfig) -> str:
    if config.dual_chunk_attention_config:
        return "dca"
    if (config.rope_scaling or {}).get("rope_type") == "yarn":
        return "yarn"
    return "none"


def _none(config: ModelConfig, runtime: RuntimeOptions, options: dict) -> tuple:
    """Plain RoPE; a `window` past the trained length lets experiments measure extrapolation."""
    return config, runtime, int(options.get("window") or config.max_position_embeddings)


def trained_length(config: ModelConfig) -> int:
    """The length the model was trained at: rope_scaling's original, else max_position_embeddings."""
    return int(
        (config.rope_scaling or {}).get("original_max_position_embeddings")
        or config.max_position_embeddings
    )


def _yarn(config: ModelConfig, runtime: RuntimeOptions, options: dict) -> tuple:
    existing = config.rope_scaling if (config.rope_scaling or {}).get("rope_type") == "yarn" else {}
    original = int(options.get("original_max_position_embeddings") or trained_length(config))
    if "factor" in options:
        factor = float(options["factor"])
    elif existing.get("factor"):
        factor = float(existing["factor"])
    else:
        factor = int(options.get("window", DEFAULT_WINDOW)) / original
    if factor < 1:
        raise LongContextError(f"YaRN factor must be at least 1, got {factor:g}")
    rope_scaling = {
        **existing,
        "rope_type": "yarn",
        "factor": factor,
        "original_max_position_embeddings": original,
    }
    window = int(options.get("window") or round(factor * original))
    return (
        config.replace(rope_scaling=rope_scaling),
        dataclasses.replace(runtime, mode="plain"),
        window,
    )


def dca_options(config: ModelConfig, options: dict) -> dict[str, int]:
    """chunk_size, local_size and original_max_position_embeddings for DCA (see module docstring)."""
    block = config.dual_chunk_attention_config
    if block:
        defaults = {"chunk_size": 8192, "local_size": 1024, "original_max_position_embeddings": 0}
        defaults.update({key: block[key] for key in defaults if block.get(key) is not None})
    else:
        original = trained_length(config)
        defaults = {
            "chunk_size": 3 * original // 4,
            "local_size": original // 16,
            "original_max_position_embeddings": original,
        }
    sizes = {key: int(options.get(key, value)) for key, value in defaults.items()}
    if not 0 < sizes["local_size"] < sizes["chunk_size"]:
        raise LongContextError(
            f"DCA needs 0 < local_size < chunk_size, got local_size {sizes['local_size']} and chunk_size "
            f"{sizes['chunk_size']}"
        )
    if sizes["original_max_position_embeddings"] < 0:
        raise LongContextError(
            "original_max_position_embeddings must be >= 0 (0 turns the temperature off)"
        )
    return sizes


def _dca(config: ModelConfig, runtime: RuntimeOptions, options: dict) -> tuple:
    sizes = dca_options(config, options)
    if (config.rope_scaling or {}).get("rope_type") == "yarn":
        config = config.replace(rope_scaling=None)
    window = int(options.get("window") or max(DEFAULT_WINDOW, config.max_position_embeddings))
    return config, dataclasses.replace(runtime, mode="dca", mode_options=sizes), window


LONG_CONTEXT: dict[str, Callable[[ModelConfig, RuntimeOptions, dict], tuple]] = {
    "none": _none,
    "yarn": _yarn,
    "dca": _dca,
}
