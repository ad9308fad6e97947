"""Prefix caching: a follow-up on the same document reuses its KV exactly, in every position mode.

The user's story: ask a question about a long prompt, then another question on the same prompt;
the second computes only its new tokens and answers exactly as without the cache.
"""

from __future__ import annotations

import pytest
import torch

from model_core import Engine, SamplingParams, load_engine
from model_core.blocks import KVBlocks
from model_core.cache import KVPool, SequenceKV, packed_context
from model_core.engine import ServingOptions
from model_core.model import forward_full

MODES = {  # name: (long_context, options) with positions well past the trained length
    "plain": ("none", {}),
    "yarn": ("yarn", {"factor": 4.0, "original_max_position_embeddings": 64}),
    "dca": ("dca", {"chunk_size": 48, "local_size": 8, "original_max_position_embeddings": 32}),
}


def random_prompt(length: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("mode", list(MODES))
def test_prefill_from_a_cached_prefix_equals_a_fresh_prefill_of_the_whole_prompt(dense_checkpoint, mode):
    long_context, options = MODES[mode]
    engine = load_engine(dense_checkpoint[0], long_context=long_context, long_context_options=options)
    runtime = engine.runtime
    prompt = torch.tensor([random_prompt(230, seed=7)])  # DCA: five chunks of 40
    cached, size = 128, 32
    pool = KVPool(engine.config, 10, size, torch.float32, "cpu")

    def forward(ids, start, table, logits_at=None):
        ctx = packed_context([(torch.arange(start, start + ids.shape[1]), SequenceKV(pool, table))],
                             backend=runtime.backend, mode=runtime.mode, mode_options=runtime.mode_options)
        if logits_at is not None:
            ctx.logits_at = logits_at
        with torch.inference_mode():
            return engine.model(ids, ctx)

    forward(prompt[:, :cached], 0, [0, 1, 2, 3])  # an earlier request left the prefix in blocks 0-3
    # The follow-up holds blocks 0-3 plus new, non-consecutive ones (the gathered read path).
    suffix = forward(prompt[:, cached:], cached, [0, 1, 2, 3, 7, 5, 9, 8],
                     logits_at=torch.arange(prompt.shape[1] - cached))
    with torch.inference_mode():
        fresh = forward_full(engine.model, prompt, backend=runtime.backend, mode=runtime.mode,
                             mode_options=runtime.mode_options)[0, cached:]
    err = (suffix - fresh).abs().max().item()
    assert err < 1e-4, f"{mode}: prefill from the cached prefix is off a fresh prefill by {err:.2e}"


@pytest.mark.parametrize("mode", list(MODES))
def test_follow_up_questions_reuse_the_document_and_answer_as_without_the_cache(dense_checkpoint, mode):
    long_context, options = MODES[mode]
    document = random_prompt(200, seed=1)
    questions = [random_prompt(9, seed=10 + i) for i in range(3)]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    engines = {cache: load_engine(dense_checkpoint[0], long_context=long_context,
                                  long_context_options=options, prefix_cache=cache)
               for cache in (True, False)}
    answers = {cache: [e.generate([document + q], params)[0] for q in questions]
               for cache, e in engines.items()}
    for i, (hot, cold) in enumerate(zip(answers[True], answers[False], strict=True)):
        assert hot.token_ids == cold.token_ids, f"{mode}: question {i} answers differently from the cache"
        assert cold.cached_tokens == 0
    block = engines[True].blocks.block_size
    assert answers[True][0].cached_tokens == 0
    assert [g.cached_tokens for g in answers[True][1:]] == [200 // block * block] * 2
    stats = engines[True].stats()
    assert stats.prompt_tokens == 3 * 209 and stats.cached_prompt_tokens == 2 * (200 // block * block)
    assert stats.kv_blocks_cached > 0 and stats.kv_blocks_used == 0


def test_an_agent_conversation_computes_only_each_steps_new_tokens(dense_checkpoint):
    engine = load_engine(dense_checkpoint[0])
    conversation = random_prompt(70, seed=3)
    for step in range(4):
        out = engine.generate([conversation], SamplingParams(max_new_tokens=10, ignore_eos=True))[0]
        if step:
            assert out.cached_tokens >= len(conversation) - 32 - 10, f"step {step} reused too little"
        conversation = conversation + out.token_ids + random_prompt(15, seed=step)


def test_a_block_matches_only_after_the_same_whole_prefix():
    blocks = KVBlocks(num_blocks=8, block_size=4)
    a, b = blocks.allocate(), blocks.allocate()
    first = blocks.register(a, b"", [1, 2, 3, 4])
    blocks.register(b, first, [5, 6, 7, 8])
    blocks.release([a, b])
    assert blocks.match([1, 2, 3, 4, 5, 6, 7, 8, 9], 2) == [a, b]
    assert blocks.match([0, 2, 3, 4, 5, 6, 7, 8, 9], 2) == []  # same second block, other prefix
    assert blocks.match([1, 2, 3, 4, 5, 6, 7, 0], 2) == [a]


def test_unreferenced_cached_blocks_are_evicted_oldest_first_and_within_their_share():
    blocks = KVBlocks(num_blocks=4, block_size=2, cache_share=0.5)  # at most 2 cached blocks
    held = []
    for i in range(3):
        block = blocks.allocate()
        blocks.register(block, b"", [i, i])
        held.append(block)
    blocks.release(held[:1])
    blocks.release(held[1:2])
    blocks.release(held[2:])  # a third cached block: the oldest (token 0) is evicted
    assert len(blocks.cached) == 2 and blocks.available() == 4
    assert blocks.match([0, 0, 9], 1) == [] and blocks.match([1, 1, 9], 1) == [held[1]]
    fresh = [blocks.allocate() for _ in range(3)]  # the free block, then the oldest cached one
    assert held[1] in fresh and blocks.match([1, 1, 9], 1) == [] and blocks.match([2, 2, 9], 1) == [held[2]]


def test_prefix_cache_off_keeps_nothing(dense_checkpoint):
    engine = load_engine(dense_checkpoint[0], prefix_cache=False)
    prompt = random_prompt(100, seed=2)
    engine.generate([prompt], SamplingParams(max_new_tokens=2))
    assert engine.generate([prompt], SamplingParams(max_new_tokens=2))[0].cached_tokens == 0
    assert engine.stats().kv_blocks_cached == 0
    assert isinstance(engine, Engine) and isinstance(engine.serving, ServingOptions)
