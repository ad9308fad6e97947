"""Needle in a haystack on the offline Qwen2 (Qwen2.5-Coder-0.5B-Instruct, trained at 32,768).

One fact, "The secret code of the blue door is 4711." (the code varies per trial), is put at a
depth of 10%…90% into real text that every machine here has (the license texts in
/usr/share/common-licenses and pydoc renderings of standard-library modules made at run time),
cut into paragraphs, repeated and shuffled with a seed. The question comes last, inside the chat
template; the answer is scored by exact match of its first number with the code. Methods: plain
RoPE (past 32K through the `window` option), static YaRN (factor 4), and Dual Chunk Attention with
the sizes ChunkLlama's rule gives for the trained length (24,576 / 2,048) and with the passkey
sweep's best sizes scaled to 32K (3/4 and 3/16 of it: 24,576 / 6,144, docs/passkey.md), each with
and without its temperature. Results and findings: docs/needle.md.

    python -m bench.needle speed --lengths 8192 16384 32768   # prefill tok/s, peak RSS (fresh process each)
    python -m bench.needle run --lengths 8192 16384 --methods rope dca --trials 1
    python -m bench.needle report                               # table + heat maps (docs/img/)

`run` appends one JSON line per trial to --out and skips trials already there, so it can be
stopped and rerun. Trials of one (length, repetition) share their haystack and run deepest needle
first, so the engine's prefix cache reuses the haystack before the needle. Every method sees the
same prompts. Departure from NeedleBench: one needle, one fact type, greedy decoding.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import pydoc
import random
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LICENSES = Path("/usr/share/common-licenses")
PYDOC_MODULES = (
    "argparse", "collections", "contextlib", "csv", "dataclasses", "datetime", "decimal", "enum",
    "fractions", "functools", "heapq", "io", "itertools", "json", "logging", "pathlib", "queue",
    "random", "re", "shutil", "statistics", "string", "subprocess", "tempfile", "textwrap",
    "threading", "typing", "unittest", "urllib.parse", "zipfile",
)
NEEDLE = "The secret code of the blue door is {code}."
QUESTION = "What is the secret code of the blue door? Answer with the code only."
FORBIDDEN = re.compile(r"secret|blue door", re.IGNORECASE)  # nothing else may answer the question
MAX_PARAGRAPH_CHARS = 1200  # longer paragraphs are split at lines: depth is placed to a paragraph
TRAINED = 32768
LENGTHS = (8192, 16384, 32768, 49152, 65536)
DEPTHS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
MAX_NEW_TOKENS = 12
WINDOW = 131072
DEFAULT_OUT = ROOT / "docs" / "needle_results.jsonl"
DEFAULT_IMG = ROOT / "docs" / "img"
# name -> (long_context mode, options); the window lets every method read the longest length.
METHODS = {
    "rope": ("none", {}),
    "yarn": ("yarn", {"factor": 4.0, "original_max_position_embeddings": TRAINED}),
    "dca": ("dca", {"chunk_size": 24576, "local_size": 2048, "original_max_position_embeddings": TRAINED}),
    "dca_notemp": ("dca", {"chunk_size": 24576, "local_size": 2048, "original_max_position_embeddings": 0}),
    "dca_pk": ("dca", {"chunk_size": 24576, "local_size": 6144, "original_max_position_embeddings": TRAINED}),
    "dca_pk_notemp": ("dca", {"chunk_size": 24576, "local_size": 6144, "original_max_position_embeddings": 0}),
    # The 64K `dca` case scaled down 4x to 16K (cause analysis, docs/needle.md): the same number of
    # chunks per prompt (2.7), the same local share, the temperature switching on past 8K instead
    # of 32K (it reaches the same 1.069), all inside the trained length, at a sixteenth of the cost.
    "dca_s4": ("dca", {"chunk_size": 6144, "local_size": 512, "original_max_position_embeddings": 8192}),
    "dca_s4_notemp": ("dca", {"chunk_size": 6144, "local_size": 512, "original_max_position_embeddings": 0}),
}
# Up to the trained length the temperature is 1 at every position, so these equal their sibling.
SAME_WITHIN_TRAINED = {"dca_notemp": "dca", "dca_pk_notemp": "dca_pk"}


# ---------------------------------------------------------------- the haystack
def corpus_paragraphs() -> list[str]:
    """Paragraphs of the license texts and of pydoc's plain-text pages, none mentioning the needle."""
    texts = [path.read_text(errors="replace") for path in sorted(LICENSES.glob("*")) if path.is_file()]
    texts += [pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext) for name in PYDOC_MODULES]
    paragraphs = []
    for text in texts:
        for block in re.split(r"\n\s*\n", text):
            paragraphs += _split_long("\n".join(line.rstrip() for line in block.strip("\n").splitlines()))
    return [p for p in paragraphs if len(p.strip()) >= 20 and not FORBIDDEN.search(p)]


def _split_long(paragraph: str) -> list[str]:
    pieces, current = [], ""
    for line in paragraph.splitlines():
        if current and len(current) + len(line) + 1 > MAX_PARAGRAPH_CHARS:
            pieces.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line[:MAX_PARAGRAPH_CHARS]
    return pieces + ([current] if current else [])


class Haystack:
    """The corpus with its token counts (tokenized once), from which seeded haystacks are drawn."""

    def __init__(self, tokenizer, paragraphs: list[str] | None = None):
        self.tokenizer = tokenizer
        self.paragraphs = paragraphs if paragraphs is not None else corpus_paragraphs()
        self.counts = [len(tokenizer.encode(p + "\n\n")) for p in self.paragraphs]

    def draw(self, rng: random.Random, budget: int) -> list[int]:
        """Paragraph indices, shuffled and repeated (reshuffled each pass), up to `budget` tokens."""
        chosen, total, order = [], 0, []
        while True:
            if not order:
                order = list(range(len(self.paragraphs)))
                rng.shuffle(order)
            index = order.pop()
            if total + self.counts[index] > budget:
                return chosen
            chosen.append(index)
            total += self.counts[index]


@dataclass(frozen=True)
class Trial:
    method: str
    length: int  # prompt tokens + MAX_NEW_TOKENS stay within it
    depth: float  # wanted needle position, as a fraction of the haystack's tokens
    rep: int
    seed: int = 0

    @property
    def key(self) -> tuple:
        return (self.method, self.length, self.depth, self.rep, self.seed)


@dataclass
class NeedlePrompt:
    ids: list[int]
    code: str
    needle_token: int  # index of the needle's first token in ids
    haystack_start: int  # index of the haystack's first token
    haystack_tokens: int  # tokens between the haystack's start and the question

    @property
    def depth(self) -> float:
        return (self.needle_token - self.haystack_start) / self.haystack_tokens


def needle_code(trial: Trial) -> str:
    return str(random.Random(f"code:{trial.seed}:{trial.length}:{trial.depth}:{trial.rep}").randint(1000, 9999))


def render(tokenizer, haystack_text: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": f"{haystack_text}\n\n{QUESTION}"}])


def build_prompt(haystack: Haystack, trial: Trial, max_new_tokens: int = MAX_NEW_TOKENS) -> NeedlePrompt:
    """The trial's prompt: its (length, rep) haystack with the needle at the paragraph boundary
    nearest to `depth`, the question after it, all in the chat template, at most length - max_new tokens."""
    tok = haystack.tokenizer
    code = needle_code(trial)
    needle = NEEDLE.format(code=code)
    limit = trial.length - max_new_tokens
    overhead = len(tok.encode(render(tok, needle)))
    rng = random.Random(f"haystack:{trial.seed}:{trial.length}:{trial.rep}")
    chosen = haystack.draw(rng, limit - overhead - 1)  # 1: the join between needle and haystack
    while True:
        before = [0]
        for index in chosen:
            before.append(before[-1] + haystack.counts[index])
        at = min(range(len(before)), key=lambda i: abs(before[i] - trial.depth * before[-1]))
        parts = [haystack.paragraphs[i] for i in chosen]
        text = render(tok, "\n\n".join(parts[:at] + [needle] + parts[at:]))
        ids = tok.encode(text)
        if len(ids) <= limit or not chosen:
            break
        chosen = chosen[:-1]  # tokens merged differently across paragraph joins: drop one
    start_char = text.index(parts[0] if parts else needle)
    return NeedlePrompt(
        ids=ids, code=code,
        needle_token=len(tok.encode(text[: text.index(needle)])),
        haystack_start=len(tok.encode(text[:start_char])),
        haystack_tokens=len(tok.encode(text[: text.rindex(QUESTION)].rstrip("\n"))) - len(tok.encode(text[:start_char])),
    )


def score(answer: str, code: str) -> bool:
    """Exact match: the answer's first whole number is the code ("4711." yes, "4712" or "47110" no)."""
    numbers = re.findall(r"\d+", answer)
    return bool(numbers) and numbers[0] == code


# ---------------------------------------------------------------- running trials
def plan(methods, lengths, depths, trials: int, seed: int) -> list[Trial]:
    """Every trial, in run order: method, length, rep, deepest needle first (prefix-cache reuse).
    The *_notemp methods only past the trained length (within it they equal their sibling)."""
    out = []
    for method in methods:
        for length in lengths:
            if method in SAME_WITHIN_TRAINED and length <= TRAINED:
                continue
            for rep in range(trials):
                out += [Trial(method, length, depth, rep, seed) for depth in sorted(depths, reverse=True)]
    return out


def work(length: int) -> float:
    """Prefill cost in units of linear-layer tokens: attention adds ~L/16,700 per token on this
    model (86K·L FLOPs against 0.72 GFLOPs), so a trial costs about L·(1 + L/33,400)."""
    return length * (1 + length / 33400)


def done_keys(path: Path) -> set[tuple]:
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            keys.add((r["method"], r["length"], r["depth"], r["rep"], r["seed"]))
    return keys


def load_method(method: str, args) -> object:
    from model_core import load_engine

    mode, options = METHODS[method]
    extra = {"quantize": args.quantize} if args.quantize else {}
    return load_engine(args.model, dtype=args.dtype, long_context=mode,
                       long_context_options={**options, "window": max(WINDOW, max(args.lengths))},
                       prefill_chunk=args.prefill_chunk, kv_budget_tokens=2 * max(args.lengths), **extra)


def run_trials(todo: list[Trial], engine_for, haystack_for, out: Path, progress=True,
               weights: str = "") -> list[dict]:
    """Run `todo` (in order) and append one JSON line per trial to `out`; returns the records.
    `weights` (dtype / quantize mode) is written into every record."""
    from tqdm import tqdm

    from model_core import SamplingParams

    params = SamplingParams(max_new_tokens=MAX_NEW_TOKENS)
    out.parent.mkdir(parents=True, exist_ok=True)
    records, engine, loaded = [], None, None
    bar = tqdm(total=round(sum(work(t.length) for t in todo) / 1000), unit="kwork", disable=not progress,
               desc="needle", dynamic_ncols=True)
    for trial in todo:
        if trial.method != loaded:
            engine = None  # free the previous method's model before loading the next
            gc.collect()
            engine, loaded = engine_for(trial.method), trial.method
        prompt = build_prompt(haystack_for(engine), trial)
        reset_peak_rss()
        started = time.perf_counter()
        gen = engine.generate([prompt.ids], params)[0]
        record = {**asdict(trial), "code": prompt.code, "prompt_tokens": len(prompt.ids),
                  "needle_token": prompt.needle_token, "depth_actual": round(prompt.depth, 4),
                  "answer": gen.text, "correct": score(gen.text, prompt.code),
                  "seconds": round(time.perf_counter() - started, 2),
                  "cached_tokens": getattr(gen, "cached_tokens", 0),
                  "peak_rss_mib": rss_mib("VmHWM"), "weights": weights,
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        records.append(record)
        bar.set_postfix_str(f"{trial.method} {trial.length // 1024}K d{trial.depth:.1f} "
                            f"{'ok' if record['correct'] else 'miss'} {record['seconds']:.0f}s")
        bar.update(round(work(trial.length) / 1000))
    bar.close()
    return records


def cmd_run(args) -> None:
    todo = [t for t in plan(args.methods, args.lengths, args.depths, args.trials, args.seed)
            if t.key not in done_keys(args.out)]
    print(f"{len(todo)} trials to run (done trials in {args.out} are skipped)", flush=True)
    haystacks = {}

    def haystack_for(engine):
        if "h" not in haystacks:
            haystacks["h"] = Haystack(engine.tokenizer)
        return haystacks["h"]

    run_trials(todo, lambda method: load_method(method, args), haystack_for, args.out,
               weights=f"{args.dtype}/{args.quantize or 'gguf'}")
    print_table(read_results(args.out))


# ---------------------------------------------------------------- speed and memory per length
def cmd_speed(args) -> None:
    """Each length in a fresh process (its own peak RSS): load, then one timed prefill (1 new token)."""
    rows = []
    for length in args.lengths:
        command = [sys.executable, "-m", "bench.needle", "speed-one", "--length", str(length),
                   "--dtype", args.dtype, "--method", args.method, "--prefill-chunk", str(args.prefill_chunk)]
        if args.quantize:
            command += ["--quantize", args.quantize]
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        if not lines:
            sys.exit(f"speed-one {length}: exit {result.returncode}\n{result.stderr[-2000:]}")
        rows.append(json.loads(lines[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| tokens | prefill s | tok/s | CPU s | RSS after load MiB | peak RSS in prefill MiB |"
          "\n|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['tokens']:,} | {r['prefill_s']:.1f} | {r['tok_s']:.1f} | {r['cpu_s']:.1f} | "
              f"{r['load_rss_mib']:,} | {r['peak_rss_mib']:,} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


def cmd_speed_one(args) -> None:
    from model_core import SamplingParams

    args.lengths, args.model = [args.length], None
    engine = load_method(args.method, args)
    load_peak, load_rss = rss_mib("VmHWM"), rss_mib("VmRSS")
    reset_peak_rss()
    prompt = build_prompt(Haystack(engine.tokenizer), Trial(args.method, args.length, 0.5, 0))
    wall, cpu = time.perf_counter(), time.process_time()
    engine.generate([prompt.ids], SamplingParams(max_new_tokens=1))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"tokens": len(prompt.ids), "method": args.method, "dtype": args.dtype,
                      "quantize": args.quantize, "prefill_s": round(wall, 2), "cpu_s": round(cpu, 2),
                      "tok_s": round(len(prompt.ids) / wall, 1), "load_peak_rss_mib": load_peak,
                      "load_rss_mib": load_rss, "peak_rss_mib": rss_mib("VmHWM")}), flush=True)
    os._exit(0)  # skip interpreter teardown (a torch thread once aborted it after the numbers were out)


def reset_peak_rss() -> None:
    """Restart this process's RSS high-water mark (VmHWM), so the next peak is the next step's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def rss_mib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since start or since the last clear_refs) of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return 0


# ---------------------------------------------------------------- the report
def read_results(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a binomial proportion k / n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def cells(records: list[dict], *keys: str) -> dict[tuple, list[bool]]:
    out: dict[tuple, list[bool]] = {}
    for r in records:
        out.setdefault(tuple(r[k] for k in keys), []).append(r["correct"])
    return out


def table(records: list[dict]) -> str:
    """Markdown: accuracy by length per method, k/n and the Wilson 95% interval."""
    by_cell = cells(records, "method", "length")
    lengths = sorted({r["length"] for r in records})
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    lines = ["| method | " + " | ".join(f"{n // 1024}K" for n in lengths) + " |",
             "|---|" + "---:|" * len(lengths)]
    for method in methods:
        row = []
        for length in lengths:
            hits = by_cell.get((method, length))
            if not hits:
                same = SAME_WITHIN_TRAINED.get(method)
                row.append(f"= {same}" if same and length <= TRAINED else "–")
                continue
            lo, hi = wilson(sum(hits), len(hits))
            row.append(f"{sum(hits) / len(hits):.2f} ({sum(hits)}/{len(hits)}; {lo:.2f}–{hi:.2f})")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def agreement(records: list[dict]) -> str:
    """Within the trained length: on the same needles, how often each method answers as plain RoPE."""
    rope = {(r["length"], r["depth"], r["rep"], r["seed"]): r for r in records if r["method"] == "rope"}
    lines = ["| method | length | same needles | same score | same answer text |", "|---|---:|---:|---:|---:|"]
    for method in [m for m in METHODS if m != "rope"]:
        for length in sorted({r["length"] for r in records if r["length"] <= TRAINED}):
            pairs = [(r, rope[key]) for r in records if r["method"] == method and r["length"] == length
                     and (key := (r["length"], r["depth"], r["rep"], r["seed"])) in rope]
            if pairs:
                lines.append(f"| {method} | {length // 1024}K | {len(pairs)} | "
                             f"{sum(a['correct'] == b['correct'] for a, b in pairs)} | "
                             f"{sum(a['answer'] == b['answer'] for a, b in pairs)} |")
    return "\n".join(lines)


def timing(records: list[dict]) -> str:
    """Seconds per trial and peak RSS by length and method, from the trials themselves."""
    lines = ["| method | length | weights | trials | mean s / trial | prompt tok/s | cached tokens (mean) | peak RSS MiB |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["length"], r.get("weights", "")), []).append(r)
    for (method, length, weights), rs in sorted(groups.items(),
                                                key=lambda kv: (list(METHODS).index(kv[0][0]), kv[0][1:])):
        seconds = sum(r["seconds"] for r in rs) / len(rs)
        new_tokens = sum(r["prompt_tokens"] - r["cached_tokens"] for r in rs) / len(rs)
        lines.append(f"| {method} | {length // 1024}K | {weights} | {len(rs)} | {seconds:.0f} | {new_tokens / seconds:.0f} | "
                     f"{sum(r['cached_tokens'] for r in rs) / len(rs):,.0f} | {max(r['peak_rss_mib'] for r in rs):,} |")
    return "\n".join(lines)


def print_table(records: list[dict]) -> None:
    print("\nAccuracy (exact match; k/n; Wilson 95% interval):\n" + table(records))
    print("\nAgreement with plain RoPE within the trained length:\n" + agreement(records))
    print("\nTime and memory per trial:\n" + timing(records))


def heat_maps(records: list[dict], folder: Path) -> list[Path]:
    """Accuracy by needle depth (rows) and length (columns), k/n in each cell: one PNG per method
    and needle_all.png with every method side by side (the one the README shows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    by_cell = cells(records, "method", "depth", "length")
    lengths = sorted({r["length"] for r in records})
    depths = sorted({r["depth"] for r in records})
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    size = (1.1 * len(lengths) + 1.2, 0.45 * len(depths) + 1.5)

    def draw(ax, method):
        grid = [[float("nan")] * len(lengths) for _ in depths]
        for i, depth in enumerate(depths):
            for j, length in enumerate(lengths):
                hits = by_cell.get((method, depth, length))
                if hits:
                    grid[i][j] = sum(hits) / len(hits)
                    ax.text(j, i, f"{sum(hits)}/{len(hits)}", ha="center", va="center", fontsize=8)
        image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" for n in lengths])
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("needle depth")
        ax.set_title(method)
        return image

    paths = []
    for method in methods:
        fig, ax = plt.subplots(figsize=(size[0] + 0.8, size[1]))
        fig.colorbar(draw(ax, method), ax=ax, label="exact match")
        fig.tight_layout()
        paths.append(folder / f"needle_{method}.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    columns = min(3, len(methods)) or 1
    rows = -(-len(methods) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(size[0] * columns + 1, size[1] * rows + 0.6),
                             squeeze=False, constrained_layout=True)
    for ax, method in zip(axes.flat, methods, strict=False):
        image = draw(ax, method)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    if methods:
        fig.colorbar(image, ax=axes.ravel().tolist(), label="exact match", shrink=0.8)
    fig.suptitle("Needle in a haystack, Qwen2.5-Coder-0.5B (trained at 32K): correct / trials per cell")
    paths.append(folder / "needle_all.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def cmd_report(args) -> None:
    records = read_results(args.out)
    print_table(records)
    for path in heat_maps(records, args.img):
        print(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dtype", default="bfloat16")
    common.add_argument("--quantize", default=None, help="load_engine's quantize= (once available)")
    common.add_argument("--prefill-chunk", type=int, default=2048)
    run = sub.add_parser("run", parents=[common])
    run.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    run.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    run.add_argument("--depths", nargs="+", type=float, default=list(DEPTHS))
    run.add_argument("--trials", type=int, default=1, help="repetitions per (method, length, depth) cell")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--model", default=None)
    run.add_argument("--out", type=Path, default=DEFAULT_OUT)
    speed = sub.add_parser("speed", parents=[common])
    speed.add_argument("--lengths", nargs="+", type=int, default=list(LENGTHS))
    speed.add_argument("--method", default="rope", choices=list(METHODS))
    speed.add_argument("--json", default=None)
    one = sub.add_parser("speed-one", parents=[common])
    one.add_argument("--length", type=int, required=True)
    one.add_argument("--method", default="rope", choices=list(METHODS))
    report = sub.add_parser("report")
    report.add_argument("--out", type=Path, default=DEFAULT_OUT)
    report.add_argument("--img", type=Path, default=DEFAULT_IMG)
    args = parser.parse_args(argv)
    {"run": cmd_run, "speed": cmd_speed, "speed-one": cmd_speed_one, "report": cmd_report}[args.command](args)


if __name__ == "__main__":
    main()
