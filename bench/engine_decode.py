"""One request's decode speed: the engine loop (paged KV, packed forward) against the static cache.

    python -m bench.engine_decode                       # offline default model, contexts 512, 4096
    python -m bench.engine_decode --model smollm2-135m-instruct --contexts 512 --new-tokens 32

The anchor is the reference path kept in model_core.engine (`prefill` + `decode_step` over a
static `KVCache`, the engine before the loop), measured in the same process and run, alternating
(anchor, loop, anchor, loop), best of the runs each. The anchor runs on a worker thread like the
loop does (on a loaded machine the main thread's OpenMP team measured up to 30x slower than a
worker thread's, which would flatter the loop). Decode speed is measured between the second
and the last decode step (the loop's steps are timed through its `should_stop` callback, which it
calls once per step). Greedy, end-of-sequence ignored, float32. The cores are shared: read the
ratio, not the absolute numbers.

`--mix` adds whether one forward for prefill chunks and decode tokens pays on CPU: four requests
decode while a long prompt arrives, once with `mix_prefill_decode` on and once off (prefill
steps then run without the decodes); wall time of the whole and the decoders' longest wait
between two tokens.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import torch

from model_core import SamplingParams, load_engine
from model_core.cache import KVCache
from model_core.engine import decode_step, prefill


def static_decode_s(engine, prompt: list[int], new_tokens: int) -> float:
    """Seconds per decode step of the static-cache reference path."""
    cache = KVCache(engine.config, 1, len(prompt) + new_tokens + 1, engine.dtype, engine.device)
    logits = prefill(engine.model, cache, 0, torch.tensor(prompt), engine.runtime)[None]
    stamps = []
    for step in range(new_tokens):
        stamps.append(time.perf_counter())
        token = logits.argmax(-1)
        logits = decode_step(engine.model, cache, token, torch.tensor([len(prompt) + step]), engine.runtime)
    stamps.append(time.perf_counter())
    return (stamps[-1] - stamps[1]) / (len(stamps) - 2)


def loop_decode_s(engine, prompt: list[int], new_tokens: int) -> float:
    """Seconds per decode step of the engine loop (steps timed by the should_stop callback)."""
    stamps: list[float] = []
    engine.generate([prompt], SamplingParams(max_new_tokens=new_tokens + 1, ignore_eos=True),
                    should_stop=lambda: stamps.append(time.perf_counter()) or False)
    return (stamps[-1] - stamps[1]) / (len(stamps) - 2)


def on_thread(fn, *args):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)))
    thread.start()
    thread.join()
    return out[0]


def mixed_arrival(engine, mix: bool, long_prompt: int, new_tokens: int) -> dict:
    """Four short requests decoding, a long prompt arriving with them; the loop mixes or not."""
    engine.scheduler.mix = mix
    gaps: list[float] = []

    def decoder(seed: int) -> None:
        last = [time.perf_counter()]

        def tick(_row, _piece):
            now = time.perf_counter()
            gaps.append(now - last[0])
            last[0] = now

        prompt = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(seed)).tolist()
        engine.generate([prompt], SamplingParams(max_new_tokens=new_tokens, ignore_eos=True), on_text=tick)

    start = time.perf_counter()
    threads = [threading.Thread(target=decoder, args=(i,)) for i in range(4)]
    long = torch.randint(0, 1000, (long_prompt,), generator=torch.Generator().manual_seed(99)).tolist()
    threads.append(threading.Thread(target=lambda: engine.generate([long], SamplingParams(max_new_tokens=4))))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"mix": mix, "wall_s": time.perf_counter() - start, "longest_gap_s": max(gaps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model name or path (default: the offline default)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mix", action="store_true", help="also compare mixed and separate prefill steps")
    parser.add_argument("--long-prompt", type=int, default=2048)
    args = parser.parse_args()
    engine = load_engine(args.model, prefix_cache=False)
    rows = []
    for context in args.contexts:
        prompt = torch.randint(0, engine.config.vocab_size, (context,),
                               generator=torch.Generator().manual_seed(context)).tolist()
        static, loop = [], []
        for _ in range(args.repeats):
            static.append(on_thread(static_decode_s, engine, prompt, args.new_tokens))
            loop.append(loop_decode_s(engine, prompt, args.new_tokens))
        row = {"context": context, "static_tok_s": 1 / min(static), "loop_tok_s": 1 / min(loop)}
        row["loop_over_static"] = row["loop_tok_s"] / row["static_tok_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("| context | static cache tok/s | engine loop tok/s | loop / static |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['context']} | {r['static_tok_s']:.1f} | {r['loop_tok_s']:.1f} | {r['loop_over_static']:.2f} |")
    if args.mix:
        engine.runtime.prefill_chunk = engine.scheduler.prefill_chunk = 512
        mixes = [mixed_arrival(engine, mix, args.long_prompt, args.new_tokens) for mix in (True, False)]
        print("\n| prefill and decode | wall (s) | decoders' longest gap (s) |\n|---|---:|---:|")
        for m in mixes:
            print(f"| {'one forward' if m['mix'] else 'separate steps'} | {m['wall_s']:.1f} | {m['longest_gap_s']:.2f} |")


if __name__ == "__main__":
    main()
