"""bench/needle.py on a tiny case: the needle lands where asked, the question comes last, the
scoring is exact, and a rerun skips the trials already written (real Qwen2 tokenizer, tiny model)."""

from __future__ import annotations

import json

import pytest

from bench import needle
from bench.needle import Haystack, Trial, build_prompt, score

PARAGRAPHS = [f"Paragraph {i}: " + " ".join(["the quick brown fox jumps over the lazy dog"] * (1 + i % 4))
              for i in range(40)]


@pytest.fixture(scope="module")
def tokenizer():
    from model_core.gguf import gguf_tokenizer, read_gguf_metadata
    from model_core.paths import resolve_model

    return gguf_tokenizer(read_gguf_metadata(resolve_model(None)))


@pytest.fixture(scope="module")
def haystack(tokenizer):
    return Haystack(tokenizer, PARAGRAPHS)


@pytest.mark.parametrize("depth", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_the_needle_lands_at_the_asked_depth_within_one_paragraph(haystack, depth):
    prompt = build_prompt(haystack, Trial("rope", 400, depth, 0))
    longest = max(haystack.counts)
    wanted = depth * prompt.haystack_tokens
    got = prompt.needle_token - prompt.haystack_start
    assert abs(got - wanted) <= longest, f"needle at token {got} of the haystack, wanted {wanted:.0f} ± {longest}"
    text = haystack.tokenizer.decode(prompt.ids[prompt.needle_token:])
    assert text.startswith(f"The secret code of the blue door is {prompt.code}."), text[:60]


def test_the_prompt_fits_its_length_and_ends_with_the_question_in_the_chat_template(haystack):
    prompt = build_prompt(haystack, Trial("rope", 400, 0.5, 0))
    assert 400 - needle.MAX_NEW_TOKENS - max(haystack.counts) <= len(prompt.ids) <= 400 - needle.MAX_NEW_TOKENS
    text = haystack.tokenizer.decode(prompt.ids, skip_special_tokens=False)
    assert text.endswith(needle.QUESTION + "<|im_end|>\n<|im_start|>assistant\n"), text[-120:]
    assert text.count("secret code") == 2  # the needle and the question, nothing else


def test_trials_of_one_haystack_share_their_text_and_differ_in_code(haystack):
    deep, shallow = (build_prompt(haystack, Trial("rope", 400, d, 0)) for d in (0.9, 0.1))
    assert deep.ids[: shallow.needle_token] == shallow.ids[: shallow.needle_token]
    assert deep.code != shallow.code
    same = build_prompt(haystack, Trial("dca", 400, 0.9, 0))
    assert same.ids == deep.ids  # every method sees the same needle


def test_scoring_is_exact_match_of_the_first_number():
    assert score("4711", "4711")
    assert score("The secret code of the blue door is 4711.", "4711")
    assert not score("4712", "4711")
    assert not score("47110", "4711")
    assert not score("I don't know", "4711")
    assert not score("1234 or 4711", "4711")


def test_the_real_corpus_never_mentions_the_needle(tokenizer):
    paragraphs = needle.corpus_paragraphs()
    assert len(paragraphs) > 1000
    assert not any("secret" in p.lower() or "blue door" in p.lower() for p in paragraphs)
    assert any("GNU GENERAL PUBLIC LICENSE" in p for p in paragraphs)  # licenses
    assert any("json" in p and "dumps" in p for p in paragraphs)  # pydoc pages
    assert max(len(p) for p in paragraphs) <= needle.MAX_PARAGRAPH_CHARS


def test_a_rerun_skips_the_trials_already_written(tmp_path, haystack, tokenizer):
    import transformers

    from model_core import load_engine

    config = transformers.Qwen2Config(vocab_size=151936, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                      max_position_embeddings=512, tie_word_embeddings=True)
    transformers.Qwen2ForCausalLM(config).save_pretrained(tmp_path / "tiny")
    engine = load_engine(tmp_path / "tiny")
    engine.tokenizer = tokenizer
    out = tmp_path / "results.jsonl"
    todo = needle.plan(["rope"], [400], [0.2, 0.8], trials=1, seed=0)
    assert [t.depth for t in todo] == [0.8, 0.2]  # deepest first: the next reuses the cached prefix
    needle.run_trials(todo, lambda method: engine, lambda e: haystack, out, progress=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["depth"] for r in records] == [0.8, 0.2]
    assert all(r["prompt_tokens"] <= 400 - needle.MAX_NEW_TOKENS for r in records)
    assert records[1]["cached_tokens"] > 0, "the second needle did not reuse the shared haystack prefix"
    more = needle.plan(["rope"], [400], [0.2, 0.5, 0.8], trials=1, seed=0)
    assert [t.depth for t in more if t.key not in needle.done_keys(out)] == [0.5]


def test_the_report_has_counts_intervals_and_a_heat_map(tmp_path):
    records = [{"method": m, "length": 8192, "depth": d, "rep": 0, "seed": 0, "correct": ok,
                "answer": str(ok), "seconds": 1.0, "prompt_tokens": 8000, "cached_tokens": 0, "peak_rss_mib": 1}
               for m, ok in (("rope", True), ("dca", True)) for d in (0.1, 0.9)]
    assert "1.00 (2/2; 0.34–1.00)" in needle.table(records)
    assert "| dca | 8K | 2 | 2 | 2 |" in needle.agreement(records)
    paths = needle.heat_maps(records, tmp_path)
    assert [p.name for p in paths] == ["needle_rope.png", "needle_dca.png", "needle_all.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
