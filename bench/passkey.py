"""Passkey retrieval: does Dual Chunk Attention let a model trained at 256 bytes read 8x further?

A tiny Qwen2 (822K parameters, byte-level vocabulary) is trained on CPU on synthetic passkey
retrieval at a short length, then asked for the key at 1x, 2x, 4x and 8x that length with plain
RoPE, static YaRN (factor = length / training length) and DCA with and without its temperature,
greedy decoding through our `Engine`. The trained checkpoint is a real Hugging Face checkpoint
(config.json + model.safetensors, written by transformers) kept in tests/fixtures/passkey/ as a
test fixture. Measured numbers and what they taught: docs/passkey.md.

    python -m bench.passkey train --out tests/fixtures/passkey --threads 1   # 20 min budget
    python -m bench.passkey eval --trials 100 [--chunk-size 192 --local-size 48] [--jitter 223]

A sample (exactly `length` tokens, prompt + answer):
    <bos> filler ... The pass key is 48213. Remember it. filler ... What is the pass key? The pass key is
    48213<eos>
Filler is random sentences without digits, "is " or "key"; the key sentence sits at a uniformly
random depth. Training puts the loss on the answer (5 digits and <eos>) plus 0.1 x the
language-model loss on the rest. Vocabulary: bytes 0..255, then <bos> 256, <eos> 257, <pad> 258,
one unused id (260 in all).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.passkey_task import (
    BOS,
    DEFAULT_FIXTURE,
    EOS,
    KEY_DIGITS,
    LENGTH_MULTIPLES,
    MIN_SAMPLE,
    MODES,
    PAD,
    VOCAB_SIZE,
    by_depth,
    load_passkey_engine,
    make_sample,
    run_trials,
    train_len_of,
    trial_samples,
)

# --- training -------------------------------------------------------------------------------


@dataclass
class TrainSettings:
    train_len: int = 256
    min_len: int = MIN_SAMPLE
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 384
    rope_theta: float = 10_000.0
    batch_size: int = 16
    curriculum: float = (
        0.3  # fraction of the budget over which the longest sample grows to train_len
    )
    lr: float = 2e-3
    warmup: int = 100
    lm_weight: float = 0.1
    minutes: float = 20.0
    max_steps: int = 0  # 0: stop at `minutes`; else a step budget (reproducible schedule)
    seed: int = 0
    threads: int = 2


def build_hf_model(s: TrainSettings):
    """A fresh transformers Qwen2ForCausalLM with the byte vocabulary and window = train_len."""
    import transformers

    config = transformers.Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads,
        max_position_embeddings=s.train_len,
        rope_theta=s.rope_theta,
        tie_word_embeddings=True,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        rms_norm_eps=1e-6,
    )
    return transformers.Qwen2ForCausalLM(config)


def training_batch(rng: random.Random, s: TrainSettings, progress: float) -> torch.Tensor:
    """(batch, length) token ids; one random length per batch so no padding is needed.

    Short samples first (cheaper steps, easier retrieval): the longest length grows linearly from
    min_len + 32 to train_len over the first `curriculum` fraction of the budget.
    """
    ramp = min(1.0, progress / s.curriculum) if s.curriculum > 0 else 1.0
    longest = round(s.min_len + 32 + ramp * (s.train_len - s.min_len - 32))
    length = rng.randint(s.min_len, longest)
    rows = []
    for _ in range(s.batch_size):
        sample = make_sample(rng, length)
        rows.append(sample.prompt + sample.answer)
    return torch.tensor(rows)


def batch_loss(model, ids: torch.Tensor, lm_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, answer loss): cross-entropy on the answer plus lm_weight x on the rest."""
    logits = model(input_ids=ids[:, :-1]).logits.float()  # (B, T-1, V)
    targets = ids[:, 1:]
    per_token = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    ).view(targets.shape)  # (B, T-1)
    n_answer = KEY_DIGITS + 1
    answer = per_token[:, -n_answer:].mean()
    rest = per_token[:, :-n_answer].mean()
    return answer + lm_weight * rest, answer


@torch.no_grad()
def answer_accuracy(model, rng: random.Random, length: int, n: int) -> float:
    """Teacher-forced exact match of all answer tokens at `length` (a quick training monitor)."""
    rows = [make_sample(rng, length) for _ in range(n)]
    ids = torch.tensor([r.prompt + r.answer for r in rows])
    logits = model(input_ids=ids[:, :-1]).logits
    n_answer = KEY_DIGITS + 1
    pred = logits[:, -n_answer:].argmax(-1)
    return float((pred == ids[:, -n_answer:]).all(-1).float().mean())


def train(s: TrainSettings, out: Path) -> dict:
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    rng = random.Random(s.seed)
    model = build_hf_model(s)
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"parameters: {n_params:,}; training length {s.train_len}; budget {s.minutes} min",
        flush=True,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, betas=(0.9, 0.95), weight_decay=0.01)
    budget = s.minutes * 60
    start = time.monotonic()
    step, log = 0, []
    while not s.max_steps or step < s.max_steps:
        elapsed = time.monotonic() - start
        if elapsed > budget:
            break
        # cosine decay over the step budget, else over wall-clock time; after a step warmup
        progress = step / s.max_steps if s.max_steps else elapsed / budget
        lr = (
            s.lr
            * min(1.0, (step + 1) / s.warmup)
            * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        )
        for group in opt.param_groups:
            group["lr"] = lr
        model.train()
        loss, answer = batch_loss(model, training_batch(rng, s, progress), s.lm_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 50 == 0:
            model.eval()
            acc = answer_accuracy(model, random.Random(10_000 + step), s.train_len, 32)
            entry = dict(
                step=step,
                minutes=round(elapsed / 60, 2),
                lr=round(lr, 6),
                answer_loss=round(answer.item(), 4),
                acc_1x=acc,
            )
            log.append(entry)
            print(json.dumps(entry), flush=True)
    minutes = (time.monotonic() - start) / 60
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    final_acc = answer_accuracy(model, random.Random(123), s.train_len, 128)
    meta = dict(
        settings=asdict(s),
        parameters=n_params,
        steps=step,
        train_minutes=round(minutes, 1),
        final_teacher_forced_acc_1x=final_acc,
        torch=torch.__version__,
        log=log[-5:],
    )
    (out / "passkey_training.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(
        f"saved {out} after {step} steps, {minutes:.1f} min; teacher-forced 1x acc {final_acc:.2f}"
    )
    return meta


# --- evaluation -----------------------------------------------------------------------------


def evaluate(
    checkpoint: Path,
    trials: int,
    seed: int,
    multiples=LENGTH_MULTIPLES,
    modes=MODES,
    threads: int = 2,
    chunk_size: int | None = None,
    local_size: int | None = None,
    jitter: int = 0,
) -> tuple[dict[str, dict[int, float]], dict[str, dict[int, list]]]:
    """(accuracy[mode][multiple], accuracy by depth quarter[mode][multiple])."""
    torch.set_num_threads(threads)
    train_len = train_len_of(checkpoint)
    table: dict[str, dict[int, float]] = {}
    depths: dict[str, dict[int, list]] = {}
    for mode in modes:
        table[mode], depths[mode] = {}, {}
        for m in multiples:
            length = m * train_len
            started = time.monotonic()
            try:
                engine = load_passkey_engine(
                    checkpoint, mode, length, train_len, chunk_size, local_size
                )
                hits = run_trials(engine, length, trials, seed, jitter)
                table[mode][m] = sum(hits) / len(hits)
                depths[mode][m] = by_depth(trial_samples(length, trials, seed, jitter), hits)
            except Exception as exc:  # report a mode that does not run rather than hide it
                print(f"{mode} at {m}x failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                table[mode][m] = float("nan")
            print(
                f"{mode:>11} {m}x ({length} tokens): {table[mode][m]:.2f} "
                f"by depth quarter {depths[mode].get(m)} [{time.monotonic() - started:.0f}s]",
                flush=True,
            )
    return table, depths


def markdown_table(table: dict[str, dict[int, float]], train_len: int, trials: int) -> str:
    multiples = sorted(next(iter(table.values())))
    names = {
        "none": "plain RoPE",
        "yarn": "YaRN (static, factor = L / train)",
        "dca": "DCA + temperature",
        "dca_no_temp": "DCA, no temperature",
    }
    head = "| method | " + " | ".join(f"{m}x ({m * train_len})" for m in multiples) + " |"
    rule = "|---|" + "---|" * len(multiples)
    rows = [
        f"| {names.get(mode, mode)} | "
        + " | ".join("n/a" if math.isnan(v) else f"{v:.2f}" for v in (row[m] for m in multiples))
        + " |"
        for mode, row in table.items()
    ]
    return (
        "\n".join([head, rule, *rows])
        + f"\n\nExact match of the 5 key digits, {trials} trials per cell.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.passkey", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the tiny passkey model and save a HF checkpoint")
    t.add_argument("--out", type=Path, default=DEFAULT_FIXTURE)
    defaults = TrainSettings()
    for name, value in asdict(defaults).items():
        t.add_argument("--" + name.replace("_", "-"), type=type(value), default=value)
    e = sub.add_parser("eval", help="passkey accuracy at 1x..8x for none / yarn / dca")
    e.add_argument("--checkpoint", type=Path, default=DEFAULT_FIXTURE)
    e.add_argument("--trials", type=int, default=100)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--multiples", type=int, nargs="+", default=list(LENGTH_MULTIPLES))
    e.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--chunk-size", type=int, help="DCA chunk_size (default: the training length)")
    e.add_argument("--local-size", type=int, help="DCA local_size (default: chunk_size / 8)")
    e.add_argument(
        "--jitter",
        type=int,
        default=0,
        help="shorten each trial by a random 0..JITTER tokens (varies where chunk boundaries fall)",
    )
    e.add_argument("--json", type=Path, help="write the table as JSON here")
    args = parser.parse_args(argv)
    if args.command == "train":
        settings = TrainSettings(**{k: getattr(args, k) for k in asdict(defaults)})
        train(settings, args.out)
        return 0
    table, depths = evaluate(
        args.checkpoint,
        args.trials,
        args.seed,
        args.multiples,
        args.modes,
        args.threads,
        args.chunk_size,
        args.local_size,
        args.jitter,
    )
    print(markdown_table(table, train_len_of(args.checkpoint), args.trials))
    if args.json:
        report = {"accuracy": table, "by_depth_quarter": depths, "trials": args.trials}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
