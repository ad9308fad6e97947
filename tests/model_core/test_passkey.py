"""The passkey fixture: a tiny byte-level Qwen2 trained at 256 tokens (bench/passkey.py).

A user loads the checkpoint through `load_engine`, asks for the pass key hidden in filler text and
reads the greedy answer. Plain RoPE must find it at the trained length and lose it at 4x; DCA with
its temperature must find it at 4x, and without the temperature must not.

Thresholds, from the 100-trial table in docs/passkey.md (seed 0): plain RoPE 1.00 at 1x and
0.00 at 4x; DCA 0.79 at 4x, 0.11 without the temperature. The trials here use another seed. With
30 trials the standard error at 0.79 is 0.074, so the 0.5 floor is about 4 standard errors below the
measured rate, and 5 above the no-temperature rate; a DCA that silently lost its temperature, its
position remap or its merge fails it. With chunk_size 192 and local_size 48 (the sizes that suit
this byte-level model) DCA measured 1.00 at 8x on two seeds; the 0.85 floor leaves room for a few
misses in 30 trials, no more.
"""

from __future__ import annotations

from pathlib import Path

from bench.passkey_task import load_passkey_engine, run_trials, train_len_of

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "passkey"
TRIALS = 30
SEED = 7


def accuracy(mode: str, multiple: int, **dca_sizes: int) -> float:
    train_len = train_len_of(FIXTURE)
    length = multiple * train_len
    engine = load_passkey_engine(FIXTURE, mode, length, train_len, **dca_sizes)
    hits = run_trials(engine, length, TRIALS, SEED)
    return sum(hits) / len(hits)


def test_fixture_is_a_small_hugging_face_checkpoint():
    files = {p.name: p.stat().st_size for p in FIXTURE.iterdir()}
    assert "config.json" in files and "model.safetensors" in files
    assert sum(files.values()) < 5_000_000, f"fixture is {sum(files.values())} bytes"
    assert train_len_of(FIXTURE) == 256


def test_plain_rope_reads_the_key_at_the_trained_length():
    acc = accuracy("none", 1)
    assert acc >= 0.9, f"plain RoPE at 1x (256 tokens): exact match {acc:.2f} over {TRIALS} trials"


def test_plain_rope_loses_the_key_at_four_times_the_trained_length():
    acc = accuracy("none", 4)
    assert acc <= 0.3, f"plain RoPE at 4x (1024 tokens): exact match {acc:.2f}, expected a collapse"


def test_dca_reads_the_key_at_four_times_the_trained_length():
    acc = accuracy("dca", 4)
    assert acc >= 0.5, f"DCA at 4x (1024 tokens): exact match {acc:.2f} over {TRIALS} trials"


def test_dca_without_its_temperature_loses_the_key_at_four_times():
    acc = accuracy("dca_no_temp", 4)
    assert acc <= 0.4, f"DCA without temperature at 4x: exact match {acc:.2f}, expected < 0.4"


def test_dca_with_sizes_for_a_byte_model_reads_the_key_at_eight_times():
    acc = accuracy("dca", 8, chunk_size=192, local_size=48)
    assert acc >= 0.85, (
        f"DCA 192/48 at 8x (2048 tokens): exact match {acc:.2f} over {TRIALS} trials"
    )
