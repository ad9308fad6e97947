"""GPU checks for a lent CUDA machine (bench/gpu_check.sh runs this after the parity tests).

    python bench/gpu_check.py --out bench/out [--tokens 131072] [--backends flash sdpa]

1. flash against sdpa (and eager as the reference) on Qwen2-7B attention shapes in bf16: a
   prefill chunk at the end of a 32K cache, and batched decode rows of different lengths, with
   and without the LSE; max error and time of each.
2. A DCA prefill of a random Qwen2-7B-shaped model (bf16, chunk_size 24576, local_size 2048,
   original 32768, temperature on) at `--tokens` tokens (131072 by default), halving on out of
   memory; peak GPU memory, tokens/s, and the KV cache's own size.
Numbers go to OUT/gpu_check.json and are printed. Nothing is downloaded: the weights are random.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_core.attention import ATTENTION, default_backend  # noqa: E402
from model_core.config import KNOWN_SIZES  # noqa: E402


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeat: int = 3) -> tuple[object, float]:
    fn()  # warm-up
    synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        result = fn()
    synchronize()
    return result, (time.perf_counter() - start) / repeat


def _bind(attend, q, k, v, kv_lens, need_lse):
    return lambda: attend(q, k, v, causal=True, kv_lens=kv_lens, need_lse=need_lse)


def compare_backends(backends: list[str], device: str = "cuda", keys: int = 32768) -> list[dict]:
    """Each backend against the float32 reference on 7B attention shapes in bf16."""
    size = KNOWN_SIZES["7B"]
    heads, kv_heads, dim = size.num_attention_heads, size.num_key_value_heads, size.head_dim
    gen = torch.Generator(device=device).manual_seed(0)
    cases = {
        f"prefill chunk 2048 at the end of {keys}": (1, 2048, keys, None),
        f"decode 8 rows, lengths 1..{keys}": (8, 1, keys, torch.linspace(1, keys, 8).long()),
    }
    rows = []
    for case, (batch, q_len, k_len, lens) in cases.items():
        q = torch.randn(
            batch, heads, q_len, dim, device=device, generator=gen, dtype=torch.bfloat16
        )
        k = torch.randn(
            batch, kv_heads, k_len, dim, device=device, generator=gen, dtype=torch.bfloat16
        )
        v = torch.randn(
            batch, kv_heads, k_len, dim, device=device, generator=gen, dtype=torch.bfloat16
        )
        kv_lens = None if lens is None else lens.to(device)
        ref, ref_lse = ATTENTION["sdpa"](
            q.float(), k.float(), v.float(), causal=True, kv_lens=kv_lens, need_lse=True
        )
        for name in backends:
            for need_lse in (False, True):
                call = _bind(ATTENTION[name], q, k, v, kv_lens, need_lse)
                (out, lse), seconds = timed(call)
                row = {
                    "case": case,
                    "backend": name,
                    "need_lse": need_lse,
                    "ms": seconds * 1e3,
                    "max_err": (out.float() - ref).abs().max().item(),
                }
                if need_lse:
                    row["lse_max_err"] = (lse - ref_lse).abs().max().item()
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def random_model(size: str, device: str):
    """A Qwen2-shaped model (KNOWN_SIZES[size]), random bf16 weights (std 0.02), built in place."""
    from model_core.model import Qwen2ForCausalLM

    config = KNOWN_SIZES[size]
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("meta"):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model = model.to_empty(device=device)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=gen)
    model.reset_rope()
    return model.eval(), config


def dca_prefill(tokens: int, backend: str, prefill_chunk: int, size: str, device: str) -> dict:
    from model_core.cache import KVCache
    from model_core.engine import RuntimeOptions, prefill
    from model_core.long_context import configure

    model, config = random_model(size, device)
    runtime = RuntimeOptions(backend=backend, prefill_chunk=prefill_chunk)
    model, config, runtime, window = configure(model, config, runtime, "dca", {})
    cuda = device == "cuda"
    while tokens >= 1024:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        weights = torch.cuda.memory_allocated() if cuda else 0
        try:
            prompt = torch.randint(0, config.vocab_size, (tokens,), device=device)
            cache = KVCache(config, 1, tokens, torch.bfloat16, device)
            synchronize()
            start = time.perf_counter()
            logits = prefill(model, cache, 0, prompt, runtime)
            synchronize()
            seconds = time.perf_counter() - start
        except torch.OutOfMemoryError:
            print(f"DCA prefill of {tokens} tokens ran out of memory; halving", flush=True)
            tokens //= 2
            continue
        kv = cache.k.numel() * 2 * cache.k.element_size()
        result = {
            "tokens": tokens,
            "backend": backend,
            "prefill_chunk": prefill_chunk,
            "window": window,
            "dca": runtime.mode_options,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
            "size": size,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "weights_gib": weights / 2**30,
            "kv_cache_gib": kv / 2**30,
            "logits_finite": bool(torch.isfinite(logits).all()),
        }
        print(json.dumps(result), flush=True)
        return result
    return {"tokens": 0, "error": "out of memory even at 1024 tokens"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("--tokens", type=int, default=131072)
    parser.add_argument("--prefill-chunk", type=int, default=4096)
    parser.add_argument(
        "--backends", nargs="+", default=None, help="default: flash (if present) and sdpa"
    )
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument(
        "--compare-keys", type=int, default=32768, help="cache length of the backend comparison"
    )
    parser.add_argument(
        "--size", default="7B", choices=sorted(KNOWN_SIZES), help="model shape (default 7B)"
    )
    parser.add_argument("--device", default="cuda", help="cpu only for a smoke run of this script")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check here", file=sys.stderr)
        return 2
    backends = args.backends or [name for name in ("flash", "sdpa") if name in ATTENTION]
    report = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
        "torch": torch.__version__,
        "flash_attn": "flash" in ATTENTION,
        "default_backend": default_backend(args.device),
    }
    print(json.dumps(report), flush=True)
    if not args.skip_compare:
        report["backends"] = compare_backends(backends, args.device, args.compare_keys)
    report["dca_prefill"] = dca_prefill(
        args.tokens, default_backend(args.device), args.prefill_chunk, args.size, args.device
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
