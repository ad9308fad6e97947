"""Decode and prefill speed: our engine against llama.cpp and transformers, same GGUF files.

    bash bench/setup_llamacpp.sh            # once: llama-cpp-python built from its sdist
    python bench/decode.py                  # both shipped models, contexts 128 and 2048
    python bench/decode.py --models smollm2-135m-instruct --contexts 128 --quantize int4

Each (engine, model) pair runs in its own subprocess so peak memory (VmHWM) is its own; the
llama.cpp child runs in bench/.venv-llamacpp's Python (no torch there). Prefill speed is the
prompt length over the time to the first token (best of three); decode speed is the remaining
new tokens over the remaining time. All engines are greedy and ignore end-of-sequence, so they
produce exactly --new-tokens tokens, on the same random prompts, with --threads threads each.
The anchor is llama.cpp, measured in the same run: the table prints ours / llama.cpp ratios,
and the memory budget of issue 9 (1.5x the GGUF file plus our KV cache).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct")
ENGINES = ("llama.cpp", "transformers", "ours")
LLAMACPP_PYTHON = Path(__file__).parent / ".venv-llamacpp" / "bin" / "python"


def model_location(name: str) -> Path:
    from model_core.paths import resolve_model

    return resolve_model(name)


def load(engine: str, path: Path, threads: int, quantize: str | None, context: int):
    """A `(run(prompt_ids, new_tokens), vocab size)` for one engine on one model."""
    if engine == "llama.cpp":
        import llama_cpp

        llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_threads=threads,
                              n_threads_batch=threads, n_batch=512, verbose=False)

        def run_llama(prompt, new_tokens):
            llm.reset()  # no prefix reuse between runs
            out = []
            for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
                out.append(token)
                if len(out) >= new_tokens:
                    break
            return out

        return run_llama, llm.n_vocab()
    import torch

    torch.set_num_threads(threads)
    if engine == "ours":
        from model_core import SamplingParams
        from model_core.engine import Engine, ServingOptions
        from model_core.loading import load_model

        model, config, tokenizer = load_model(path, quantize=quantize)
        # no prefix cache: a repeated prompt would be served from it, not prefilled again
        ours = Engine(model, config, tokenizer, serving=ServingOptions(prefix_cache=0.0))

        def run(prompt, new_tokens):
            return ours.generate([prompt], SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))[0].token_ids

        return run, config.vocab_size
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    hf.eval()

    def run_hf(prompt, new_tokens):
        with torch.no_grad():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              do_sample=False, pad_token_id=0)
        return out[0, len(prompt):].tolist()

    return run_hf, hf.config.vocab_size


def measure(engine: str, path: Path, contexts: list[int], new_tokens: int, threads: int,
            quantize: str | None = None, repeats: int = 3) -> dict:
    """Runs in the child process: prefill and decode tokens/s for each context length."""
    run, vocab = load(engine, path, threads, quantize, max(contexts) + new_tokens + 16)
    generator = random.Random(0)
    run([generator.randrange(vocab) for _ in range(16)], 4)  # warm-up
    rows = {}
    for context in contexts:
        prompt = [generator.randrange(1000, vocab - 1000) for _ in range(context)]
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


def kv_cache_mib(path: Path, tokens: int) -> float:
    """Our float32 KV cache for `tokens` positions (K and V, every layer)."""
    from model_core.config import ModelConfig
    from model_core.gguf import gguf_config, read_gguf_metadata

    config = ModelConfig.from_dict(gguf_config(read_gguf_metadata(path), []))
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4
    return per_token * tokens / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--contexts", default="128,2048")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quantize", default=None, help="our engine's quantize mode (default: gguf)")
    parser.add_argument("--child", nargs=2, metavar=("ENGINE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    if args.child:
        print(json.dumps(measure(args.child[0], Path(args.child[1]), contexts, args.new_tokens, args.threads,
                                 args.quantize)))
        return 0

    engines = args.engines.split(",")
    print(f"2 shared cores: ratios are what counts (same run). threads={args.threads}, quantize={args.quantize or 'gguf'}")
    print(f"{'model':<28} {'ctx':>6} {'engine':<13} {'prefill tok/s':>14} {'decode tok/s':>13} {'peak RSS MiB':>13}")
    for name in args.models.split(","):
        path = model_location(name)
        results = {}
        for engine in engines:
            python = str(LLAMACPP_PYTHON) if engine == "llama.cpp" else sys.executable
            if engine == "llama.cpp" and not LLAMACPP_PYTHON.exists():
                print(f"skipping llama.cpp: run bash bench/setup_llamacpp.sh first ({LLAMACPP_PYTHON} missing)")
                continue
            command = [python, __file__, "--child", engine, str(path), "--contexts", args.contexts,
                       "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
            if args.quantize:
                command += ["--quantize", args.quantize]
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
            child = subprocess.run(command, capture_output=True, text=True, env=env)
            if child.returncode != 0:
                print(f"{engine} failed on {name}: {child.stderr.strip().splitlines()[-1:]}")
                continue
            results[engine] = json.loads(child.stdout.strip().splitlines()[-1])
        for context in contexts:
            key = str(context)
            for engine, result in results.items():
                row = result["rows"][key]
                print(f"{name:<28} {context:>6} {engine:<13} {row['prefill_tok_s']:>14.1f} "
                      f"{row['decode_tok_s']:>13.2f} {result['peak_rss_mib']:>13.0f}")
            if "ours" in results and "llama.cpp" in results:
                ours, anchor = results["ours"]["rows"][key], results["llama.cpp"]["rows"][key]
                print(f"{name:<28} {context:>6} {'ours/llama':<13} "
                      f"{ours['prefill_tok_s'] / anchor['prefill_tok_s']:>13.2f}x "
                      f"{ours['decode_tok_s'] / anchor['decode_tok_s']:>12.2f}x "
                      f"{results['ours']['peak_rss_mib'] / results['llama.cpp']['peak_rss_mib']:>12.2f}x")
        if "ours" in results:
            size = path.stat().st_size / 2**20
            budget = 1.5 * size + kv_cache_mib(path, max(contexts) + args.new_tokens)
            print(f"{name}: GGUF {size:.0f} MiB; budget 1.5x file + KV cache = {budget:.0f} MiB; "
                  f"ours peak {results['ours']['peak_rss_mib']:.0f} MiB ({results['ours']['peak_rss_mib'] / budget:.2f}x budget)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
