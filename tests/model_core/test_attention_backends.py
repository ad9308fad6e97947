"""Every attention backend against the eager reference, on every device present (CUDA in bf16).

On a CPU-only machine this checks sdpa and the CPU flash kernel in float32; where CUDA is present
(bench/gpu_check.sh) it adds sdpa and flash-attn in bf16 on the GPU.
"""

from __future__ import annotations

import pytest
import torch

from model_core.attention import ATTENTION, eager_attention, merge_partials
from model_core.cache import ForwardContext
from model_core.dca import DcaOptions, dca_attention
from tests.model_core.dca_oracle import dense_oracle, random_qkv, rope


def device_cases():
    cases = [("cpu", name, torch.float32, 1e-5) for name in ("sdpa", "cpu_flash")]
    if torch.cuda.is_available():
        cases += [
            ("cuda", name, torch.bfloat16, 2e-2) for name in ("sdpa", "flash") if name in ATTENTION
        ]
    return [pytest.param(*case, id=f"{case[0]}-{case[1]}") for case in cases]


CASES = {  # name: (queries, keys, causal, kv_lens)
    "causal square": (12, 12, True, None),
    "causal chunk at the end of a cache": (5, 19, True, None),
    "decode rows of different lengths": (1, 16, True, [16, 9, 1]),
    "prefill rows of different lengths": (4, 16, True, [16, 11, 4]),
    "non-causal": (6, 10, False, None),
    "non-causal with lengths": (3, 10, False, [10, 2, 7]),
}


def inputs(q_len: int, k_len: int, device: str, dtype, batch: int = 3, head_dim: int = 64):
    gen = torch.Generator().manual_seed(q_len * 100 + k_len)
    q = torch.randn(batch, 8, q_len, head_dim, generator=gen)
    k = torch.randn(batch, 2, k_len, head_dim, generator=gen)
    v = torch.randn(batch, 2, k_len, head_dim, generator=gen)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v)]


@pytest.mark.parametrize("device,backend,dtype,tol", device_cases())
@pytest.mark.parametrize("case", list(CASES))
def test_backend_matches_eager_with_and_without_lse(device, backend, dtype, tol, case):
    q_len, k_len, causal, lens = CASES[case]
    q, k, v = inputs(q_len, k_len, device, dtype)
    kv_lens = None if lens is None else torch.tensor(lens, device=device)
    want, want_lse = eager_attention(
        q.float(), k.float(), v.float(), causal=causal, kv_lens=kv_lens, need_lse=True
    )
    got, lse = ATTENTION[backend](q, k, v, causal=causal, kv_lens=kv_lens, need_lse=True)
    plain, no_lse = ATTENTION[backend](q, k, v, causal=causal, kv_lens=kv_lens)
    assert got.dtype == dtype and no_lse is None and lse.dtype == torch.float32
    err = (got.float() - want).abs().max().item()
    assert err < tol, f"{backend} on {device} ({case}): output off eager by {err:.2e}"
    assert (plain.float() - want).abs().max().item() < tol, (
        f"{backend} without LSE differs ({case})"
    )
    lse_err = (lse - want_lse).abs().max().item()
    assert lse_err < tol, f"{backend} on {device} ({case}): LSE off eager by {lse_err:.2e}"


@pytest.mark.parametrize("device,backend,dtype,tol", device_cases())
def test_query_with_no_key_has_zero_output_and_minus_infinite_lse(device, backend, dtype, tol):
    q, k, v = inputs(2, 8, device, dtype)
    out, lse = ATTENTION[backend](
        q, k, v, causal=False, kv_lens=torch.tensor([8, 0, 3], device=device), need_lse=True
    )
    assert torch.isneginf(lse[1]).all() and out[1].abs().max().item() == 0.0
    assert torch.isfinite(lse[[0, 2]]).all()


@pytest.mark.parametrize("device,backend,dtype,tol", device_cases())
def test_merging_two_halves_of_the_keys_equals_attending_to_all(device, backend, dtype, tol):
    q, k, v = inputs(4, 24, device, dtype)
    attend = ATTENTION[backend]
    whole, whole_lse = attend(q, k, v, causal=False, need_lse=True)
    merged, merged_lse = merge_partials(
        [
            attend(q, k[:, :, :10], v[:, :, :10], causal=False, need_lse=True),
            attend(q, k[:, :, 10:], v[:, :, 10:], causal=False, need_lse=True),
        ]
    )
    assert (merged.float() - whole.float()).abs().max().item() < tol
    assert (merged_lse - whole_lse).abs().max().item() < tol


@pytest.mark.parametrize("device,backend,dtype,tol", device_cases())
def test_dca_on_each_backend_matches_the_dense_oracle(device, backend, dtype, tol):
    opts = DcaOptions(chunk_size=24, local_size=8, original_max_position_embeddings=32)
    q, k, v = random_qkv(4 * opts.chunk_len + 5, seed=5, dtype=torch.float64)
    want = dense_oracle(q, k, v, opts, rope().inv_freq)
    positions = torch.arange(q.shape[2], device=device)[None]
    ctx = ForwardContext(
        positions=positions, backend=backend, mode="dca", mode_options=vars(opts).copy()
    )
    table = rope()
    table.inv_freq = table.inv_freq.to(device)
    got = dca_attention(*(t.to(device=device, dtype=dtype) for t in (q, k, v)), ctx, 0, table)
    err = (got.double().cpu() - want).abs().max().item()
    assert err < 5 * tol, f"DCA with {backend} on {device} is off the oracle by {err:.2e}"


@pytest.mark.parametrize("case", list(CASES))
def test_blocked_eager_fallback_matches_eager(case):
    """The LSE path sdpa takes on CUDA without flash-attn, run on CPU with tiny blocks."""
    from model_core.attention import blocked_eager_attention

    q_len, k_len, causal, lens = CASES[case]
    q, k, v = inputs(q_len, k_len, "cpu", torch.float32)
    kv_lens = None if lens is None else torch.tensor(lens)
    want, want_lse = eager_attention(q, k, v, causal=causal, kv_lens=kv_lens, need_lse=True)
    got, lse = blocked_eager_attention(q, k, v, causal=causal, kv_lens=kv_lens, block=2)
    assert (got - want).abs().max().item() < 1e-6
    assert torch.equal(torch.isneginf(lse), torch.isneginf(want_lse))
    assert (lse - want_lse).nan_to_num(0.0).abs().max().item() < 1e-5


@pytest.fixture
def fake_flash_attn(monkeypatch):
    """A flash_attn module with flash-attn 2's calling conventions (B, T, H, D), computed by eager.

    It checks our wrapper's layout, argument names and LSE handling on machines without CUDA;
    the real kernels are compared by the CUDA cases above (bench/gpu_check.sh).
    """
    import sys
    import types

    def to_heads(t):
        return t.transpose(1, 2)  # (B, T, H, D) -> (B, H, T, D)

    def flash_attn_func(q, k, v, softmax_scale=None, causal=False, return_attn_probs=False):
        out, lse = eager_attention(
            to_heads(q), to_heads(k), to_heads(v), causal=causal, scale=softmax_scale, need_lse=True
        )
        return (to_heads(out), lse, None) if return_attn_probs else to_heads(out)

    def flash_attn_with_kvcache(
        q,
        k_cache,
        v_cache,
        cache_seqlens=None,
        softmax_scale=None,
        causal=False,
        return_softmax_lse=False,
    ):
        assert cache_seqlens.dtype == torch.int32
        out, lse = eager_attention(
            to_heads(q),
            to_heads(k_cache),
            to_heads(v_cache),
            causal=causal,
            kv_lens=cache_seqlens.long(),
            scale=softmax_scale,
            need_lse=True,
        )
        return (to_heads(out), lse) if return_softmax_lse else to_heads(out)

    module = types.SimpleNamespace(
        flash_attn_func=flash_attn_func, flash_attn_with_kvcache=flash_attn_with_kvcache
    )
    monkeypatch.setitem(sys.modules, "flash_attn", module)


@pytest.mark.parametrize("case", list(CASES))
def test_flash_wrapper_converts_layouts_and_lse(fake_flash_attn, case):
    from model_core.attention import flash_attention

    q_len, k_len, causal, lens = CASES[case]
    q, k, v = inputs(q_len, k_len, "cpu", torch.bfloat16)
    kv_lens = None if lens is None else torch.tensor(lens)
    want, want_lse = eager_attention(
        q.float(), k.float(), v.float(), causal=causal, kv_lens=kv_lens, need_lse=True
    )
    got, lse = flash_attention(q, k, v, causal=causal, kv_lens=kv_lens, need_lse=True)
    assert got.shape == want.shape and got.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert (got.float() - want).abs().max().item() < 2e-2
    assert (lse - want_lse).nan_to_num(0.0).abs().max().item() < 2e-2


def test_dca_prefill_and_decode_through_the_flash_wrapper(fake_flash_attn, monkeypatch):
    from model_core.attention import flash_attention
    from model_core.cache import KVCache
    from model_core.config import ModelConfig

    monkeypatch.setitem(ATTENTION, "flash", flash_attention)
    opts = DcaOptions(chunk_size=12, local_size=4, original_max_position_embeddings=16)
    q, k, v = random_qkv(4 * opts.chunk_len + 3, seed=9, dtype=torch.float64)
    want = dense_oracle(q, k, v, opts, rope().inv_freq)
    config = ModelConfig(num_hidden_layers=1, num_key_value_heads=2, head_dim=8)
    cache = KVCache(config, 1, q.shape[2], torch.bfloat16, "cpu")
    prompt = q.shape[2] - 4
    q, k, v = (t.bfloat16() for t in (q, k, v))
    outs = []
    for start, stop in [(0, 13), (13, prompt)] + [(p, p + 1) for p in range(prompt, q.shape[2])]:
        ctx = ForwardContext(
            positions=torch.arange(start, stop)[None],
            cache=cache,
            backend="flash",
            mode="dca",
            mode_options=vars(opts).copy(),
        )
        outs.append(
            dca_attention(
                q[:, :, start:stop], k[:, :, start:stop], v[:, :, start:stop], ctx, 0, rope()
            )
        )
    err = (torch.cat(outs, dim=2).double() - want).abs().max().item()
    assert err < 5e-2, f"DCA through the flash wrapper is off the oracle by {err:.2e}"
