"""The passkey task: samples, the fixture's engine loader and the trial loop (no command line).

Shared by `bench/passkey.py` (training and the evaluation table) and
`tests/model_core/test_passkey.py`, so neither imports the other. The task itself is described in
bench/passkey.py and docs/passkey.md.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

BOS, EOS, PAD = 256, 257, 258
VOCAB_SIZE = 260
KEY_DIGITS = 5
QUESTION = " What is the pass key? The pass key is "
FILLER = [  # no digits, no "is ", no "key": the key sentence is the only match for the question
    "The grass grows green.",
    "The sky looks blue.",
    "The sun shines yellow.",
    "Here we go.",
    "There and back again.",
    "A cat sleeps on the warm mat.",
    "Rivers run down to the sea.",
    "The old man walks a dog.",
    "Snow falls in the quiet night.",
    "Bread gets baked at dawn.",
    "The wind moves the tall trees.",
    "Birds sing in the morning.",
    "A ship sails past the rocks.",
    "The clock ticks on the wall.",
    "Rain taps on the window.",
    "Stars shine over the hills.",
]
LENGTH_MULTIPLES = (1, 2, 4, 8)
MIN_SAMPLE = 96  # shortest sample used in training and in jittered evaluation
MODES = ("none", "yarn", "dca", "dca_no_temp")  # the last: DCA without its temperature
DEFAULT_FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "passkey"


@dataclass(frozen=True)
class Sample:
    prompt: list[int]  # <bos> + text up to "The pass key is "
    answer: list[int]  # the key's digits + <eos>
    key: str
    depth: float  # where the key sentence starts, as a fraction of the prompt


def key_sentence(key: str) -> str:
    return f" The pass key is {key}. Remember it."


def filler_text(rng: random.Random, n_chars: int) -> str:
    """Random filler sentences, cut to exactly n_chars characters."""
    parts, size = [], 0
    while size < n_chars:
        sentence = " " + rng.choice(FILLER)
        parts.append(sentence)
        size += len(sentence)
    return "".join(parts)[:n_chars]


def make_sample(rng: random.Random, length: int) -> Sample:
    """A passkey sample of exactly `length` tokens (prompt + answer), key at a random depth."""
    key = str(rng.randint(10 ** (KEY_DIGITS - 1), 10**KEY_DIGITS - 1))
    needle = key_sentence(key)
    n_filler = length - 1 - len(needle) - len(QUESTION) - (KEY_DIGITS + 1)
    if n_filler < 0:
        raise ValueError(f"length {length} is too short for a passkey sample")
    filler = filler_text(rng, n_filler)
    cut = rng.randint(0, n_filler)
    cut = max(0, filler.rfind(".", 0, cut) + 1)  # insert at a sentence boundary
    text = filler[:cut] + needle + filler[cut:] + QUESTION
    prompt = [BOS, *text.encode("ascii")]
    answer = [*key.encode("ascii"), EOS]
    return Sample(prompt, answer, key, depth=cut / max(1, len(text)))


def decode_digits(token_ids: list[int]) -> str:
    """The generated answer as text (bytes up to <eos>; specials dropped)."""
    out = []
    for t in token_ids:
        if t == EOS:
            break
        if t < 256:
            out.append(t)
    return bytes(out).decode("ascii", errors="replace")


def load_passkey_engine(
    checkpoint: Path,
    mode: str,
    length: int,
    train_len: int,
    chunk_size: int | None = None,
    local_size: int | None = None,
):
    """Our Engine for `mode` at prompt+answer `length`; the window is opened to `length`.

    DCA sizes default to chunk_size = train_len, local_size = chunk_size / 8.
    """
    from model_core import load_engine

    factor = max(1.0, length / train_len)
    chunk_size = chunk_size or train_len
    dca = {"chunk_size": chunk_size, "local_size": local_size or chunk_size // 8}
    long_context, options = {
        "none": ("none", None),
        "yarn": ("yarn", {"factor": factor, "original_max_position_embeddings": train_len}),
        "dca": ("dca", {**dca, "original_max_position_embeddings": train_len}),
        "dca_no_temp": ("dca", {**dca, "original_max_position_embeddings": 0}),
    }[mode]
    engine = load_engine(checkpoint, long_context=long_context, long_context_options=options)
    engine.window = max(engine.window, length + 1)  # plain RoPE past its window is the point
    return engine


def trial_samples(length: int, trials: int, seed: int, jitter: int = 0) -> list[Sample]:
    """The seeded samples of one cell; every mode gets the same ones.

    jitter > 0: each sample is shorter by a uniform 0..jitter tokens (never below MIN_SAMPLE), so
    the question's place relative to DCA's chunk boundaries varies between trials; with
    jitter 0 every trial has the same length, hence the same boundaries.
    """
    rng = random.Random(seed * 1_000_003 + length)
    cut = max(0, min(jitter, length - MIN_SAMPLE))
    return [make_sample(rng, length - (rng.randint(0, cut) if cut else 0)) for _ in range(trials)]


def run_trials(
    engine, length: int, trials: int, seed: int, jitter: int = 0, batch: int = 10
) -> list[bool]:
    """Greedy answers to `trials` seeded samples of `length` tokens; exact match per trial."""
    from model_core import SamplingParams

    samples = trial_samples(length, trials, seed, jitter)
    params = SamplingParams(max_new_tokens=KEY_DIGITS + 1, temperature=0.0, stop_token_ids=[EOS])
    hits = []
    for i in range(0, trials, batch):
        group = samples[i : i + batch]
        outs = engine.generate([s.prompt for s in group], params)
        hits += [decode_digits(o.token_ids) == s.key for o, s in zip(outs, group, strict=True)]
    return hits


def by_depth(samples: list[Sample], hits: list[bool], buckets: int = 4) -> list[float | None]:
    """Exact match per depth bucket of the key sentence (first quarter of the prompt, ...)."""
    out = []
    for b in range(buckets):
        inside = [h for s, h in zip(samples, hits, strict=True) if b <= s.depth * buckets < b + 1]
        out.append(round(sum(inside) / len(inside), 2) if inside else None)
    return out


def train_len_of(checkpoint: Path) -> int:
    return int(json.loads((checkpoint / "config.json").read_text())["max_position_embeddings"])
