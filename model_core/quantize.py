"""Weights kept quantized in memory: a transform applied after the model is built.

`quantize_model(model, mode, gguf_tensors)` replaces every `nn.Linear` of a built model by a
module with the same `forward(x)` contract that keeps its weight quantized and multiplies with
PyTorch's CPU weight-only kernels, and the embedding by one that dequantizes only the rows it
looks up. Modes (`QUANTIZE`):

- `"gguf"` (the default for GGUF files): every quantized tensor becomes int8 in groups of 32
  with a float16 scale each (`Q8Linear`, GGUF's own Q8_0 layout): Q8_0, Q5_0 and Q4_0 blocks
  exactly (their values are small integers times the block's scale), Q4_K / Q6_K / Q4_1
  requantized from their dequantized values (8 bits per group of 32: error < 0.4% of the
  group's largest weight). Chosen by measurement (docs/quantization.md): faster than the int4 and
  per-channel int8 kernels on this CPU, and closer to float32. Where the q8 kernel cannot be
  built, the older plan `GGUF_PLAN` runs (Q4 blocks exactly as int4, the rest int8 per channel).
  The embedding keeps the file's blocks and dequantizes looked-up rows.
- `"int8"`: every linear weight int8: groups of 32 (`Q8Linear`) where the q8 kernel runs, per
  output channel (`Int8Linear`, `scale = max|w| / 127`) where it does not.
- `"int4"`: every linear weight int4 in groups of 32 along K, asymmetric (min/max), Q4 blocks
  exactly as in `"gguf"`.
- `"int4x2"`: as `"int4"`, but weights that are not Q4 blocks get a second int4 pass for the
  residual (`Int4x2Linear`).
- `"bf16"`: every linear weight in bfloat16 (twice int8's memory; the accuracy reference).
- `"none"`: nothing replaced (the float32 reference path the parity tests use).

`Q8Linear` multiplies with `model_core.kernels.q8_matmul` (our AVX2 kernel: activations to
int8 per group of 32, integer dot products, as llama.cpp does) for up to `Q8Linear.kernel_rows`
rows, and dequantizes + GEMM above (prefill). The PyTorch kernels the other modules use
(PyTorch 2.13, aten/src/ATen/native/cpu/int4mm_kernel.cpp, int8mm_kernel.cpp):
- `_weight_int4pack_mm_for_cpu(x, packed, group, scale_and_zero)`: weight (N, K) as 4-bit
  q in 0..15, `_convert_weight_to_int4pack_for_cpu(q int32 (N, K), 1)` packs it (on AVX-512 in
  blocks of 64 output rows, on AVX2 of 32, two rows per byte); `scale_and_zero` is (K / group, N, 2) and the
  weight is `w = (q - 8) * scale + zero`; group 32, 64, 128 or 256. Vectorized (AVX-512/AVX2)
  only for bfloat16 activations; float32 / float16 fall to a scalar loop.
- `_weight_int8pack_mm(x, w int8 (N, K), scales (N,))`: `y = x @ (w * scales).T`, vectorized
  for bfloat16 on AVX-512 only (a scalar loop on AVX2); K a multiple of 16.
Both are GEMV-shaped (4 rows of x at a time, no K tiling), so for more than `GEMV_ROWS` rows
(prefill) the weight is dequantized for the call and oneDNN's GEMM does the work: in bfloat16
where the CPU has AVX-512 BF16 or AMX, in float32 elsewhere (`gemm_dtype`; on AVX2 a bf16 GEMM
is emulated and 5x slower).
Activations are cast to bfloat16 at the kernel and the output back to the model's dtype, so the
rest of the model (norms, attention, KV cache) keeps its dtype.

Departures from gpt-fast's `quantize.py` (the model followed): weights come straight from GGUF
blocks, not only from float checkpoints; one module per kind with a dequantize() reference the
tests compare against; the CPU kernels instead of the CUDA tinygemm.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model_core import kernels
from model_core.errors import CheckpointError

QUANTIZE = ("gguf", "int8", "int4", "int4x2", "bf16", "none")
GROUP = kernels.GROUP  # 32 along K: a GGUF block (int4 groups, q8 groups)
GEMV_ROWS = 8  # up to this many rows the weight-only kernels; above, dequantize + bf16 GEMM
COMPUTE = torch.bfloat16

# GGUF tensor type name -> the kind `"gguf"` mode stores it as
GGUF_PLAN = {"Q4_0": "int4", "Q4_1": "int4", "Q4_K": "int4",
             "Q5_0": "int8", "Q8_0": "int8", "Q6_K": "int8",
             "F32": "bf16", "F16": "bf16", "BF16": "bf16"}
Q4_TYPES = ("Q4_0", "Q4_1", "Q4_K")  # with our kernels: Q4Linear (4 bits, a scale and a min per 32)
# with the q8 kernel: these GGUF types become Q8Linear (int8 per group of 32), or Q5/Q4 as above
GGUF_Q8 = {"Q4_0", "Q4_1", "Q4_K", "Q5_0", "Q5_1", "Q5_K", "Q8_0", "Q6_K"}


@dataclass
class GGUFTensor:
    """One tensor of a GGUF file, kept as its raw blocks: (rows, bytes per row) uint8."""

    blocks: np.ndarray
    type_name: str
    shape: tuple[int, int]  # (rows, columns) as torch sees the weight

    def dequantize(self, rows: np.ndarray | None = None) -> torch.Tensor:
        import gguf

        blocks = self.blocks if rows is None else self.blocks[rows]
        values = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[self.type_name])
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(-1, self.shape[1])

    def int8_per_channel(self, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """`int8_per_channel` of the dequantized weight, computed `chunk` rows at a time, so that
        peak memory holds one chunk in float32 instead of the whole matrix (a 151,936-row head
        is 545 MB in float32)."""
        parts = [int8_per_channel(self.dequantize(np.arange(start, min(start + chunk, self.shape[0]))))
                 for start in range(0, self.shape[0], chunk)]
        return torch.cat([q for q, _ in parts]), torch.cat([s for _, s in parts])

    def owned(self) -> GGUFTensor:
        """A copy whose blocks are in memory, not a view of the file's map (which then closes)."""
        return GGUFTensor(np.array(self.blocks), self.type_name, self.shape)

    def q8_groups(self, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
        """(q int8 (N, K), scale float16 (N, K/32)) with w = q * scale per group of 32, computed
        `chunk` rows at a time. Q8_0 / Q5_0 / Q4_0 hold w = d * integer with |integer| <= 127 per
        block of 32, so q = w / d is exact; other types are requantized (`q8_groups`)."""
        exact = self.type_name in ("Q8_0", "Q5_0", "Q4_0")
        qs, scales = [], []
        for start in range(0, self.shape[0], chunk):
            rows = np.arange(start, min(start + chunk, self.shape[0]))
            w = self.dequantize(rows)
            if exact:
                size = {"Q8_0": 34, "Q5_0": 22, "Q4_0": 18}[self.type_name]
                d = torch.from_numpy(_f16(self.blocks[rows].reshape(len(rows), -1, size)[..., 0:2]))
                q, scale = _q8_with_scale(w, d.half())
            else:
                q, scale = q8_groups(w)
            qs.append(q)
            scales.append(scale)
        return torch.cat(qs), torch.cat(scales)

    def q5_parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A Q5_0 tensor's (qs uint8 (N, K/2), qh int32 (N, K/32), scale float16 (N, K/32)),
        read straight from its blocks (22 bytes: scale, 32 high bits, 16 bytes of nibbles)."""
        rows, cols = self.shape
        b = np.ascontiguousarray(self.blocks).reshape(rows, cols // 32, 22)
        scale = torch.from_numpy(np.ascontiguousarray(b[..., 0:2]).view(np.float16)[..., 0])
        qh = torch.from_numpy(np.ascontiguousarray(b[..., 2:6]).view(np.int32)[..., 0])
        qs = torch.from_numpy(np.ascontiguousarray(b[..., 6:22]).reshape(rows, cols // 2))
        return qs, qh, scale

    def int4_groups(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(q (N, K) in 0..15, scale (N, K/32), offset (N, K/32)) with w = scale * q + offset,
        read exactly from Q4_0 / Q4_1 / Q4_K blocks; None for other types."""
        rows, cols = self.shape
        raw = self.blocks.reshape(rows, -1)
        if self.type_name in ("Q4_0", "Q4_1"):
            size = 18 if self.type_name == "Q4_0" else 20
            b = raw.reshape(rows, cols // 32, size)
            d = _f16(b[..., 0:2])
            offset = -8 * d if self.type_name == "Q4_0" else _f16(b[..., 2:4])
            scale = d
        elif self.type_name == "Q4_K":
            import gguf

            b = raw.reshape(rows * cols // 256, 144)
            d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
            sc, mn = gguf.quants.Q4_K.get_scale_min(b[:, 4:16])
            scale = (d[:, None] * sc.astype(np.float32)).reshape(rows, cols // 32)
            offset = (-dmin[:, None] * mn.astype(np.float32)).reshape(rows, cols // 32)
        else:
            return None
        w = self.dequantize()
        scale, offset = torch.from_numpy(scale), torch.from_numpy(offset)
        s, o = scale.repeat_interleave(GROUP, 1), offset.repeat_interleave(GROUP, 1)
        q = torch.where(s == 0, 0.0, (w - o) / torch.where(s == 0, 1.0, s)).round().clamp(0, 15)
        return q.to(torch.int32), scale, offset


@functools.lru_cache(maxsize=1)
def gemm_dtype() -> torch.dtype:
    """The dtype of the dequantize + GEMM path (prefill): bfloat16 where the CPU multiplies it
    natively (AVX-512 BF16 or AMX), float32 elsewhere: on an AVX2 CPU a bf16 GEMM is emulated
    and measured 5x slower than float32 (256 x 896 by 896 x 4864: 140 ms vs 28 ms, 2 threads)."""
    return COMPUTE if {"avx512_bf16", "amx_bf16"} & kernels.cpu_flags() else torch.float32


def _f16(two_bytes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(two_bytes).view(np.float16)[..., 0].astype(np.float32)


# ---- the linear modules ------------------------------------------------------------------


class QuantizedLinear(nn.Module):
    """Base: y = x W^T + b with W kept in some packed form; same contract as nn.Linear."""

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = None if bias is None else nn.Parameter(bias.detach().float(), requires_grad=False)
        # The engine reads lm_head.weight.dtype / .device (KV cache dtype, RoPE buffer device):
        # an empty stand-in keeps that contract without a float copy of the weight.
        self.register_buffer("_dtype_probe", torch.empty(0), persistent=False)

    @property
    def weight(self) -> torch.Tensor:
        return self._dtype_probe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        if rows.shape[0] <= GEMV_ROWS or not self.can_dequantize():
            y = self.matmul(rows.to(COMPUTE).contiguous())
        else:
            dtype = gemm_dtype()
            y = F.linear(rows.to(dtype), self.dequantize(dtype))
        y = y.to(x.dtype if x.is_floating_point() else torch.float32)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def can_dequantize(self) -> bool:
        return True

    def matmul(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight (N, K) these packed values stand for: the reference the tests check."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(QuantizedLinear):
    """int8 per output channel: w = q * scale[n]; `_weight_int8pack_mm`."""

    def __init__(self, q: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__(q.shape[1], q.shape[0], bias)
        self.register_buffer("q", q.to(torch.int8).contiguous())
        self.register_buffer("scales", scales.to(COMPUTE).contiguous())

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Linear:
        return cls(*int8_per_channel(weight), bias)

    def matmul(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(rows, self.q, self.scales)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.q.to(dtype) * self.scales.to(dtype)[:, None]


class Int4Linear(QuantizedLinear):
    """int4 in groups of 32 along K: w = (q - 8) * scale + zero; `_weight_int4pack_mm_for_cpu`."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                 bias: torch.Tensor | None = None):
        n, k = q.shape
        super().__init__(k, n, bias)
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            q.to(torch.int32).contiguous(), 1))
        # (K/32, N, 2): the kernel's layout, scale then zero
        self.register_buffer("scale_and_zero", torch.stack([scale.t(), zero.t()], dim=-1).to(COMPUTE).contiguous())

    @classmethod
    def from_groups(cls, q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                    bias: torch.Tensor | None = None) -> Int4Linear:
        """From w = scale * q + offset (q in 0..15, per group of 32): zero = offset + 8 * scale."""
        return cls(q, scale, offset + 8 * scale, bias)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int4Linear:
        return cls.from_groups(*int4_groups(weight), bias)

    def matmul(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(rows, self.packed, GROUP, self.scale_and_zero)

    def can_dequantize(self) -> bool:
        return _int4_layout_known()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        q = _unpack_int4(self.packed, self.out_features, self.in_features).to(dtype)
        scale = self.scale_and_zero[..., 0].t().to(dtype).repeat_interleave(GROUP, 1)
        zero = self.scale_and_zero[..., 1].t().to(dtype).repeat_interleave(GROUP, 1)
        return (q - 8) * scale + zero


class Int4x2Linear(QuantizedLinear):
    """Two int4 passes: w = main + residual, each `Int4Linear` (the residual quantized from what
    the first leaves); about 8 bits per group of 32 at twice int4's cost, still below int8's."""

    def __init__(self, main: Int4Linear, residual: Int4Linear, bias: torch.Tensor | None = None):
        super().__init__(main.in_features, main.out_features, bias)
        self.main, self.residual = main, residual

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int4x2Linear:
        main = Int4Linear.from_float(weight)
        residual = Int4Linear.from_float(weight.float() - main.dequantize())
        return cls(main, residual, bias)

    def matmul(self, rows: torch.Tensor) -> torch.Tensor:
        return self.main.matmul(rows) + self.residual.matmul(rows)

    def can_dequantize(self) -> bool:
        return _int4_layout_known()

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.main.dequantize(dtype) + self.residual.dequantize(dtype)


class BF16Linear(QuantizedLinear):
    """The weight in bfloat16: oneDNN's GEMM / GEMV."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__(weight.shape[1], weight.shape[0], bias)
        self.register_buffer("w", weight.to(COMPUTE).contiguous())

    def matmul(self, rows: torch.Tensor) -> torch.Tensor:
        return F.linear(rows, self.w)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.w.to(dtype)


class GroupLinear(QuantizedLinear):
    """Weights as integers in groups of 32 along K with one float16 scale per group: a kernel of
    ours (`model_core.kernels`, int8 activations per group, as llama.cpp) for up to `kernel_rows`
    rows (decode, small batches), dequantize + GEMM in `gemm_dtype()` above (prefill: measured
    faster there, docs/quantization.md). `gated`: the rows are [gate; up] and forward returns
    silu(gate) * up, (..., N / 2) (`fuse_projections`)."""

    kernel_rows = 64

    def __init__(self, shape: tuple[int, int], scale: torch.Tensor, bias: torch.Tensor | None, gated: bool,
                 **packed: torch.Tensor):
        super().__init__(shape[1], shape[0], bias)
        self.register_buffer("scale", scale.to(torch.float16).contiguous())
        for name, values in packed.items():  # the format's own arrays (q; qs, qh; qs, mins)
            self.register_buffer(name, values.contiguous())
        self.gated = gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() <= self.kernel_rows * self.in_features:
            if x.dtype == torch.float32:  # decode: one call, no reshapes or casts around it
                return self.kernel(x)
            return self.kernel(x.float()).to(x.dtype)
        dtype = gemm_dtype()  # bfloat16 where the CPU multiplies it natively: 4.6x float32 at 128 rows
        y = F.linear(x.to(dtype), self.dequantize(dtype)).float()
        y = y if self.bias is None else y + self.bias
        return (kernels.swiglu(y) if self.gated else y).to(x.dtype)

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Q8Linear(GroupLinear):
    """int8 in groups of 32 along K (GGUF's Q8_0 layout): `kernels.q8_matmul`."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None,
                 gated: bool = False):
        super().__init__(q.shape, scale, bias, gated, q=q.to(torch.int8))

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Q8Linear:
        return cls(*q8_groups(weight), bias)

    @classmethod
    def concat(cls, parts: list[GroupLinear], gated: bool = False) -> Q8Linear:
        """One module for several with the same input: their rows stacked (bias zero where a part
        has none), so one call computes them all."""
        parts = [p.to_q8() if isinstance(p, Q5Linear) else p for p in parts]
        return cls(torch.cat([p.q for p in parts]), torch.cat([p.scale for p in parts]), _stacked_bias(parts), gated)

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.q8_matmul(x, self.q, self.scale, self.bias, gated=self.gated)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return kernels.dequantize(self.q, self.scale, dtype)


class Q5Linear(GroupLinear):
    """GGUF Q5_0 blocks kept in their 5.5 bits per weight: w = scale * (q - 16), q = low nibble
    (qs, two per byte) | high bit (qh, 32 per group) << 4. `kernels.q5_matmul` unpacks each group
    in registers: 35% fewer bytes per decode step than int8 for the same exact weights."""

    def __init__(self, qs: torch.Tensor, qh: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor | None = None, gated: bool = False):
        super().__init__((qs.shape[0], qs.shape[1] * 2), scale, bias, gated, qs=qs.to(torch.uint8),
                         qh=qh.to(torch.int32))

    @classmethod
    def concat(cls, parts: list[Q5Linear], gated: bool = False) -> Q5Linear:
        return cls(torch.cat([p.qs for p in parts]), torch.cat([p.qh for p in parts]),
                   torch.cat([p.scale for p in parts]), _stacked_bias(parts), gated)

    def to_q8(self) -> Q8Linear:
        """The same weights as int8 groups (exact: q - 16 is in -16..15)."""
        return Q8Linear(kernels.q5_values(self.qs, self.qh), self.scale, self.bias, self.gated)

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.q5_matmul(x, self.qs, self.qh, self.scale, self.bias, gated=self.gated)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return kernels.q5_dequantize(self.qs, self.qh, self.scale, dtype)


class Q4Linear(GroupLinear):
    """4-bit weights with a scale and a min per group of 32, w = scale * q + min: GGUF's Q4_0 and
    Q4_1 blocks as stored, Q4_K's sub-blocks with their scale and min as float16 (d * sc and
    -dmin * m rounded once). `kernels.q4_matmul`: 0.625 bytes a weight against int8's 1.06."""

    def __init__(self, qs: torch.Tensor, mins: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor | None = None, gated: bool = False):
        super().__init__((qs.shape[0], qs.shape[1] * 2), scale, bias, gated, qs=qs.to(torch.uint8),
                         mins=mins.to(torch.float16))

    @classmethod
    def from_groups(cls, q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                    bias: torch.Tensor | None = None) -> Q4Linear:
        """From w = scale * q + offset (q in 0..15 per group of 32, `GGUFTensor.int4_groups`)."""
        return cls(kernels.q4_pack(q), offset.half(), scale.half(), bias)

    @classmethod
    def concat(cls, parts: list[Q4Linear], gated: bool = False) -> Q4Linear:
        return cls(torch.cat([p.qs for p in parts]), torch.cat([p.mins for p in parts]),
                   torch.cat([p.scale for p in parts]), _stacked_bias(parts), gated)

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.q4_matmul(x, self.qs, self.mins, self.scale, self.bias, gated=self.gated)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return kernels.q4_dequantize(self.qs, self.mins, self.scale, dtype)


def _stacked_bias(parts: list[GroupLinear]) -> torch.Tensor | None:
    if all(p.bias is None for p in parts):
        return None
    return torch.cat([p.bias if p.bias is not None else torch.zeros(p.out_features) for p in parts])


def q8_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per group of 32 along K: scale = max|w| / 127 (as float16), q = round(w / scale)."""
    n, k = weight.shape
    d = (weight.float().reshape(n, k // GROUP, GROUP).abs().amax(-1) / 127).half()
    return _q8_with_scale(weight, d)


def _q8_with_scale(weight: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) with q = round(w / scale) per group of 32 (`kernels.round_to_int8`; llama.cpp
    writes Q5_0 / Q4_0 scales signed)."""
    n, k = weight.shape
    return kernels.round_to_int8(weight.reshape(n, k // GROUP, GROUP), scale).reshape(n, k).to(torch.int8), scale


def int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: scale = max|w| / 127 (rounded to bf16 first, as stored)."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).to(COMPUTE).float()
    q = (w / scale[:, None]).round().clamp(-127, 127).to(torch.int8)
    return q, scale


def int4_groups(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per group of 32 along K: w ~ scale * q + offset, q = round((w - min) / scale)."""
    n, k = weight.shape
    w = weight.float().reshape(n, k // GROUP, GROUP)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    q = ((w - lo[..., None]) / scale[..., None]).round().clamp(0, 15)
    return q.reshape(n, k).to(torch.int32), scale, lo


@functools.lru_cache(maxsize=1)
def _int4_block_rows() -> int | None:
    """Rows per block of the packed layout `_convert_weight_to_int4pack_for_cpu` makes on this
    CPU (64 on AVX-512, 32 on AVX2; found once by packing a known matrix), None if neither."""
    q = torch.randint(0, 16, (128, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    except RuntimeError:
        return None
    return next((b for b in (64, 32) if torch.equal(_unpack_int4(packed, 128, 64, b), q)), None)


def _int4_layout_known() -> bool:
    return _int4_block_rows() is not None


def _unpack_int4(packed: torch.Tensor, n: int, k: int, block: int | None = None) -> torch.Tensor:
    """q (N, K) back from the kernel's packing: per block of B rows (B = 64 on AVX-512, 32 on
    AVX2) a (K, B/2) byte array whose byte d holds row d (low nibble) and row d + B/2 (high)."""
    block = block or _int4_block_rows()
    blocks = packed.reshape(n // block, k, block // 2)
    low, high = blocks & 0xF, blocks >> 4
    rows = torch.cat([low, high], dim=-1)  # (N/B, K, B): row j of each block
    return rows.transpose(1, 2).reshape(n, k).to(torch.int32)


# ---- the embedding ----------------------------------------------------------------------


class QuantizedEmbedding(nn.Module):
    """Rows dequantized on lookup, from GGUF blocks or from int8 rows (w = q * scale[row])."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, blocks: GGUFTensor | None = None,
                 q: torch.Tensor | None = None, scales: torch.Tensor | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.out_dtype = num_embeddings, embedding_dim, dtype
        self.blocks = blocks
        if q is not None:
            self.register_buffer("q", q)
            self.register_buffer("scales", scales.float())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        if self.blocks is not None:
            rows = self.blocks.dequantize(flat.cpu().numpy()).to(ids.device)
        else:
            rows = self.q[flat].float() * self.scales[flat, None]
        return rows.to(self.out_dtype).reshape(*ids.shape, self.embedding_dim)


def release_memory(mapped: np.ndarray | None = None) -> None:
    """Hand memory the load no longer needs back to the system: glibc keeps freed float buffers
    in its heap (malloc_trim returns them), and the pages of a GGUF file's map that were read
    stay resident until dropped (MADV_DONTNEED: a private, unwritten file map re-reads them from
    the file if touched again). Without this the 0.5B GGUF's load peaks at 2.5 GB, not ~1 GB."""
    base = mapped
    while base is not None and not hasattr(base, "_mmap"):
        base = getattr(base, "base", None)
    if base is not None and base._mmap is not None and hasattr(mmap, "MADV_DONTNEED"):
        base._mmap.madvise(mmap.MADV_DONTNEED)
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# ---- the transform ----------------------------------------------------------------------


def quantize_model(model: nn.Module, mode: str, gguf_tensors: dict[str, GGUFTensor] | None = None) -> nn.Module:
    """Replace the model's linear layers (and embedding) by quantized ones, in place.

    gguf_tensors: the raw blocks by Hugging Face parameter name (`model.layers.0.mlp.up_proj.weight`)
    for the weights a GGUF file gave; the model's own (meta) parameters stand in for them.
    Float weights (safetensors, or GGUF F32 tensors) are quantized from the model's parameters.
    """
    if mode not in QUANTIZE:
        raise CheckpointError(f"unknown quantize mode {mode!r}; choose one of {', '.join(QUANTIZE)}")
    gguf_tensors = gguf_tensors or {}
    if mode == "none":
        if gguf_tensors:
            raise CheckpointError("quantize='none' needs dequantized weights, not raw GGUF blocks")
        return model
    dtype = model.model.norm.weight.dtype
    embed_name = "model.embed_tokens.weight"
    tied = getattr(model.config, "tie_word_embeddings", False)
    embedding = model.model.embed_tokens
    if tied:  # the head is built from the embedding's blocks / weight
        gguf_tensors = {**gguf_tensors}
        if embed_name in gguf_tensors:
            gguf_tensors["lm_head.weight"] = gguf_tensors[embed_name]
    float_embedding = None if embed_name in gguf_tensors else embedding.weight
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                full = f"{name}.{child_name}" if name else child_name
                source = gguf_tensors.get(f"{full}.weight")
                weight = float_embedding if tied and full == "lm_head" and float_embedding is not None else child.weight
                setattr(module, child_name, _quantized_linear(mode, source, weight, child.bias, full))
                if source is not None:
                    release_memory(source.blocks)
    model.model.embed_tokens = _quantized_embedding(mode, gguf_tensors.get(embed_name), embedding, dtype)
    for module in model.modules():  # the engine's KV cache takes lm_head.weight's dtype: the model's
        if isinstance(module, QuantizedLinear):
            module._dtype_probe = torch.empty(0, dtype=dtype)
    leftover = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if leftover:
        raise CheckpointError(f"quantize: {len(leftover)} weights left unquantized, e.g. {leftover[:3]}")
    return fuse_projections(model)


FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def fuse_projections(model: nn.Module) -> nn.Module:
    """Where q, k, v (and an MLP's gate and up) are all `GroupLinear`, one module does the work of
    each group: fewer kernel calls per decode step (gpt-fast fuses wqkv the same way). The fused
    module is of the parts' own kind when they share one, int8 when Q5 and int8 mix (exact for the
    Q5 parts), and there is no fusion otherwise. The fused MLP module returns silu(gate) * up
    itself (the kernel applies it to its output)."""
    for module in model.modules():
        for fused, parts in FUSED.items():
            if not hasattr(module, fused) or getattr(module, fused) is not None:
                continue
            linears = [getattr(module, name, None) for name in parts]
            if any(not isinstance(m, GroupLinear) or m.gated for m in linears):
                continue
            kinds = {type(m) for m in linears}
            if len(kinds) == 1 or kinds <= {Q5Linear, Q8Linear}:
                kind = kinds.pop() if len(kinds) == 1 else Q8Linear
                setattr(module, fused, kind.concat(linears, gated=fused == "gate_up_proj"))
                for name in parts:
                    delattr(module, name)
    return model


def _quantized_linear(mode: str, source: GGUFTensor | None, weight: torch.Tensor,
                      bias: torch.Tensor | None, name: str) -> QuantizedLinear:
    q8 = kernels.available()
    if source is not None:
        if mode == "gguf":
            kind = "int8" if q8 and source.type_name in GGUF_Q8 else GGUF_PLAN.get(source.type_name, "int8")
        else:
            kind = mode
        if kind == "int8" and q8 and source.shape[1] % GROUP == 0:
            if mode == "gguf" and source.type_name == "Q5_0":
                return Q5Linear(*source.q5_parts(), bias)
            if mode == "gguf" and source.type_name in Q4_TYPES and (groups := source.int4_groups()) is not None:
                return Q4Linear.from_groups(*groups, bias)
            return Q8Linear(*source.q8_groups(), bias)
        if kind in ("int4", "int4x2") and (groups := source.int4_groups()) is not None:
            return Int4Linear.from_groups(*groups, bias)
        if kind == "int8" and source.shape[1] % 16 == 0:  # by row chunks: no float copy of a whole head
            return Int8Linear(*source.int8_per_channel(), bias)
        dense = source.dequantize()
    else:
        if weight.device.type == "meta":
            raise CheckpointError(f"{name}: no weight to quantize")
        kind = "bf16" if mode == "gguf" else mode  # a float tensor of a GGUF file
        dense = weight.detach().float()
    n, k = dense.shape
    if kind in ("int4", "int4x2") and (k % GROUP or n % 64):
        kind = "int8"
    if kind == "int8" and q8 and k % GROUP == 0:
        return Q8Linear.from_float(dense, bias)
    if kind == "int8" and k % 16:
        kind = "bf16"
    build: dict[str, Any] = {"int8": Int8Linear.from_float, "int4": Int4Linear.from_float,
                             "int4x2": Int4x2Linear.from_float, "bf16": BF16Linear}
    return build[kind](dense, bias)


def _quantized_embedding(mode: str, source: GGUFTensor | None, embedding: nn.Embedding,
                         dtype: torch.dtype) -> QuantizedEmbedding:
    vocab, hidden = embedding.num_embeddings, embedding.embedding_dim
    if source is not None:
        return QuantizedEmbedding(vocab, hidden, blocks=source.owned(), dtype=dtype)
    q, scales = int8_per_channel(embedding.weight.detach())
    return QuantizedEmbedding(vocab, hidden, q=q, scales=scales, dtype=dtype)
