"""Load a model from a Hugging Face checkpoint folder (sharded or single safetensors) or a GGUF file.

The model is built on the meta device and the tensors are attached with `assign=True`, so
nothing is allocated twice. Every expected tensor must be present and nothing unexpected may
remain: a partial checkpoint is an error naming what is missing, never a half-random model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from model_core.config import ModelConfig
from model_core.errors import CheckpointError
from model_core.model import Qwen2ForCausalLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; choose one of float32, bfloat16, float16")
    return DTYPES[dtype]


def safetensors_files(path: Path) -> list[Path]:
    """The shard files of a checkpoint folder, checked against its index when there is one."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: malformed index ({exc})") from exc
        files = [path / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{path}: shard files missing: {', '.join(missing)}")
        return files
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json")


def read_safetensors(files: list[Path], dtype: torch.dtype, device: str) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device=str(device)) as shard:
                for name in shard.keys():
                    tensors[name] = shard.get_tensor(name).to(dtype)
        except Exception as exc:  # safetensors raises its own error types for truncated files
            raise CheckpointError(f"{file}: cannot read safetensors ({exc})") from exc
    return tensors


def build_model(config: ModelConfig, state_dict: dict[str, torch.Tensor], dtype: torch.dtype,
                device: str, quantize: str = "none", blocks: dict | None = None) -> Qwen2ForCausalLM:
    """A model whose every parameter comes from `state_dict` (checked both ways), then quantized
    (`model_core.quantize.quantize_model`; `blocks`: a GGUF file's raw weights, meta in the
    state dict)."""
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    expected = set(model.state_dict().keys())
    if config.tie_word_embeddings:
        state_dict.pop("lm_head.weight", None)
        expected.discard("lm_head.weight")
    ignorable = {k for k in state_dict if k.endswith("rotary_emb.inv_freq")}
    missing = sorted(expected - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected - ignorable)
    if missing:
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensors, e.g. {', '.join(missing[:3])}")
    if unexpected:
        raise CheckpointError(f"checkpoint has {len(unexpected)} unexpected tensors, e.g. {', '.join(unexpected[:3])}")
    for name in ignorable:
        state_dict.pop(name)
    shapes = model.state_dict()
    for name, tensor in state_dict.items():
        if tuple(shapes[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{name}: shape {tuple(tensor.shape)} does not match config {tuple(shapes[name].shape)}")
    model.load_state_dict({k: v if v.device.type == "meta" else v.to(device=device, dtype=dtype)
                           for k, v in state_dict.items()}, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if quantize != "none" or blocks:
        from model_core.quantize import quantize_model

        if device != "cpu":
            raise CheckpointError(f"quantize={quantize!r} runs on the CPU kernels; use quantize='none' on {device}")
        quantize_model(model, quantize, blocks)
    model.reset_rope()
    return model.eval()


def default_quantize(path: str | Path, device: str = "cpu") -> str:
    """GGUF files stay quantized on the CPU ("gguf"); checkpoint folders and other devices: "none"."""
    return "gguf" if Path(path).suffix == ".gguf" and device == "cpu" else "none"


def load_model(path: str | Path, dtype: str | torch.dtype = "float32", device: str = "cpu",
               quantize: str | None = None):
    """(model, config, tokenizer) from a checkpoint folder or a .gguf file.

    quantize: a `model_core.quantize.QUANTIZE` mode; None: `default_quantize(path)`."""
    path = Path(path)
    torch_dtype = resolve_dtype(dtype)
    quantize = quantize or default_quantize(path, device)
    from model_core.quantize import QUANTIZE

    if quantize not in QUANTIZE:
        raise CheckpointError(f"unknown quantize mode {quantize!r}; choose one of {', '.join(QUANTIZE)}")
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    blocks = None
    if path.is_file() and path.suffix == ".gguf":
        from model_core.gguf import load_gguf_blocks

        raw_config, state_dict, blocks, tokenizer = load_gguf_blocks(
            path, dtype=torch_dtype, keep_blocks=quantize != "none")
        config = ModelConfig.from_dict(raw_config)
    elif path.is_dir():
        from model_core.tokenizer import Tokenizer

        config = ModelConfig.from_dir(path)
        state_dict = read_safetensors(safetensors_files(path), torch_dtype, "cpu")
        tokenizer = Tokenizer.from_pretrained_dir(path) if (path / "tokenizer.json").is_file() else None
        config = _with_generation_eos(config, path)
    else:
        raise CheckpointError(f"{path}: expected a checkpoint folder or a .gguf file")
    if quantize == "gguf" and not blocks:
        quantize = "int8"  # a float checkpoint asked for the GGUF plan: int8 everywhere
    model = build_model(config, state_dict, torch_dtype, device, quantize, blocks)
    del state_dict, blocks  # the last views of the GGUF file's map: it closes
    from model_core.quantize import release_memory

    release_memory()
    return model, config, tokenizer


def _with_generation_eos(config: ModelConfig, path: Path) -> ModelConfig:
    """generation_config.json often lists more end-of-turn ids than config.json (e.g. <|im_end|>)."""
    gen = path / "generation_config.json"
    if not gen.is_file():
        return config
    try:
        eos = json.loads(gen.read_text()).get("eos_token_id")
    except json.JSONDecodeError:
        return config
    extra = eos if isinstance(eos, list) else ([] if eos is None else [eos])
    merged = tuple(dict.fromkeys([*config.eos_token_ids, *map(int, extra)]))
    return config.replace(eos_token_ids=merged)
