"""CPU kernels PyTorch does not ship: integer weights in groups of 32 times int8 activations.

    q8_matmul(x (M, K) float32, q (N, K) int8, scale (N, K/32) float16, bias=None) -> (M, N) float32
    y[m, n] = sum_g scale[n, g] * d[m, g] * sum_{k in group g} xq[m, k] * q[n, k]
    q5_matmul(x, qs (N, K/2) uint8, qh (N, K/32) int32, scale, bias=None)   # GGUF Q5_0 as stored
    q4_matmul(x, qs (N, K/2) uint8, mins (N, K/32) float16, scale, bias=None)  # w = scale * q + min
    dequantize / q5_dequantize / q4_dequantize(..., dtype)                   # one pass, for prefill
    rope(x, cos, sin)                                                        # decode-size RoPE

The matmuls take `gated=True` for rows [gate; up]: the result is silu(gate) * up (SwiGLU in the
same call). 4- and 5-bit weights stay in their bits: each group is unpacked in registers (nibbles,
plus a high bit for Q5, as unsigned integers) and the format's offset or min comes in through the
group sums of the activations; on CPUs with AVX-512 BW/VNNI two groups go in one register (Q5's
high bits by a byte mask, products by `vpdpbusd`), chosen at run time, the AVX2 path elsewhere.

In the q8 formula xq, d are x in llama.cpp's Q8_0 form: each group of 32 activations as int8 with
one scale d = max|x| / 127 (`quantize_activations`). This is how llama.cpp multiplies Q8_0 / Q5_0 / Q4_0
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
weight row is read once per block of up to 4 activation rows (8 on the AVX-512 path of the 4- and
5-bit formats); output rows are split across
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
#include <type_traits>

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

// Weight formats, one group of 32 at a time. `dot` is the group's integer dot product with 32
// int8 activations as 8 int32 lanes; `shift(n, g, scale)` what each unit of the activations'
// group sum adds (the format's min or offset: the kernel adds shift * d_x * sum(x_q), in float).
struct Q8Weights {  // int8 q (N, K): w = scale * q (Q8_0, and Q6_K / Q5_1 / ... through int8)
  const int8_t* q; int64_t K;
  static constexpr bool shifted = false;
  inline float shift(int64_t, int64_t, float) const { return 0.0f; }
  inline __m256i dot(int64_t n, int64_t g, __m256i x) const {
    // |x| * (sign(x) w) with vpmaddubsw (|x|, |w| <= 127: the int16 pair sums cannot saturate)
    const __m256i w = _mm256_loadu_si256((const __m256i*)(q + n * K + g * 32));
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(w, x)), _mm256_set1_epi16(1));
  }
};

// Nibble formats: qs (N, K/2), byte j of a group holds element j (low nibble) and j + 16 (high).
static inline __m256i nibbles(const uint8_t* p) {
  const __m128i b = _mm_loadu_si128((const __m128i*)p);
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0F));
}

struct Q4Weights {  // w = scale * q + min per group, q = the nibble (Q4_0, Q4_1, Q4_K sub-blocks)
  const uint8_t* qs; const uint16_t* mins; int64_t K;
  static constexpr bool shifted = true, high_bits = false;
  inline float shift(int64_t n, int64_t g, float) const { return _cvtsh_ss(mins[n * (K / 32) + g]); }
  inline __m256i dot(int64_t n, int64_t g, __m256i x) const {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(nibbles(qs + n * (K / 2) + g * 16), x), _mm256_set1_epi16(1));
  }
};

struct Q5Weights {  // GGUF Q5_0 as it is: w = scale * (q - 16), q = low nibble | high bit << 4
  const uint8_t* qs; const uint32_t* qh; int64_t K;
  static constexpr bool shifted = true, high_bits = true;
  inline float shift(int64_t, int64_t, float d) const { return -16.0f * d; }
  inline __m256i dot(int64_t n, int64_t g, __m256i x) const {
    const __m256i w = unpack(qs + n * (K / 2) + g * 16, qh[n * (K / 32) + g]);  // 0..31, unsigned
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));  // 31 * 127 * 2 fits int16
  }
  static inline __m256i unpack(const uint8_t* qs, uint32_t qh) {
    // bit j of qh -> byte j: byte j takes qh's byte j / 8, then tests bit j % 8
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    const __m256i high = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(0x10));
    return _mm256_or_si256(nibbles(qs), high);
  }
};

// y[r, n] for R activation rows and weight rows n0..n1: per group an integer dot product scaled
// by d_x * d_w in float; xs[r, g] = d_x * sum(x_q) for the format's shift.
template <int R, class W>
static void rows_block(const W& w, const int8_t* xq, const float* xd, const float* xs, const float* wd,
                       const float* bias, float* y, int64_t K, int64_t N, int64_t n0, int64_t n1) {
  const int64_t G = K / 32;
  for (int64_t n = n0; n < n1; ++n) {
    const float* dn = wd + (n - n0) * G;
    __m256 acc[R];
    float shift[R];
    for (int r = 0; r < R; ++r) { acc[r] = _mm256_setzero_ps(); shift[r] = 0.0f; }
    for (int64_t g = 0; g < G; ++g) {
      for (int r = 0; r < R; ++r) {
        const __m256i xv = _mm256_loadu_si256((const __m256i*)(xq + r * K + g * 32));
        acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dn[g] * xd[r * G + g]), _mm256_cvtepi32_ps(w.dot(n, g, xv)), acc[r]);
        if (W::shifted) shift[r] += w.shift(n, g, dn[g]) * xs[r * G + g];
      }
    }
    const float b = bias ? bias[n] : 0.0f;
    for (int r = 0; r < R; ++r) y[r * N + n] = hsum(acc[r]) + shift[r] + b;
  }
}

// Q4 / Q5 rows with AVX-512 (BW, VNNI), where the CPU has it: two groups per 512-bit register,
// Q5's high bits spread by a byte mask (one instruction), u8 x s8 products summed by vpdpbusd.
// The AVX2 unpack costs more than the bytes it saves; this one does not (docs/quantization.md).
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
template <int R, class W>
AVX512 static void nibble_rows_512(const W& w, const int8_t* xq, const float* xdv, const float* xs,
                                   const float* wd, const float* bias, float* y, int64_t K, int64_t N,
                                   int64_t n0, int64_t n1) {
  // xdv: per row and pair of groups, d_x of the pair's first group in 8 lanes, of its second in 8
  const int64_t G = K / 32;
  const __m256i low4 = _mm256_set1_epi8(0x0F);
  const __m512i bit4 = _mm512_set1_epi8(0x10);
  for (int64_t n = n0; n < n1; ++n) {
    const float* dn = wd + (n - n0) * G;
    const uint8_t* qs = w.qs + n * (K / 2);
    __m512 acc[R];
    float shift[R];
    for (int r = 0; r < R; ++r) { acc[r] = _mm512_setzero_ps(); shift[r] = 0.0f; }
    for (int64_t g = 0; g < G; g += 2) {  // G even (checked by the caller)
      const __m256i b = _mm256_loadu_si256((const __m256i*)(qs + g * 16));
      const __m256i lo = _mm256_and_si256(b, low4), hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), low4);
      __m512i nib = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);  // lo g, lo g+1, hi g, hi g+1
      nib = _mm512_shuffle_i64x2(nib, nib, _MM_SHUFFLE(3, 1, 2, 0));       // lo g, hi g, lo g+1, hi g+1
      __m512i wv = nib;
      if constexpr (W::high_bits) {
        const uint32_t* qh = w.qh + n * G;
        const __mmask64 high = (uint64_t)qh[g] | ((uint64_t)qh[g + 1] << 32);
        wv = _mm512_or_si512(nib, _mm512_maskz_mov_epi8(high, bit4));
      }
      const __m512 dw = _mm512_insertf32x8(_mm512_set1_ps(dn[g]), _mm256_set1_ps(dn[g + 1]), 1);
      const float s0 = w.shift(n, g, dn[g]), s1 = w.shift(n, g + 1, dn[g + 1]);
      for (int r = 0; r < R; ++r) {
        const __m512i xv = _mm512_loadu_si512((const void*)(xq + r * K + g * 32));
        const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, xv);
        const __m512 scale = _mm512_mul_ps(dw, _mm512_loadu_ps(xdv + (r * G + g) * 8));
        acc[r] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(dot), acc[r]);
        shift[r] += s0 * xs[r * G + g] + s1 * xs[r * G + g + 1];
      }
    }
    const float bv = bias ? bias[n] : 0.0f;
    for (int r = 0; r < R; ++r) y[r * N + n] = _mm512_reduce_add_ps(acc[r]) + shift[r] + bv;
  }
}

static bool has_avx512_vnni() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                          __builtin_cpu_supports("avx512vnni");
  return yes;
}

template <int R, class W>
static void rows(const W& w, bool wide, const int8_t* xq, const float* xd, const float* xdv, const float* xs,
                 const float* wd, const float* bias, float* y, int64_t K, int64_t N, int64_t n0, int64_t n1) {
  if constexpr (!std::is_same<W, Q8Weights>::value) {
    if (wide) return nibble_rows_512<R>(w, xq, xdv, xs, wd, bias, y, K, N, n0, n1);
  }
  rows_block<R>(w, xq, xd, xs, wd, bias, y, K, N, n0, n1);
}

// x (..., K) float32 -> (..., N) for N weight rows with float16 scales (N, K/32): one call does
// the reshape, the multiply and the bias; with `swiglu` the weight rows are [gate; up] and the
// result is silu(gate) * up, (..., N / 2).
template <class W>
static torch::Tensor linear(const W& w, torch::Tensor x, int64_t N, torch::Tensor scale,
                            c10::optional<torch::Tensor> bias, bool swiglu) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && scale.dtype() == torch::kFloat16, "x float32, scale float16");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == w.K && w.K % 32 == 0 && scale.size(0) == N && scale.size(1) == w.K / 32,
              "linear: shapes");
  x = x.contiguous(); scale = scale.contiguous();
  const int64_t K = w.K, M = x.numel() / K, G = K / 32;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  auto y = torch::empty(out_shape, x.options());
  torch::Tensor b;
  if (bias.has_value()) {
    b = bias->to(torch::kFloat32).contiguous();
    TORCH_CHECK(b.numel() == N, "linear: bias size");
  }
  const float* bp = bias.has_value() ? b.data_ptr<float>() : nullptr;
  auto xq = torch::empty({M, K}, x.options().dtype(torch::kInt8));
  auto xd = torch::empty({M, G}, x.options()), xs = torch::empty({M, G}, x.options());
  const float* xp = x.data_ptr<float>();
  int8_t* xqp = xq.data_ptr<int8_t>();
  float *xdp = xd.data_ptr<float>(), *xsp = xs.data_ptr<float>();
  at::parallel_for(0, M, 16, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      quantize_row(xp + m * K, xqp + m * K, xdp + m * G, K);
      if (W::shifted)
        for (int64_t g = 0; g < G; ++g) {
          int sum = 0;
          for (int i = 0; i < 32; ++i) sum += xqp[m * K + g * 32 + i];
          xsp[m * G + g] = xdp[m * G + g] * (float)sum;
        }
    }
  });
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scale.data_ptr<at::Half>());
  float* yp = y.data_ptr<float>();
  // Output rows split across threads; a chunk of 16 weight rows stays in cache while every
  // block of activation rows passes over it: up to 8 rows on the AVX-512 nibble path (32
  // registers: one unpacked weight pair serves 8 rows), 4 elsewhere.
  const bool wide = !std::is_same<W, Q8Weights>::value && G % 2 == 0 && has_avx512_vnni();
  const int64_t block = wide ? 8 : 4;
  std::vector<float> xdv(wide ? M * G * 8 : 0);  // d_x of each group in 8 lanes (pairs: one 512-bit load)
  for (int64_t i = 0; i < (int64_t)xdv.size(); ++i) xdv[i] = xdp[i / 8];
  const float* xdvp = xdv.data();
  at::parallel_for(0, N, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> wd(16 * G);
    for (int64_t n0 = begin; n0 < end; n0 += 16) {
      const int64_t n1 = std::min(end, n0 + 16);
      for (int64_t i = 0; i < (n1 - n0) * G; ++i) wd[i] = _cvtsh_ss(sp[n0 * G + i]);
      for (int64_t m = 0; m < M; m += block) {
        const int64_t r = std::min<int64_t>(block, M - m), o = m * K, og = m * G;
        float* ym = yp + m * N;
        if (r == 8) rows<8>(w, wide, xqp + o, xdp + og, xdvp + og * 8, xsp + og, wd.data(), bp, ym, K, N, n0, n1);
        else if (r == 7) rows<7>(w, wide, xqp + o, xdp + og, xdvp + og * 8, xsp + og, wd.data(), bp, ym, K, N, n0, n1);
        else if (r == 6) rows<6>(w, wide, xqp + o, xdp + og, xdvp + og * 8, xsp + og, wd.data(), bp, ym, K, N, n0, n1);
        else if (r == 5) rows<5>(w, wide, xqp + o, xdp + og, xdvp + og * 8, xsp + og, wd.data(), bp, ym, K, N, n0, n1);
        else if (r == 4) rows<4>(w, wide, xqp + o, xdp + og, xdvp + og * 8, xsp + og, wd.data(), bp, ym, K, N, n0, n1);
        else if (r == 3) rows<3>(w, wide, xqp + o, xdp + og, xdvp + og * 8, xsp + og, wd.data(), bp, ym, K, N, n0, n1);
        else if (r == 2) rows<2>(w, wide, xqp + o, xdp + og, xdvp + og * 8, xsp + og, wd.data(), bp, ym, K, N, n0, n1);
        else rows<1>(w, wide, xqp + o, xdp + og, xdvp + og * 8, xsp + og, wd.data(), bp, ym, K, N, n0, n1);
      }
    }
  });
  if (swiglu) return at::silu(y.narrow(-1, 0, N / 2)).mul_(y.narrow(-1, N / 2, N / 2));
  return y;
}

torch::Tensor q8_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scale, c10::optional<torch::Tensor> bias,
                        bool swiglu) {
  TORCH_CHECK(q.dtype() == torch::kInt8 && q.dim() == 2, "q8_linear: q int8 (N, K)");
  q = q.contiguous();
  return linear(Q8Weights{q.data_ptr<int8_t>(), q.size(1)}, x, q.size(0), scale, bias, swiglu);
}

torch::Tensor q4_linear(torch::Tensor x, torch::Tensor qs, torch::Tensor mins, torch::Tensor scale,
                        c10::optional<torch::Tensor> bias, bool swiglu) {
  TORCH_CHECK(qs.dtype() == torch::kUInt8 && mins.dtype() == torch::kFloat16 && qs.dim() == 2 &&
              mins.size(0) == qs.size(0) && mins.size(1) * 16 == qs.size(1), "q4_linear: qs uint8 (N, K/2), mins float16 (N, K/32)");
  qs = qs.contiguous(); mins = mins.contiguous();
  const Q4Weights w{qs.data_ptr<uint8_t>(), reinterpret_cast<const uint16_t*>(mins.data_ptr<at::Half>()), qs.size(1) * 2};
  return linear(w, x, qs.size(0), scale, bias, swiglu);
}

torch::Tensor q5_linear(torch::Tensor x, torch::Tensor qs, torch::Tensor qh, torch::Tensor scale,
                        c10::optional<torch::Tensor> bias, bool swiglu) {
  TORCH_CHECK(qs.dtype() == torch::kUInt8 && qh.dtype() == torch::kInt32 && qs.dim() == 2 && qh.dim() == 2 &&
              qh.size(0) == qs.size(0) && qh.size(1) * 16 == qs.size(1), "q5_linear: qs uint8 (N, K/2), qh int32 (N, K/32)");
  qs = qs.contiguous(); qh = qh.contiguous();
  const Q5Weights w{qs.data_ptr<uint8_t>(), reinterpret_cast<const uint32_t*>(qh.data_ptr<int32_t>()), qs.size(1) * 2};
  return linear(w, x, qs.size(0), scale, bias, swiglu);
}

// float32 -> bfloat16 bits, round to nearest even (weights are finite), 16 values in order.
static inline __m256i to_bf16(__m256 a, __m256 b) {
  const __m256i bias = _mm256_set1_epi32(0x7FFF), one = _mm256_set1_epi32(1);
  __m256i ia = _mm256_castps_si256(a), ib = _mm256_castps_si256(b);
  ia = _mm256_srli_epi32(_mm256_add_epi32(ia, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(ia, 16), one))), 16);
  ib = _mm256_srli_epi32(_mm256_add_epi32(ib, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(ib, 16), one))), 16);
  return _mm256_permute4x64_epi64(_mm256_packus_epi32(ia, ib), 0xD8);  // packus interleaves lanes
}

// Group i (of N * K/32) of a dequantized weight, 32 floats, stored as float32 or bfloat16.
static inline void store_group(uint8_t* op, int64_t i, const __m256 v[4], bool bf16) {
  if (bf16) {
    __m256i* o = reinterpret_cast<__m256i*>(op + i * 64);
    _mm256_storeu_si256(o, to_bf16(v[0], v[1]));
    _mm256_storeu_si256(o + 1, to_bf16(v[2], v[3]));
  } else {
    float* o = reinterpret_cast<float*>(op) + i * 32;
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(o + 8 * j, v[j]);
  }
}

// The weight (N, K) as float32 or bfloat16, in one pass (the prefill GEMM's input): each group's
// 32 integers (int8 for q8, 0..31 minus 16 for q5) times its scale, rounded once.
template <class Unpack>
static torch::Tensor dequantize(int64_t N, int64_t K, torch::Tensor scale, bool bf16, Unpack unpack,
                                const uint16_t* mins = nullptr) {
  TORCH_CHECK(scale.dtype() == torch::kFloat16 && K % 32 == 0 && scale.size(0) == N && scale.size(1) == K / 32,
              "dequantize: scale float16 (N, K/32)");
  scale = scale.contiguous();
  const int64_t G = K / 32;
  auto out = torch::empty({N, K}, scale.options().dtype(bf16 ? torch::kBFloat16 : torch::kFloat32));
  const uint16_t* sp = reinterpret_cast<const uint16_t*>(scale.data_ptr<at::Half>());
  uint8_t* op = static_cast<uint8_t*>(out.data_ptr());
  at::parallel_for(0, N * G, 1024, [&](int64_t begin, int64_t end) {
    alignas(32) int8_t values[32];
    for (int64_t i = begin; i < end; ++i) {
      unpack(i, values);
      const __m256 d = _mm256_set1_ps(_cvtsh_ss(sp[i])), m = _mm256_set1_ps(mins ? _cvtsh_ss(mins[i]) : 0.0f);
      __m256 v[4];
      for (int j = 0; j < 4; ++j)  // d * q + m, not fused: the rounding of the reference
        v[j] = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)(values + 8 * j)))), d), m);
      store_group(op, i, v, bf16);
    }
  });
  return out;
}

torch::Tensor q8_dequantize(torch::Tensor q, torch::Tensor scale, bool bf16) {
  TORCH_CHECK(q.dtype() == torch::kInt8 && q.dim() == 2, "q8_dequantize: q int8 (N, K)");
  q = q.contiguous();
  const int8_t* qp = q.data_ptr<int8_t>();
  return dequantize(q.size(0), q.size(1), scale, bf16, [qp](int64_t i, int8_t* values) {
    _mm256_store_si256((__m256i*)values, _mm256_loadu_si256((const __m256i*)(qp + i * 32)));
  });
}

torch::Tensor q4_dequantize(torch::Tensor qs, torch::Tensor mins, torch::Tensor scale, bool bf16) {
  TORCH_CHECK(qs.dtype() == torch::kUInt8 && mins.dtype() == torch::kFloat16 && qs.dim() == 2 &&
              mins.size(1) * 16 == qs.size(1), "q4_dequantize: qs uint8 (N, K/2), mins float16 (N, K/32)");
  qs = qs.contiguous(); mins = mins.contiguous();
  const uint8_t* sp = qs.data_ptr<uint8_t>();
  return dequantize(qs.size(0), qs.size(1) * 2, scale, bf16, [sp](int64_t i, int8_t* values) {
    _mm256_store_si256((__m256i*)values, nibbles(sp + i * 16));
  }, reinterpret_cast<const uint16_t*>(mins.data_ptr<at::Half>()));
}

torch::Tensor q5_dequantize(torch::Tensor qs, torch::Tensor qh, torch::Tensor scale, bool bf16) {
  TORCH_CHECK(qs.dtype() == torch::kUInt8 && qh.dtype() == torch::kInt32 && qs.dim() == 2 &&
              qh.size(1) * 16 == qs.size(1), "q5_dequantize: qs uint8 (N, K/2), qh int32 (N, K/32)");
  qs = qs.contiguous(); qh = qh.contiguous();
  const uint8_t* sp = qs.data_ptr<uint8_t>();
  const uint32_t* hp = reinterpret_cast<const uint32_t*>(qh.data_ptr<int32_t>());
  return dequantize(qs.size(0), qs.size(1) * 2, scale, bf16, [sp, hp](int64_t i, int8_t* values) {
    _mm256_store_si256((__m256i*)values, _mm256_sub_epi8(Q5Weights::unpack(sp + i * 16, hp[i]), _mm256_set1_epi8(16)));
  });
}

// RoPE for a few tokens (decode): out = x * cos + rotate_half(x) * sin in one pass, x (B, H, T, D)
// any strides, cos / sin (B or 1, 1, T, D); out contiguous. Six eager ops -> one.
torch::Tensor rope(torch::Tensor x, torch::Tensor cos, torch::Tensor sin) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && cos.dtype() == torch::kFloat32 && sin.dtype() == torch::kFloat32 &&
              x.dim() == 4 && cos.dim() == 4 && sin.sizes() == cos.sizes() && x.size(3) % 2 == 0 &&
              cos.size(2) == x.size(2) && cos.size(3) == x.size(3) && cos.size(1) == 1 &&
              (cos.size(0) == 1 || cos.size(0) == x.size(0)), "rope: shapes");
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), D = x.size(3), half = D / 2;
  auto out = torch::empty({B, H, T, D}, x.options());
  auto xa = x.accessor<float, 4>(), ca = cos.accessor<float, 4>(), sa = sin.accessor<float, 4>();
  auto oa = out.accessor<float, 4>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t bc = cos.size(0) == 1 ? 0 : b;
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t d = 0; d < half; ++d) {
          const float x0 = xa[b][h][t][d], x1 = xa[b][h][t][d + half];
          oa[b][h][t][d] = x0 * ca[bc][0][t][d] + (-x1) * sa[bc][0][t][d];
          oa[b][h][t][d + half] = x1 * ca[bc][0][t][d + half] + x0 * sa[bc][0][t][d + half];
        }
  }
  return out;
}
"""

_CPP_DECL = """
torch::Tensor q8_linear(torch::Tensor x, torch::Tensor q, torch::Tensor scale, c10::optional<torch::Tensor> bias, bool swiglu);
torch::Tensor q5_linear(torch::Tensor x, torch::Tensor qs, torch::Tensor qh, torch::Tensor scale,
                        c10::optional<torch::Tensor> bias, bool swiglu);
torch::Tensor q8_dequantize(torch::Tensor q, torch::Tensor scale, bool bf16);
torch::Tensor q5_dequantize(torch::Tensor qs, torch::Tensor qh, torch::Tensor scale, bool bf16);
torch::Tensor q4_linear(torch::Tensor x, torch::Tensor qs, torch::Tensor mins, torch::Tensor scale,
                        c10::optional<torch::Tensor> bias, bool swiglu);
torch::Tensor q4_dequantize(torch::Tensor qs, torch::Tensor mins, torch::Tensor scale, bool bf16);
torch::Tensor rope(torch::Tensor x, torch::Tensor cos, torch::Tensor sin);
"""


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

        return load_inline(name="longctx_q8", cpp_sources=[_CPP_DECL, _SOURCE], functions=["q8_linear", "q5_linear", "q8_dequantize", "q5_dequantize", "q4_linear", "q4_dequantize", "rope"],
                           extra_cflags=["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-ffp-contract=off"],
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


def q5_values(qs: torch.Tensor, qh: torch.Tensor) -> torch.Tensor:
    """The signed integers (N, K) int8 that GGUF Q5_0 weights are multiples of: low nibble | high
    bit << 4, minus 16. qs (N, K/2) holds element j of a group in the low nibble of byte j and
    element j + 16 in the high one; bit j of qh (N, K/32) is element j's high bit."""
    n = qs.shape[0]
    nibbles = torch.cat([(qs & 0x0F).view(n, -1, 16), (qs >> 4).view(n, -1, 16)], dim=-1).to(torch.int32)
    high = (qh.view(n, -1, 1) >> torch.arange(32, device=qh.device)) & 1  # (N, G, 32)
    return ((nibbles | (high << 4)) - 16).to(torch.int8).view(n, -1)


def q5_dequantize(qs: torch.Tensor, qh: torch.Tensor, scale: torch.Tensor,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w = (q - 16) * scale per group of 32, (N, K) in `dtype`."""
    module = _module()
    if module is not None and dtype in (torch.float32, torch.bfloat16):
        return module.q5_dequantize(qs, qh, scale, dtype == torch.bfloat16)
    return dequantize(q5_values(qs, qh), scale, dtype)


def q5_matmul(x: torch.Tensor, qs: torch.Tensor, qh: torch.Tensor, scale: torch.Tensor,
              bias: torch.Tensor | None = None, *, gated: bool = False) -> torch.Tensor:
    """As `q8_matmul` for Q5_0 weights kept in their 5.5 bits: the kernel unpacks each group in
    registers (the same products: the q5 values as unsigned 0..31 against int8 activations, the
    offset 16 taken off through the activations' group sums)."""
    module = _module()
    if module is None:
        return q8_matmul(x, q5_values(qs, qh), scale, bias, gated=gated)
    return module.q5_linear(x, qs, qh, scale, bias, gated)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor | None:
    """RoPE of a few float32 tokens in one call (what `rope.apply_rope` computes), or None where
    the kernel is not built."""
    module = _module()
    return None if module is None else module.rope(x, cos, sin)


def q4_pack(q: torch.Tensor) -> torch.Tensor:
    """q (N, K) in 0..15 -> qs (N, K/2) uint8: byte j of a group holds element j (low nibble) and
    element j + 16 (high), the layout of GGUF's Q4_0 / Q4_1 blocks."""
    n = q.shape[0]
    groups = q.to(torch.uint8).view(n, -1, 32)
    return (groups[..., :16] | (groups[..., 16:] << 4)).reshape(n, -1)


def q4_values(qs: torch.Tensor) -> torch.Tensor:
    """qs (N, K/2) -> q (N, K) uint8 in 0..15 (`q4_pack` undone)."""
    n = qs.shape[0]
    return torch.cat([(qs & 0x0F).view(n, -1, 16), (qs >> 4).view(n, -1, 16)], dim=-1).view(n, -1)


def q4_dequantize(qs: torch.Tensor, mins: torch.Tensor, scale: torch.Tensor,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w = q * scale + min per group of 32, (N, K) in `dtype`."""
    module = _module()
    if module is not None and dtype in (torch.float32, torch.bfloat16):
        return module.q4_dequantize(qs, mins, scale, dtype == torch.bfloat16)
    n = qs.shape[0]
    w = q4_values(qs).float().view(n, -1, GROUP) * scale.float()[..., None] + mins.float()[..., None]
    return w.view(n, -1).to(dtype)


def q4_reference(x: torch.Tensor, qs: torch.Tensor, mins: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """What `q4_matmul` computes, in plain PyTorch: int8 activations per group times the weight."""
    return quantize_activations(x) @ q4_dequantize(qs, mins, scale).t()


def q4_matmul(x: torch.Tensor, qs: torch.Tensor, mins: torch.Tensor, scale: torch.Tensor,
              bias: torch.Tensor | None = None, *, gated: bool = False) -> torch.Tensor:
    """As `q8_matmul` for 4-bit weights with a scale and a min per group of 32 (w = scale * q + min):
    the nibbles against int8 activations, the min through the activations' group sums."""
    module = _module()
    if module is None:
        y = q4_reference(x, qs, mins, scale)
        y = y if bias is None else y + bias
        return swiglu(y) if gated else y
    return module.q4_linear(x, qs, mins, scale, bias, gated)
