"""The engine loop as its callers see it: many threads at once, a small KV budget, cancels, stats.

Every batched or preempted answer must equal the same request run alone (greedy, float32).
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from model_core import Engine, KVBudgetError, SamplingParams
from model_core.engine import RuntimeOptions, ServingOptions
from model_core.loading import load_model


def engine_for(path, prefill_chunk=2048, **serving) -> Engine:
    model, config, tokenizer = load_model(path)
    return Engine(model, config, tokenizer, runtime=RuntimeOptions(prefill_chunk=prefill_chunk),
                  serving=ServingOptions(**serving))


def random_prompt(length: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def alone(path, prompt, params) -> list[int]:
    return engine_for(path).generate([prompt], params)[0].token_ids


def test_six_threads_at_once_each_get_what_they_get_alone(dense_checkpoint):
    path = dense_checkpoint[0]
    jobs = [(random_prompt(n, seed=n), SamplingParams(max_new_tokens=m, ignore_eos=True))
            for n, m in [(5, 20), (37, 6), (12, 14), (60, 3), (9, 25), (23, 11)]]
    want = [alone(path, p, params) for p, params in jobs]
    engine = engine_for(path, prefill_chunk=8)  # prefills span steps and share them with decodes
    got: dict[int, list[int]] = {}

    def call(i):
        got[i] = engine.generate([jobs[i][0]], jobs[i][1])[0].token_ids

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for i, tokens in enumerate(want):
        assert got.get(i) == tokens, f"request {i} ({len(jobs[i][0])}-token prompt) differs when batched"
    stats = engine.stats()
    assert stats.running == stats.waiting == 0 and stats.kv_blocks_used == 0


@pytest.mark.parametrize("mix", [True, False])
def test_a_small_kv_budget_queues_and_preempts_yet_every_answer_is_whole(dense_checkpoint, mix):
    path = dense_checkpoint[0]
    prompts = [random_prompt(20, seed=100 + i) for i in range(8)]
    params = SamplingParams(max_new_tokens=24, ignore_eos=True)
    engine = engine_for(path, kv_budget_tokens=96, block_size=16, prefix_cache=0,
                        mix_prefill_decode=mix)  # 6 blocks; each request needs 3 at its end
    results = engine.generate(prompts, params)
    for i, (prompt, result) in enumerate(zip(prompts, results, strict=True)):
        assert result.token_ids == alone(path, prompt, params), f"request {i} differs"
        assert result.finish_reason == "length" and len(result.token_ids) == 24
    stats = engine.stats()
    assert stats.preemptions > 0, "the budget was meant to force a preemption"
    assert stats.kv_blocks_total == 6 and stats.kv_blocks_used == 0


def test_a_request_that_could_never_fit_the_budget_is_refused_before_work(dense_checkpoint):
    engine = engine_for(dense_checkpoint[0], kv_budget_tokens=64, block_size=16)
    with pytest.raises(KVBudgetError, match="KV budget is 64 tokens"):
        engine.generate([random_prompt(40, 1)], SamplingParams(max_new_tokens=30))
    assert engine.generate([random_prompt(40, 1)], SamplingParams(max_new_tokens=25))[0].token_ids


def test_cancelling_one_request_frees_it_and_leaves_the_other_running(dense_checkpoint):
    path = dense_checkpoint[0]
    engine = engine_for(path, prefill_chunk=4)
    keep = (random_prompt(30, 5), SamplingParams(max_new_tokens=40, ignore_eos=True))
    stop_now = threading.Event()
    results = {}

    def cancelled():
        results["cancelled"] = engine.generate(
            [random_prompt(9, 6)], SamplingParams(max_new_tokens=200, ignore_eos=True),
            on_text=None, should_stop=stop_now.is_set)[0]

    def kept():
        results["kept"] = engine.generate([keep[0]], keep[1])[0]
        stop_now.set()

    threads = [threading.Thread(target=cancelled), threading.Thread(target=kept)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results["kept"].token_ids == alone(path, *keep)
    assert results["cancelled"].finish_reason == "cancelled"
    assert len(results["cancelled"].token_ids) < 200
    assert engine.stats().kv_blocks_used == 0


def test_stats_count_what_the_loop_did(dense_checkpoint):
    engine = engine_for(dense_checkpoint[0])
    out = engine.generate([random_prompt(10, 1), random_prompt(7, 2)],
                          SamplingParams(max_new_tokens=5, ignore_eos=True))
    stats = dataclasses.asdict(engine.stats())
    assert stats["prompt_tokens"] == 17
    assert stats["generated_tokens"] == sum(len(g.token_ids) for g in out) == 10
    assert stats["steps"] == 5  # one prefill step for both, then four decode steps for both
    assert stats["running"] == stats["waiting"] == stats["kv_blocks_used"] == 0


def test_streamed_text_and_callbacks_run_for_each_caller(dense_checkpoint):
    engine = engine_for(dense_checkpoint[0])
    pieces: dict[int, list[str]] = {0: [], 1: []}
    out = engine.generate([random_prompt(6, 1), random_prompt(11, 2)],
                          SamplingParams(max_new_tokens=6, ignore_eos=True),
                          on_text=lambda row, piece: pieces[row].append(piece))
    for row, generation in enumerate(out):
        assert "".join(pieces[row]) == generation.text, f"row {row}: stream differs from the result"
