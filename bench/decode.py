"""Decode and prefill speed: our engine against transformers' generate, same model, same dtype.

    python bench/decode.py                  # both models, contexts 128 and 2048, 64 new tokens
    python bench/decode.py --models smollm2 --contexts 128

Each (engine, model) pair runs in its own subprocess so peak memory (VmHWM) is its own. Prefill
speed is the prompt length over the time to the first token (best of three); decode speed is the remaining new
tokens over the remaining time. Both engines are greedy and ignore end-of-sequence, so they
produce exactly --new-tokens tokens. The anchor is transformers, measured in the same run; the
table prints our/transformers ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("qwen2-0.5b", "smollm2")


def build_qwen2_05b(folder: Path) -> Path:
    """A Qwen2-0.5B-shaped checkpoint with random weights, saved by transformers."""
    import torch
    import transformers

    from model_core.config import KNOWN_SIZES

    if (folder / "config.json").exists():
        return folder
    size = KNOWN_SIZES["0.5B"]
    config = transformers.Qwen2Config(
        vocab_size=size.vocab_size, hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers, num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_key_value_heads, rope_theta=size.rope_theta,
        max_position_embeddings=size.max_position_embeddings, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


def model_location(name: str, workdir: Path) -> Path:
    if name == "qwen2-0.5b":
        return build_qwen2_05b(workdir / "qwen2-0.5b")
    from model_core import default_model_path

    return default_model_path()


def load(engine: str, path: Path):
    """A `run(prompt_ids, new_tokens)` function for one engine on one model."""
    import torch

    if engine == "ours":
        from model_core import SamplingParams
        from model_core.engine import Engine
        from model_core.loading import load_model

        model, config, tokenizer = load_model(path)
        ours = Engine(model, config, tokenizer)

        def run(prompt, new_tokens):
            return ours.generate([prompt], SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))[0].token_ids

        return run, config.vocab_size
    import transformers

    if path.suffix == ".gguf":
        hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    else:
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    hf.eval()

    def run(prompt, new_tokens):
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    return run, hf.config.vocab_size


def measure(engine: str, path: Path, contexts: list[int], new_tokens: int, threads: int,
            repeats: int = 3) -> dict:
    """Runs in the child process: prefill and decode tokens/s for each context length."""
    import torch

    torch.set_num_threads(threads)
    run, vocab = load(engine, path)
    generator = torch.Generator().manual_seed(0)
    run(torch.randint(0, vocab, (16,), generator=generator).tolist(), 4)  # warm-up
    rows = {}
    for context in contexts:
        prompt = torch.randint(0, vocab, (context,), generator=generator).tolist()
        first = float("inf")
        for _ in range(repeats):  # the best of a few: one noisy run should not set the ratio
            start = time.perf_counter()
            run(prompt, 1)
            first = min(first, time.perf_counter() - start)
        start = time.perf_counter()
        produced = run(prompt, new_tokens)
        total = time.perf_counter() - start
        rows[context] = {"prefill_tok_s": context / first,
                         "decode_tok_s": (len(produced) - 1) / max(total - first, 1e-9),
                         "new_tokens": len(produced)}
    return {"rows": rows, "peak_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """This process's own peak RSS (VmHWM). ru_maxrss would not do: Linux carries the parent's
    high-water mark across fork and exec, and the parent may have built the checkpoint."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--contexts", default="128,2048")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "longctx-bench"))
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    if args.child:
        print(json.dumps(measure(args.child[0], Path(args.child[1]), contexts, args.new_tokens, args.threads)))
        return 0

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{'model':<12} {'ctx':>6} {'engine':<13} {'prefill tok/s':>14} {'decode tok/s':>13} {'peak RSS MiB':>13}")
    for name in args.models.split(","):
        path = model_location(name, workdir)
        results = {}
        for engine in ("transformers", "ours"):
            child = subprocess.run(
                [sys.executable, __file__, "--child", engine, str(path), "--contexts", args.contexts,
                 "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)],
                capture_output=True, text=True, check=True)
            results[engine] = json.loads(child.stdout.strip().splitlines()[-1])
        for context in contexts:
            key = str(context)
            theirs, ours = results["transformers"]["rows"][key], results["ours"]["rows"][key]
            for engine, row in (("transformers", theirs), ("ours", ours)):
                print(f"{name:<12} {context:>6} {engine:<13} {row['prefill_tok_s']:>14.1f} "
                      f"{row['decode_tok_s']:>13.2f} {results[engine]['peak_rss_mib']:>13.0f}")
            print(f"{name:<12} {context:>6} {'ratio':<13} {ours['prefill_tok_s'] / theirs['prefill_tok_s']:>13.2f}x "
                  f"{ours['decode_tok_s'] / theirs['decode_tok_s']:>12.2f}x "
                  f"{results['ours']['peak_rss_mib'] / results['transformers']['peak_rss_mib']:>12.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
