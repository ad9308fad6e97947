"""Long-prompt prefill on CPU: time and peak memory, plain attention against DCA.

    python bench/long_context.py                        # 4K, 8K, 16K, 32K tokens, plain and dca
    python bench/long_context.py --lengths 4096 8192 --modes dca --json bench/out/long_context.json

The model is Qwen2-shaped (GQA, QKV bias, RMSNorm, SwiGLU, RoPE θ=1e6) with random weights and
small dimensions so that a 32K prefill fits a laptop: only the shapes matter for time and memory.
Its "trained" length is 4096, so DCA uses its defaults for that length (chunk_size 3072,
local_size 256: a 32K prompt spans 12 chunks) and its temperature is on.

Each point runs in a fresh subprocess: its peak memory is the growth of the process's maximum
resident set (ru_maxrss) from just before the KV cache is allocated to the end of the prefill,
so it holds the cache plus every temporary of the prefill. The check: between the shortest and
the longest prompt, peak memory must grow by at most 1.5x the KV cache's own growth per token
(a quadratic term, such as an (S, S) mask or score matrix, would blow far past it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SHAPE = dict(
    vocab_size=1024,
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)
MAX_RATIO = 1.5


def build(mode: str, backend: str, prefill_chunk: int):
    """(model, config, runtime) for the bench shape with random weights."""
    import torch

    from model_core.config import KNOWN_SIZES
    from model_core.engine import RuntimeOptions
    from model_core.long_context import configure
    from model_core.model import Qwen2ForCausalLM

    torch.manual_seed(0)
    config = KNOWN_SIZES["0.5B"].replace(**SHAPE)
    model = Qwen2ForCausalLM(config).eval()
    runtime = RuntimeOptions(backend=backend, prefill_chunk=prefill_chunk)
    model, config, runtime, _ = configure(model, config, runtime, mode, {})
    return model, config, runtime


def kv_bytes_per_token(config, dtype_bytes: int = 4) -> int:
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * dtype_bytes


def measure(length: int, mode: str, backend: str, prefill_chunk: int) -> dict:
    """One point, in this process: prefill `length` random tokens into a fresh cache."""
    import torch

    from model_core.cache import KVCache
    from model_core.engine import prefill

    model, config, runtime = build(mode, backend, prefill_chunk)
    prompt = torch.randint(
        0, config.vocab_size, (length,), generator=torch.Generator().manual_seed(1)
    )
    with torch.inference_mode():  # warm the kernels on a short prompt first
        prefill(model, KVCache(config, 1, 64, torch.float32, "cpu"), 0, prompt[:64], runtime)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    cache = KVCache(config, 1, length, torch.float32, "cpu")
    logits = prefill(model, cache, 0, prompt, runtime)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert torch.isfinite(logits).all()
    return {
        "tokens": length,
        "mode": mode,
        "seconds": seconds,
        "tokens_per_s": length / seconds,
        "peak_bytes": peak,
        "kv_bytes": kv_bytes_per_token(config) * length,
        "runtime": {
            "backend": runtime.backend,
            "mode": runtime.mode,
            "options": runtime.mode_options,
            "prefill_chunk": runtime.prefill_chunk,
        },
    }


def run_point(length: int, mode: str, backend: str, prefill_chunk: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--point",
        str(length),
        mode,
        "--backend",
        backend,
        "--prefill-chunk",
        str(prefill_chunk),
    ]
    out = subprocess.run(
        command, check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def growth_report(points: list[dict], mode: str) -> tuple[list[str], bool]:
    rows = sorted((p for p in points if p["mode"] == mode), key=lambda p: p["tokens"])
    if len(rows) < 2:
        return [], True
    lines, ok = [], True
    pairs = list(zip(rows, rows[1:], strict=False)) + [(rows[0], rows[-1])]
    for low, high in pairs:
        tokens = high["tokens"] - low["tokens"]
        grown = (high["peak_bytes"] - low["peak_bytes"]) / tokens
        kv = (high["kv_bytes"] - low["kv_bytes"]) / tokens
        ratio = grown / kv
        whole = (low, high) == (rows[0], rows[-1])
        ok = ok and (ratio <= MAX_RATIO or not whole)
        label = "overall" if whole else "step"
        lines.append(
            f"{mode:5s} {label:7s} {low['tokens']:>6d} -> {high['tokens']:>6d}: peak memory grows "
            f"{grown:8.0f} B/token, KV cache {kv:6.0f} B/token, ratio {ratio:4.2f}"
        )
    return lines, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--modes", nargs="+", default=["none", "dca"], choices=["none", "dca"])
    parser.add_argument("--backend", default="sdpa")
    parser.add_argument("--prefill-chunk", type=int, default=2048)
    parser.add_argument("--json", type=Path, help="also write the points here")
    parser.add_argument("--point", nargs=2, metavar=("TOKENS", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point:
        print(
            json.dumps(measure(int(args.point[0]), args.point[1], args.backend, args.prefill_chunk))
        )
        return 0

    points = []
    print(f"{'tokens':>7} {'mode':5} {'prefill s':>9} {'tok/s':>7} {'peak MiB':>9} {'KV MiB':>7}")
    for length in args.lengths:
        for mode in args.modes:
            point = run_point(length, mode, args.backend, args.prefill_chunk)
            points.append(point)
            print(
                f"{length:>7d} {mode:5s} {point['seconds']:9.1f} {point['tokens_per_s']:7.0f} "
                f"{point['peak_bytes'] / 2**20:9.1f} {point['kv_bytes'] / 2**20:7.1f}",
                flush=True,
            )
    ok = True
    for mode in args.modes:
        lines, mode_ok = growth_report(points, mode)
        print("\n".join(lines))
        ok = ok and mode_ok
    print(f"memory growth within {MAX_RATIO}x of the KV cache's: {'yes' if ok else 'NO'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"shape": SHAPE, "points": points, "ok": ok}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
