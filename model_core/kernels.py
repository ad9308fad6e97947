"""A CPU kernel PyTorch does not ship: int8 weights in groups of 32 times int8 activations.

    q8_matmul(x (M, K) float32, q (N, K) int8, scale (N, K/32) float16, bias=None) -> (M, N) float32
    y[m, n] = sum_g scale[n, g] * d[m, g] * sum_{k in group g} xq[m, k] * q[n, k]

where xq, d are x in llama.cpp's Q8_0 form: each group of 32 activations as int8 with one scale
d = max|x| / 127 (`quantize_activations`). This is how llama.cpp multiplies Q8_0 / Q5_0 / Q4_0
weights on x86 (`ggml_vec_dot_q8_0_q8_0`); the algorithm is re-derived here, not copied.

Why it exists (measured on a 2-core AVX2 EPYC, docs/quantization.md): PyTorch 2.13's
`_weight_int8pack_mm` is vectorized only for AVX-512 (int8mm_kernel.cpp) and runs a scalar loop
on AVX2 (0.5-1.8 ms for 4864 x 896, one row); `_weight_int4pack_mm_for_cpu` is vectorized on AVX2
but needs 4-bit weights; FBGEMM's dynamic int8 linear is fast but quantizes the activations,
which cost 6-8 points of top-1 agreement on the 0.5B Qwen2 (92-94%, the bar is 97%). GGUF's
Q8_0, Q5_0 and Q4_0 blocks are int8 values times one scale per 32 weights, so they are held
here exactly, the way llama.cpp holds Q8_0 (fp16 scale + 32 int8).

The kernel: activations are quantized once per call; each group of 32 products is one integer
dot product (`vpmaddubsw` on |x| and sign(x) * w, pairs summed by `vpmaddwd`; |x|, |w| <= 127 so
the int16 pair sums cannot saturate), converted to float and scaled by d_x * d_w with FMA. A
weight row is read once per block of up to 4 activation rows; output rows are split across
PyTorch's own OpenMP pool (`at::parallel_for`, compiled with -fopenmp, which binds to the libgomp
torch ships, so `torch.set_num_threads` holds). Measured on the 0.5B Qwen2 against float32
(docs/quantization.md): Q8_0 activations with exact int8 weights keep top-1 agreement at 98%.
Built once per machine with `torch.utils.cpp_extension.load_inline` (g++ and ninja; cached in
TORCH_EXTENSIONS_DIR). Where it cannot be built (no compiler, not x86
with AVX2/FMA/F16C; LONGCTX_NO_KERNELS=1) `available()` is False: `model_core.quantize` then keeps
the older plan on PyTorch's own kernels, and `q8_matmul` itself falls back to `q8_reference`.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

GROUP = 32

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

static inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// One activation row to int8 in groups of 32: d = max|x| / 127, q = round(x / d) (llama.cpp's Q8_0).
static void quantize_row(const float* x, int8_t* q, float* d, int64_t K) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t g = 0; g < K / 32; ++g) {
    const float* xg = x + g * 32;
    __m256 v[4], m = _mm256_setzero_ps();
    for (int i = 0; i < 4; ++i) { v[i] = _mm256_loadu_ps(xg + 8 * i); m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[i])); }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    const float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)));
    const float scale = amax / 127.0f;
    d[g] = scale;
    const __m256 inv = _mm256_set1_ps(scale > 0 ? 1.0f / scale : 0.0f);
    __m256i i32[4];
    for (int i = 0; i < 4; ++i) i32[i] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[i], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256i i16a = _mm256_packs_epi32(i32[0], i32[1]), i16b = _mm256_packs_epi32(i32[2], i32[3]);
    __m256i i8 = _mm256_packs_epi16(i16a, i16b);  // lanes interleaved by the packs: undo below
    i8 = _mm256_permutevar8x32_epi32(i8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i*)(q + g * 32), i8);
  }
}

// y[r, n] for R activation rows and weight rows n0..n1: per group of 32 an integer dot product
// (|x| * sign(x) w with vpmaddubsw, pairs summed by vpmaddwd), scaled by d_x * d_w in float.
template <int R>
static void rows_block(const int8_t* xq, const float* xd, const int8_t* q, const float* wd,
                       const float* bias, float* y, int64_t K, int64_t N, int64_t n0, int64_t n1) {
  const int64_t G = K / 32;
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* qn = q + n * K;
    const float* dn = wd + (n - n0) * G;
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < G; ++g) {
      const __m256i w = _mm256_loadu_si256((const __m256i*)(qn + g * 32));
      for (int r = 0; r < R; ++r) {
        const __m256i xv = _mm256_loadu_si256((const __m256i*)(xq + r * K + g * 32));
        const __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(xv, xv), _mm256_sign_epi8(w, xv)), ones);
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dn[g] * xd[r * G + g]), _mm256_cvtepi32_ps(dot), acc[r]);
      }
    }
    const float b = bias ? bias[n] : 0.0f;
    for (int r = 0; r < R; ++r) y[r * N + n] = hsum(acc[r]) + b;
  }
}

typedef void (*block_fn)(const int8_t*, const float*, const int8_t*, const float*, const float*,
                         float*, int64_t, int64_t, int64_t, int64_t);
static const block_fn BLOCKS[4] = {rows_block<1>, rows_block<2>, rows_block<3>, rows_block<4>};

// x (..., K) float32 -> (..., N): one call does the reshape, the multiply and the bias; with
// `swiglu` the weight rows are [gate; up] and the result is silu(gate) * up, (..., N / 2).
torch::Tensor q8_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scale, c10::optional<torch::Tensor> bias,
                        bool swiglu) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && q.dtype() == torch::kInt8 && scale.dtype() == torch::kFloat16,
              "q8_linear: x float32, q int8, scale float16");
  TORCH_CHECK(x.dim() >= 1 && q.dim() == 2 && x.size(-1) == q.size(1) && q.size(1) % 32 == 0 &&
              scale.size(0) == q.size(0) && scale.size(1) == q.size(1) / 32, "q8_linear: shapes");
  x = x.contiguous(); q = q.contiguous(); scale = scale.contiguous();
  const int64_t K = x.size(-1), M = x.numel() / K, N = q.size(0), G = K / 32;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  auto y = torch::empty(out_shape, x.options());
  torch::Tensor b;
  if (bias.has_value()) {
    b = bias->to(torch::kFloat32).contiguous();
    TORCH_CHECK(b.numel() == N, "q8_linear: bias size");
  }
  const float* bp = bias.has_value() ? b.data_ptr<float>() : nullptr;
  auto xq = torch::empty({M, K}, q.options());
  auto xd = torch::empty({M, G}, x.options());
  const float* xp = x.data_ptr<float>();
  int8_t* xqp = xq.data_ptr<int8_t>();
  float* xdp = xd.data_ptr<float>();
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) quantize_row(xp + m * K, xqp + m * K, xdp + m * G, K);
  });
  const int8_t* qp = q.data_ptr<int8_t>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scale.data_ptr<at::Half>());
  float* yp = y.data_ptr<float>();
  // Output rows split across threads; a chunk of 16 weight rows (16 x K bytes) stays in cache
  // while every block of up to 4 activation rows passes over it.
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> wd(16 * G);
    for (int64_t n0 = begin; n0 < end; n0 += 16) {
      const int64_t n1 = std::min(end, n0 + 16);
      for (int64_t i = 0; i < (n1 - n0) * G; ++i) wd[i] = _cvtsh_ss(sp[n0 * G + i]);
      for (int64_t m = 0; m < M; m += 4) {
        const int64_t r = std::min<int64_t>(4, M - m);
        BLOCKS[r - 1](xqp + m * K, xdp + m * G, qp, wd.data(), bp, yp + m * N, K, N, n0, n1);
      }
    }
  });
  if (swiglu) return at::silu(y.narrow(-1, 0, N / 2)).mul_(y.narrow(-1, N / 2, N / 2));
  return y;
}

// float32 -> bfloat16 bits, round to nearest even (weights are finite), 16 values in order.
static inline __m256i to_bf16(__m256 a, __m256 b) {
  const __m256i bias = _mm256_set1_epi32(0x7FFF), one = _mm256_set1_epi32(1);
  __m256i ia = _mm256_castps_si256(a), ib = _mm256_castps_si256(b);
  ia = _mm256_srli_epi32(_mm256_add_epi32(ia, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(ia, 16), one))), 16);
  ib = _mm256_srli_epi32(_mm256_add_epi32(ib, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(ib, 16), one))), 16);
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(ia, ib), 0xD8);  // packus interleaves lanes
}

// The weight w = q * scale (N, K) as float32 or bfloat16, in one pass (the prefill GEMM's input).
torch::Tensor q8_dequantize(torch::Tensor q, torch::Tensor scale, bool bf16) {
  TORCH_CHECK(q.dtype() == torch::kInt8 && scale.dtype() == torch::kFloat16 && q.dim() == 2 &&
              q.size(1) % 32 == 0 && scale.size(0) == q.size(0) && scale.size(1) == q.size(1) / 32,
              "q8_dequantize: q int8 (N, K), scale float16 (N, K/32)");
  q = q.contiguous(); scale = scale.contiguous();
  const int64_t N = q.size(0), K = q.size(1), G = K / 32;
  auto out = torch::empty({N, K}, q.options().dtype(bf16 ? torch::kBFloat16 : torch::kFloat32));
  const int8_t* qp = q.data_ptr<int8_t>();
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scale.data_ptr<at::Half>());
  uint8_t* op = static_cast<uint8_t*>(out.data_ptr());
  at::parallel_for(0, N * G, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const __m256 d = _mm256_set1_ps(_cvtsh_ss(sp[i]));
      __m256 v[4];
      for (int j = 0; j < 4; ++j)
        v[j] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(qp + i * 32 + 8 * j)))), d);
      if (bf16) {
        __m256i* o = reinterpret_cast<__m256i*>(op + i * 64);
        _mm256_storeu_si256(o, to_bf16(v[0], v[1]));
        _mm256_storeu_si256(o + 1, to_bf16(v[2], v[3]));
      } else {
        float* o = reinterpret_cast<float*>(op) + i * 32;
        for (int j = 0; j < 4; ++j) _mm256_storeu_ps(o + 8 * j, v[j]);
      }
    }
  });
  return out;
}
"""

_CPP_DECL = ("torch::Tensor q8_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scale, "
             "c10::optional<torch::Tensor> bias, bool swiglu);\n"
             "torch::Tensor q8_dequantize(torch::Tensor q, torch::Tensor scale, bool bf16);")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags /proc/cpuinfo lists for the first CPU (empty where unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        return frozenset(text.split("\nflags", 2)[1].split("\n", 1)[0].split(":", 1)[1].split())
    except (OSError, IndexError):
        return frozenset()


@functools.lru_cache(maxsize=1)
def _module():
    """The compiled extension, or None where it cannot be built here (logged once)."""
    if os.environ.get("LONGCTX_NO_KERNELS"):
        return None
    if not {"avx2", "fma", "f16c"} <= cpu_flags():
        log.info("q8 kernel: this CPU lacks AVX2/FMA/F16C; PyTorch's int8/int4 kernels instead")
        return None
    try:
        from torch.utils.cpp_extension import load_inline

        return load_inline(name="longctx_q8", cpp_sources=[_CPP_DECL, _SOURCE], functions=["q8_linear", "q8_dequantize"],
                           extra_cflags=["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"],
                           extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as error:  # no compiler / ninja, or a build failure: the reference path runs
        log.warning("q8 kernel could not be built (%s); PyTorch's int8/int4 kernels instead (slower)",
                    str(error).splitlines()[0] if str(error) else type(error).__name__)
        return None


def available() -> bool:
    return _module() is not None


def round_to_int8(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """round(values / scale) in -127..127 (0 where the scale is 0; a scale may be negative),
    values (..., G, 32) against scale (..., G): the one rounding rule of weights and activations
    (the kernel's sign trick needs |q| <= 127)."""
    d = scale.float()[..., None]
    return torch.where(d != 0, values.float() / torch.where(d != 0, d, 1.0), 0.0).round().clamp(-127, 127)


def quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """x with each group of 32 along K rounded to int8 levels (d = max|x| / 127): what the kernel
    multiplies with, as floats."""
    groups = x.float().reshape(*x.shape[:-1], -1, GROUP)
    d = groups.abs().amax(-1) / 127
    return (round_to_int8(groups, d) * d[..., None]).reshape(x.shape)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w = q * scale per group of 32, (N, K) in `dtype` (computed in float32, rounded once)."""
    module = _module()
    if module is not None and dtype in (torch.float32, torch.bfloat16):
        return module.q8_dequantize(q, scale, dtype == torch.bfloat16)
    n, k = q.shape
    return (q.float().reshape(n, k // GROUP, GROUP) * scale.float()[..., None]).reshape(n, k).to(dtype)


def q8_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """What `q8_matmul` computes, in plain PyTorch (the tests' reference and the fallback)."""
    return quantize_activations(x) @ dequantize(q, scale).t()


def swiglu(y: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of y = [gate, up] along the last dimension."""
    gate, up = y.chunk(2, dim=-1)
    return F.silu(gate) * up


def q8_matmul(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor,
              bias: torch.Tensor | None = None, *, gated: bool = False) -> torch.Tensor:
    """x (..., K) float32 -> (..., N): the kernel where built, else `q8_reference` (+ bias).
    gated: q's rows are [gate; up] and the result is `swiglu` of the product, (..., N / 2)."""
    module = _module()
    if module is None:
        y = q8_reference(x, q, scale)
        y = y if bias is None else y + bias
        return swiglu(y) if gated else y
    return module.q8_linear(x, q, scale, bias, gated)
