"""Quality of each quantized path against the float32 dequantized model on real text.

    python bench/quant_quality.py                                  # default model, all modes
    python bench/quant_quality.py --model smollm2-135m-instruct --modes gguf int4

The text: the license texts in /usr/share/common-licenses (Apache-2.0, GPL-3, ...), concatenated
and cut to --tokens tokens (2,000). One full-sequence forward per model (no cache); for every
position the next-token distribution of the quantized model is compared with float32's:
top-1 agreement (same argmax) and mean KL(float32 || quantized) in nats. Prints a Markdown table
and, with --json, one JSON object.

A full-sequence forward has many rows, so `GroupLinear` would take its prefill path (dequantize +
float32 GEMM). `--path decode` (the default) sends every row through the q8 kernel instead, with
its int8 activations: what each decoded token sees. `--path prefill` measures the GEMM path.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch

from model_core import load_engine
from model_core.model import forward_full
from model_core.quantize import GroupLinear

LICENSES = Path("/usr/share/common-licenses")
ORDER = ["Apache-2.0", "GPL-3", "LGPL-3", "MPL-2.0", "Artistic", "BSD", "GFDL-1.3", "CC0-1.0"]


def license_text() -> str:
    names = [n for n in ORDER if (LICENSES / n).is_file()]
    names += sorted(p.name for p in LICENSES.iterdir() if p.is_file() and p.name not in names)
    return "\n\n".join((LICENSES / n).read_text(errors="replace") for n in names)


def log_probs(engine, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return forward_full(engine.model, ids)[0].float().log_softmax(-1)


def compare(reference: torch.Tensor, logp: torch.Tensor) -> dict[str, float]:
    agree = (reference.argmax(-1) == logp.argmax(-1)).float().mean().item()
    kl = 0.0
    for start in range(0, reference.shape[0], 256):  # in slices: (T, V) float32 is large
        ref = reference[start:start + 256].float()
        kl += (ref.exp() * (ref - logp[start:start + 256])).sum().item()
    return {"top1": agree, "kl": kl / reference.shape[0]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="offline model name or GGUF path (default model)")
    parser.add_argument("--modes", nargs="+", default=["gguf", "int8", "int4", "bf16"])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--path", choices=["decode", "prefill"], default="decode",
                        help="decode: every row through the q8 kernel (int8 activations); prefill: GEMM")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.path == "decode":
        GroupLinear.kernel_rows = 1 << 30

    engine = load_engine(args.model, quantize="none")
    ids = torch.tensor([engine.tokenizer.encode(license_text())[: args.tokens]])
    reference = log_probs(engine, ids).half()  # kept in float16 to halve its memory
    del engine
    gc.collect()
    results = {"model": args.model or "default", "tokens": ids.shape[1], "path": args.path, "modes": {}}
    for mode in args.modes:
        start = time.perf_counter()
        engine = load_engine(args.model, quantize=mode)
        loaded = time.perf_counter() - start
        start = time.perf_counter()
        logp = log_probs(engine, ids)
        results["modes"][mode] = {**compare(reference, logp), "load_s": loaded,
                                  "forward_s": time.perf_counter() - start}
        del engine, logp
        gc.collect()
        print(f"{mode}: {results['modes'][mode]}", flush=True)
    print(f"\n{results['model']}, {results['tokens']} tokens of license text, {args.path} path, against float32:\n")
    print("| mode | top-1 agreement | mean KL (nats) |\n|---|---|---|")
    for mode, r in results["modes"].items():
        print(f"| {mode} | {r['top1']:.2%} | {r['kl']:.4f} |")
    if args.json:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
