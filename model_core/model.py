"""Qwen2 (dense and MoE) in plain PyTorch, read top-down; Llama checkpoints run through it too.

Follows transformers' `Qwen2ForCausalLM` / `Qwen2MoeForCausalLM` and keeps their parameter names,
so checkpoints load without a key map: RMSNorm, SwiGLU, grouped-query attention with QKV bias,
RoPE, tied embeddings; MoE layers with softmax top-k routing (optionally renormalised) plus a
sigmoid-gated shared expert. Llama is the same graph without the QKV bias.

Departures from transformers:
- State is explicit: `forward(input_ids, ctx)` takes a `ForwardContext` with positions, the KV
  cache and its rows, the attention backend and mode. No hidden cache objects.
- The KV cache (`KVCache`) is preallocated with static shapes and indexed by position.
- `forward` returns logits of the last position only unless asked (full-sequence logits at 128K
  would be 37 GiB for Qwen2's vocabulary).
- Attention *modes* (`ATTENTION_MODES`: plain RoPE attention; DCA registers another) decide how
  positions enter attention; attention *backends* (`attention.ATTENTION`) compute it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model_core.attention import ATTENTION
from model_core.config import ModelConfig
from model_core.dca import dca_attention
from model_core.rope import apply_rope, cos_sin, rope_for


class KVCache:
    """Keys and values of every layer, allocated once: (layers, batch, kv_heads, max_len, head_dim).

    Slot s of row b holds the token at position s of that row, so a row's length is its next
    position. Keys are stored as the attention mode writes them (plain mode: rotated by RoPE).
    """

    def __init__(self, config: ModelConfig, batch: int, max_len: int, dtype: torch.dtype,
                 device: torch.device | str):
        shape = (config.num_hidden_layers, batch, config.num_key_value_heads, max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len

    def write(self, layer: int, rows: slice, positions: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> None:
        """Store k, v (B, Hkv, T, D) for tokens at `positions` (B, T) of `rows`."""
        if k.shape[2] == 1 and k.shape[0] > 1:  # batched decode: each row at its own position
            pos = positions[:, 0]
            batch_idx = torch.arange(rows.start, rows.start + k.shape[0], device=k.device)
            self.k[layer, batch_idx, :, pos] = k[:, :, 0]
            self.v[layer, batch_idx, :, pos] = v[:, :, 0]
        else:  # prefill, or one row: a contiguous span at the same position in every row
            start = int(positions[0, 0])
            self.k[layer, rows, :, start : start + k.shape[2]] = k
            self.v[layer, rows, :, start : start + k.shape[2]] = v

    def read(self, layer: int, rows: slice, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the first `length` slots: (B, Hkv, length, D)."""
        return self.k[layer, rows, :, :length], self.v[layer, rows, :, :length]


@dataclass
class ForwardContext:
    """Everything a forward pass needs besides the token ids."""

    positions: torch.Tensor  # (B, T) absolute positions of the input tokens
    cache: KVCache | None = None  # None: attend within the input only (a one-shot forward)
    rows: slice = field(default_factory=lambda: slice(0, 1))  # cache rows of the B inputs
    backend: str = "sdpa"  # key of attention.ATTENTION
    mode: str = "plain"  # key of ATTENTION_MODES
    mode_options: dict[str, Any] = field(default_factory=dict)  # e.g. DCA chunk sizes
    last_only: bool = True  # logits of the last position only
    cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None  # filled by the model per forward
    # (B,) length of the sequence each row belongs to: the whole prompt while it is prefilled in
    # chunks; None means kv_lens (decode, one-shot forward). DCA's temperature reads it.
    seq_lens: torch.Tensor | None = None
    mode_state: dict[str, Any] = field(default_factory=dict)  # per-forward scratch of the mode

    @property
    def kv_lens(self) -> torch.Tensor:
        return self.positions[:, -1] + 1  # (B,) keys each row sees after this step


def plain_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: ForwardContext,
                    layer: int, rope: RotaryEmbedding) -> torch.Tensor:
    """RoPE at the tokens' own positions, then causal attention over the cache (or the input)."""
    cos, sin = ctx.cos_sin
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if ctx.cache is None:
        out, _ = ATTENTION[ctx.backend](q, k, v, causal=True)
        return out
    ctx.cache.write(layer, ctx.rows, ctx.positions, k, v)
    kv_lens = ctx.kv_lens
    k_all, v_all = ctx.cache.read(layer, ctx.rows, int(kv_lens.max()))
    uniform = q.shape[0] == 1 or bool((kv_lens == kv_lens[0]).all())
    out, _ = ATTENTION[ctx.backend](q, k_all, v_all, causal=True, kv_lens=None if uniform else kv_lens)
    return out


AttentionMode = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, ForwardContext, int, "RotaryEmbedding"],
                         torch.Tensor]
ATTENTION_MODES: dict[str, AttentionMode] = {"plain": plain_attention, "dca": dca_attention}


class RotaryEmbedding(nn.Module):
    """Inverse frequencies and attention factor from config.json's rope settings."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        inv_freq, self.attention_factor = rope_for(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return cos_sin(self.inv_freq, positions, self.attention_factor, dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As transformers: normalise in float32, cast back, then scale (one fused kernel).
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SparseMoeBlock(nn.Module):
    """Top-k routed experts plus a shared expert scaled by sigmoid(shared_expert_gate(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(
            MLP(config.hidden_size, config.moe_intermediate_size) for _ in range(config.num_experts)
        )
        self.shared_expert = MLP(config.hidden_size, config.shared_expert_intermediate_size)
        self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        flat = x.reshape(-1, hidden)  # (N, H)
        probs = F.softmax(self.gate(flat), dim=-1, dtype=torch.float)  # (N, E)
        weights, experts = torch.topk(probs, self.top_k, dim=-1)  # (N, K)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)
        out = torch.zeros_like(flat)
        for expert_idx in experts.unique().tolist():
            token_idx, slot = torch.where(experts == expert_idx)
            expert_out = self.experts[expert_idx](flat[token_idx]) * weights[token_idx, slot, None]
            out.index_add_(0, token_idx, expert_out)
        shared = torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        return (out + shared).reshape(batch, seq, hidden)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, ctx: ForwardContext, rope: RotaryEmbedding) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)  # (B, Hq, T, D)
        k = self.k_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        out = ATTENTION_MODES[ctx.mode](q, k, v, ctx, self.layer_idx, rope)  # (B, Hq, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        if config.is_sparse_layer(layer_idx):
            self.mlp = SparseMoeBlock(config)
        else:
            self.mlp = MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, ctx: ForwardContext, rope: RotaryEmbedding) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), ctx, rope)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)

    def forward(self, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # (B, T, H)
        if ctx.mode == "plain":
            ctx.cos_sin = self.rotary_emb(ctx.positions, x.dtype)
        for layer in self.layers:
            x = layer(x, ctx, self.rotary_emb)
        return self.norm(x)


class Qwen2ForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Qwen2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """Logits (B, V) of each row's last token, or (B, T, V) when ctx.last_only is False."""
        hidden = self.model(input_ids, ctx)
        if ctx.last_only:
            hidden = hidden[:, -1]
        return self.lm_head(hidden).float()

    def reset_rope(self) -> None:
        """Recompute the rotary buffer after loading weights onto a device (built on meta)."""
        inv_freq, factor = rope_for(self.config)
        rotary = self.model.rotary_emb
        rotary.inv_freq = inv_freq.to(self.lm_head.weight.device)
        rotary.attention_factor = factor


def forward_full(model: Qwen2ForCausalLM, input_ids: torch.Tensor, *, backend: str = "sdpa",
                 mode: str = "plain", mode_options: dict[str, Any] | None = None) -> torch.Tensor:
    """Full-sequence logits (B, T, V) without a cache: the reference the engine is checked against."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
    ctx = ForwardContext(positions=positions, backend=backend, mode=mode,
                         mode_options=mode_options or {}, last_only=False)
    return model(input_ids, ctx)
