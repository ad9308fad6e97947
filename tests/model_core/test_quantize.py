"""Weights kept quantized: each quantized linear multiplies as the weight it stands for, and a
quantized model's logits stay close to the float model's."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model_core import kernels, load_engine, quantize
from model_core.errors import CheckpointError
from model_core.model import forward_full
from model_core.quantize import (
    GEMV_ROWS,
    GGUFTensor,
    GroupLinear,
    Int4Linear,
    Int4x2Linear,
    Int8Linear,
    Q5Linear,
    Q8Linear,
    QuantizedEmbedding,
    QuantizedLinear,
    gemm_dtype,
)

needs_kernel = pytest.mark.skipif(not kernels.available(), reason="the q8 kernel is not built on this machine")

# where each type keeps its f16 scale fields: (byte offset, block size)
SCALE_FIELDS = {"Q4_0": ([0], 18), "Q4_1": ([0, 2], 20), "Q4_K": ([0, 2], 144),
                "Q5_0": ([0], 22), "Q8_0": ([0], 34), "Q6_K": ([208], 210)}
VALUES_PER_BLOCK = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q8_0": 32, "Q4_K": 256, "Q6_K": 256}


def random_blocks(type_name: str, rows: int, cols: int, seed: int = 0) -> GGUFTensor:
    """Random bytes are valid blocks once the f16 scale fields hold ordinary numbers."""
    rng = np.random.default_rng(seed)
    offsets, size = SCALE_FIELDS[type_name]
    per_row = cols // VALUES_PER_BLOCK[type_name]
    raw = rng.integers(0, 256, (rows, per_row, size), dtype=np.uint8)
    for offset in offsets:
        scales = (rng.random((rows, per_row)) * 0.02 + 0.001).astype(np.float16)
        raw[..., offset:offset + 2] = scales[..., None].view(np.uint8).reshape(rows, per_row, 2)
    return GGUFTensor(raw.reshape(rows, -1), type_name, (rows, cols))


def reference(blocks: GGUFTensor) -> torch.Tensor:
    return torch.from_numpy(gguf.quants.dequantize(blocks.blocks, gguf.GGMLQuantizationType[blocks.type_name])
                            ).reshape(blocks.shape).float()


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q4_K"])
def test_q4_blocks_become_int4_groups_exactly_up_to_bf16_scales(type_name):
    blocks = random_blocks(type_name, 128, 512)
    module = Int4Linear.from_groups(*blocks.int4_groups())
    expected = reference(blocks)
    # the only loss: scale and zero rounded to bf16 (relative 2^-8 at most), times |q - 8| <= 8
    scale = module.scale_and_zero[..., 0].t().float().abs().repeat_interleave(32, 1)
    zero = module.scale_and_zero[..., 1].t().float().abs().repeat_interleave(32, 1)
    bound = (8 * scale + zero) * 2 ** -8 + 1e-7
    error = (module.dequantize() - expected).abs()
    worst = (error / bound).max().item()
    assert worst <= 1.0, f"{type_name}: error {worst:.2f}x the bf16 rounding bound (max abs {error.max():.2e})"


@pytest.mark.parametrize("type_name", ["Q8_0", "Q5_0", "Q6_K"])
def test_int8_requantization_is_within_half_a_step(type_name):
    blocks = random_blocks(type_name, 64, 512, seed=1)
    expected = reference(blocks)
    module = Int8Linear.from_float(expected)
    step = module.scales.float()[:, None]
    error = ((module.dequantize() - expected).abs() / step).max().item()
    assert error <= 0.5 + 1e-2, f"{type_name}: int8 error {error:.3f} steps (at most half a step)"


@pytest.mark.parametrize("rows", [1, 3, GEMV_ROWS + 1, 40], ids=lambda r: f"{r}-rows")
@pytest.mark.parametrize("kind", ["int4", "int8", "int4x2"])
def test_quantized_linear_multiplies_as_its_dequantized_weight(kind, rows):
    """Kernel path (few rows) and dequantize + GEMM path (many rows) against float32 math on the
    weight the module stands for; the activations are rounded to bf16 at the kernel."""
    torch.manual_seed(0)
    blocks = random_blocks("Q4_K" if kind == "int4" else "Q8_0", 192, 512, seed=2)
    bias = torch.randn(192)
    build = {"int4": lambda: Int4Linear.from_groups(*blocks.int4_groups(), bias),
             "int8": lambda: Int8Linear.from_float(reference(blocks), bias),
             "int4x2": lambda: Int4x2Linear.from_float(reference(blocks), bias)}
    module: QuantizedLinear = build[kind]()
    x = torch.randn(2, rows, 512)
    expected = F.linear(x.bfloat16().float(), module.dequantize(), bias)
    got = module(x)
    assert got.shape == expected.shape and got.dtype == torch.float32
    error = ((got - expected).abs().max() / expected.abs().max()).item()
    assert error < 1e-2, f"{kind}, {rows} rows: max error {error:.2e} of the largest output"


@pytest.mark.parametrize("type_name", ["Q8_0", "Q5_0", "Q4_0"])
def test_q8_groups_hold_q8_q5_q4_0_blocks_exactly(type_name):
    blocks = random_blocks(type_name, 96, 256, seed=4)
    if type_name == "Q8_0":  # llama.cpp writes q in -127..127 (round(x / (max|x| / 127))), never -128
        values = blocks.blocks.reshape(96, 8, 34)[..., 2:]
        values[values == 128] = 127
    # llama.cpp's Q5_0 / Q4_0 scales are signed (d = max / -16 for the value of largest magnitude)
    scales = blocks.blocks.reshape(96, 8, -1)[..., 0:2]
    scales[::3, ::2, 1] |= 0x80  # the sign bit of the f16 scale, every third row, every other block
    q, scale = blocks.q8_groups(chunk=40)  # several chunks
    assert q.dtype == torch.int8 and scale.dtype == torch.float16 and scale.shape == (96, 8)
    assert torch.equal(kernels.dequantize(q, scale), reference(blocks))


@pytest.mark.parametrize("type_name", ["Q4_K", "Q6_K", "Q4_1"])
def test_q8_groups_requantize_other_blocks_within_half_a_step(type_name):
    blocks = random_blocks(type_name, 64, 512, seed=5)
    q, scale = blocks.q8_groups()
    step = scale.float().repeat_interleave(32, 1)
    error = ((kernels.dequantize(q, scale) - reference(blocks)).abs() / step).max().item()
    assert error <= 0.5 + 1e-2 and q.abs().max() <= 127


@needs_kernel
@pytest.mark.parametrize("rows", [1, 2, 5, 17])
@pytest.mark.parametrize("out_features", [24, 200])
def test_q8_kernel_equals_its_reference(rows, out_features):
    """The AVX2 kernel against `q8_reference` (activations rounded to int8 per group of 32, then
    float math): equal up to float summation order; zero groups and +-127 extremes included."""
    g = torch.Generator().manual_seed(rows * 1000 + out_features)
    q = torch.randint(-127, 128, (out_features, 256), dtype=torch.int8, generator=g)
    q[0] = 127
    q[1] = -127
    scale = (torch.rand(out_features, 8, generator=g) * 0.02).half()
    scale[2, 3] = 0
    x = torch.randn(rows, 256, generator=g) * 3
    x[0, :32] = 0  # a group of zeros: scale 0
    x[-1, 40] = 500.0  # an outlier sets its group's scale
    got, expected = kernels.q8_matmul(x, q, scale), kernels.q8_reference(x, q, scale)
    assert got.shape == (rows, out_features)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4 * expected.abs().max().item())


def test_activation_rounding_is_within_half_a_step_per_group():
    x = torch.randn(3, 128) * torch.logspace(-3, 2, 128)
    rounded = kernels.quantize_activations(x)
    step = x.reshape(3, 4, 32).abs().amax(-1, keepdim=True) / 127
    assert ((rounded - x).reshape(3, 4, 32).abs() <= step / 2 + 1e-6).all()


@pytest.mark.parametrize("rows", [1, 3, GroupLinear.kernel_rows + 1], ids=lambda r: f"{r}-rows")
def test_q8_linear_multiplies_as_its_weight(rows):
    """Up to kernel_rows rows the kernel (int8 activations per group); above, a GEMM in
    `gemm_dtype()` (bfloat16 where the CPU has it, float32 elsewhere)."""
    blocks = random_blocks("Q5_0", 64, 256, seed=6)
    bias = torch.randn(64)
    module = Q8Linear(*blocks.q8_groups(), bias)
    x = torch.randn(1, rows, 256)  # (batch, tokens, features), as the model calls it
    weight = reference(blocks)
    if rows <= Q8Linear.kernel_rows:
        expected, tolerance = F.linear(kernels.quantize_activations(x), weight, bias), 1e-4
    else:
        dtype = gemm_dtype()
        expected = F.linear(x.to(dtype), weight.to(dtype)).float() + bias
        tolerance = 1e-4 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(module(x), expected, rtol=tolerance, atol=tolerance * expected.abs().max().item())


@pytest.mark.parametrize("rows", [1, GroupLinear.kernel_rows + 1], ids=lambda r: f"{r}-rows")
def test_fused_projections_compute_what_the_separate_ones_do(rows):
    """q, k, v as one module (rows stacked), gate and up as one that returns silu(gate) * up."""
    q, k, v = (Q8Linear.from_float(torch.randn(n, 128), torch.randn(n)) for n in (64, 32, 32))
    gate, up = (Q8Linear.from_float(torch.randn(96, 128)) for _ in range(2))
    x = torch.randn(1, rows, 128)
    qkv = Q8Linear.concat([q, k, v])
    torch.testing.assert_close(qkv(x), torch.cat([q(x), k(x), v(x)], dim=-1), rtol=1e-5, atol=1e-5)
    gate_up = Q8Linear.concat([gate, up], gated=True)
    torch.testing.assert_close(gate_up(x), F.silu(gate(x)) * up(x), rtol=1e-5, atol=1e-5)


def test_a_q8_model_runs_fused_and_answers_as_unfused(dense_checkpoint, monkeypatch):
    path, _ = dense_checkpoint
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    fused = load_engine(path, quantize="int8").model
    layer = fused.model.layers[0]
    if not kernels.available():  # the fallback modules are not Q8Linear: nothing to fuse
        assert layer.self_attn.qkv_proj is None
        return
    assert isinstance(layer.self_attn.qkv_proj, Q8Linear) and isinstance(layer.mlp.gate_up_proj, Q8Linear)
    assert not hasattr(layer.self_attn, "q_proj") and not hasattr(layer.mlp, "up_proj")
    monkeypatch.setattr(quantize, "fuse_projections", lambda model: model)
    separate = load_engine(path, quantize="int8").model
    assert separate.model.layers[0].self_attn.qkv_proj is None
    with torch.no_grad():
        torch.testing.assert_close(forward_full(fused, ids), forward_full(separate, ids), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dequantized_q8_weights_are_q_times_scale_rounded_once(dtype):
    q = torch.randint(-127, 128, (48, 96), dtype=torch.int8, generator=torch.Generator().manual_seed(2))
    scale = (torch.randn(48, 3, generator=torch.Generator().manual_seed(3)) / 50).half()
    exact = (q.float().reshape(48, 3, 32) * scale.float()[..., None]).reshape(48, 96)
    assert torch.equal(kernels.dequantize(q, scale, dtype), exact.to(dtype))


@pytest.mark.parametrize("rows", [1, 3, GroupLinear.kernel_rows + 1], ids=lambda r: f"{r}-rows")
def test_q5_blocks_stay_in_their_bits_and_multiply_as_their_weight(rows):
    """GGUF Q5_0 kept as it is (22 bytes per 32 weights), signed scales included (llama.cpp writes
    them); it multiplies as the same weights held as int8 groups."""
    blocks = random_blocks("Q5_0", 64, 256, seed=8)
    blocks.blocks.reshape(64, 8, 22)[::3, ::2, 1] |= 0x80  # negative scales in some blocks
    qs, qh, scale = blocks.q5_parts()
    assert torch.equal(kernels.q5_dequantize(qs, qh, scale), reference(blocks))
    assert torch.equal(kernels.q5_dequantize(qs, qh, scale, torch.bfloat16), reference(blocks).bfloat16())
    bias = torch.randn(64)
    q5, q8 = Q5Linear(qs, qh, scale, bias), Q8Linear(*blocks.q8_groups(), bias)
    assert sum(t.numel() * t.element_size() for t in (q5.qs, q5.qh, q5.scale)) == blocks.blocks.nbytes
    x = torch.randn(1, rows, 256)
    torch.testing.assert_close(q5(x), q8(x), rtol=1e-5, atol=1e-5 * q8(x).abs().max().item())
    gated = Q5Linear.concat([q5, q5], gated=True)
    torch.testing.assert_close(gated(x), F.silu(q8(x)) * q8(x), rtol=1e-4, atol=1e-4 * q8(x).abs().max().item() ** 2)


def test_embedding_rows_are_the_blocks_rows():
    blocks = random_blocks("Q5_0", 300, 256, seed=3)
    embedding = QuantizedEmbedding(300, 256, blocks=blocks)
    ids = torch.tensor([[5, 299, 0], [5, 17, 42]])
    assert torch.equal(embedding(ids), reference(blocks)[ids])


@pytest.mark.parametrize("mode, top1, kl", [("bf16", 1.0, 1e-3), ("int8", 0.95, 1e-2), ("int4", 0.7, 0.2),
                                            ("int4x2", 0.95, 1e-2)])
def test_a_quantized_tiny_model_stays_close_to_float(dense_checkpoint, mode, top1, kl):
    path, _ = dense_checkpoint
    ids = torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference_logp = forward_full(load_engine(path).model, ids).log_softmax(-1)
        quantized = load_engine(path, quantize=mode).model
        logp = forward_full(quantized, ids).log_softmax(-1)
    assert isinstance(quantized.lm_head, QuantizedLinear)
    assert not any(isinstance(m, torch.nn.Linear) for m in quantized.modules())
    divergence = (reference_logp.exp() * (reference_logp - logp)).sum(-1).mean().item()
    agreement = (reference_logp.argmax(-1) == logp.argmax(-1)).float().mean().item()
    assert divergence < kl, f"{mode}: mean KL {divergence:.2e} against float32"
    assert agreement >= top1, f"{mode}: top-1 agreement {agreement:.1%} against float32"


def test_unknown_quantize_mode_is_named(dense_checkpoint):
    path, _ = dense_checkpoint
    with pytest.raises(CheckpointError, match="'int3'"):
        load_engine(path, quantize="int3")


def test_without_the_q8_kernel_gguf_weights_take_pytorchs_kernels(monkeypatch):
    """LONGCTX_NO_KERNELS (or no compiler): the older plan, Q4 blocks as int4 and the rest int8
    per channel, still multiplying as the weights the blocks hold."""
    from model_core.quantize import _quantized_linear

    built = kernels.available()
    monkeypatch.setenv("LONGCTX_NO_KERNELS", "1")
    kernels._module.cache_clear()
    try:
        assert not kernels.available()
        for type_name, kind in (("Q4_K", Int4Linear), ("Q5_0", Int8Linear)):
            blocks = random_blocks(type_name, 64, 256, seed=7)
            module = _quantized_linear("gguf", blocks, torch.empty(0), None, "w")
            assert type(module) is kind
            x = torch.randn(2, 256)
            expected = F.linear(x.bfloat16().float(), reference(blocks))
            assert ((module(x) - expected).abs().max() / expected.abs().max()).item() < 2e-2
    finally:
        monkeypatch.delenv("LONGCTX_NO_KERNELS")
        kernels._module.cache_clear()
    assert kernels.available() == built  # switched back on for the tests that follow


@needs_kernel
@pytest.mark.parametrize("batch, cos_batch, tokens", [(1, 1, 1), (2, 2, 3), (2, 1, 16)])
def test_rope_kernel_rotates_as_the_reference(batch, cos_batch, tokens):
    from model_core.rope import apply_rope, rope_reference

    x = torch.randn(batch, tokens, 14, 64).transpose(1, 2)  # (B, H, T, D), strided as the model's
    cos, sin = torch.randn(cos_batch, 1, tokens, 64), torch.randn(cos_batch, 1, tokens, 64)
    assert torch.equal(kernels.rope(x, cos, sin), rope_reference(x, cos, sin))
    assert torch.equal(apply_rope(x, cos, sin), rope_reference(x, cos, sin))


@needs_kernel
@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q4_K"])
def test_q4_blocks_stay_four_bit_and_multiply_as_their_weight(type_name):
    """GGUF's 4-bit blocks kept as nibbles with a scale and a min per 32 (Q4_K's sub-block scale and
    min rounded once to float16); the kernel multiplies as the dequantized weight does."""
    from model_core.quantize import Q4Linear, _quantized_linear

    blocks = random_blocks(type_name, 64, 512, seed=9)
    module = _quantized_linear("gguf", blocks, torch.empty(0), torch.randn(64), "w")
    assert isinstance(module, Q4Linear)
    weight = reference(blocks)
    tolerance = 0.0 if type_name != "Q4_K" else 2e-3 * weight.abs().max().item()  # float16 scale and min
    assert (module.dequantize() - weight).abs().max().item() <= tolerance
    assert module.qs.numel() == 64 * 512 // 2
    for rows in (1, 5):
        x = torch.randn(rows, 512)
        expected = F.linear(kernels.quantize_activations(x), module.dequantize(), module.bias)
        torch.testing.assert_close(module(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    gated = Q4Linear.concat([module, module], gated=True)
    x = torch.randn(2, 512)
    torch.testing.assert_close(gated(x), F.silu(module(x)) * module(x), rtol=1e-4, atol=1e-3)


@needs_kernel
@pytest.mark.parametrize("type_name", ["Q4_1", "Q5_0"])
def test_an_odd_number_of_groups_takes_the_avx2_path_and_agrees(type_name):
    """K = 96 (three groups): the AVX-512 path pairs groups, so this runs the AVX2 one everywhere."""
    from model_core.quantize import _quantized_linear

    blocks = random_blocks(type_name, 40, 96, seed=11)
    module = _quantized_linear("gguf", blocks, torch.empty(0), None, "w")
    x = torch.randn(3, 96)
    expected = F.linear(kernels.quantize_activations(x), reference(blocks))
    torch.testing.assert_close(module(x), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
