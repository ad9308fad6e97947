"""Qwen2 (dense and MoE) in plain PyTorch, read top-down; Llama checkpoints run through it too.

Follows transformers' `Qwen2ForCausalLM` / `Qwen2MoeForCausalLM` and keeps their parameter names,
so checkpoints load without a key map: RMSNorm, SwiGLU, grouped-query attention with QKV bias,
RoPE, tied embeddings; MoE layers with softmax top-k routing (optionally renormalised) plus a
sigmoid-gated shared expert. Llama is the same graph without the QKV bias.

Departures from transformers:
- State is explicit: `forward(input_ids, ctx)` takes a `model_core.cache.ForwardContext` with
  positions, the KV cache, the attention backend and mode. No hidden cache objects; the caches
  live in model_core/cache.py.
- A batch may be packed: input (1, N) holding several sequences (`ctx.segments`); the linear
  layers run over all N tokens at once, attention per sequence.
- `forward` returns logits of the last position only unless asked (full-sequence logits at 128K
  would be 37 GiB for Qwen2's vocabulary), or of the packed tokens at `ctx.logits_at`.
- Attention *modes* (`modes.ATTENTION_MODES`: "plain" RoPE attention, "dca") decide how positions
  enter attention; this file only looks them up. Attention *backends* (`attention.ATTENTION`)
  compute it.

Read top-down: rotary embedding, norm, MLP, MoE block, attention, decoder layer, model, LM head.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model_core.cache import ForwardContext
from model_core.config import ModelConfig
from model_core.modes import ATTENTION_MODES
from model_core.rope import cos_sin, rope_for


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
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:  # the same arithmetic, one op
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # As transformers: normalise in float32, cast back, then scale.
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.gate_up_proj: nn.Module | None = None  # silu(gate) * up in one call, if fused after loading

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is not None:
            return self.down_proj(self.gate_up_proj(x))
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
        self.qkv_proj: nn.Module | None = None  # q, k, v in one multiply, if fused after loading

    def forward(self, x: torch.Tensor, ctx: ForwardContext, rope: RotaryEmbedding) -> torch.Tensor:
        batch, seq, _ = x.shape
        if self.qkv_proj is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            kv_size = self.num_kv_heads * self.head_dim
            q, k, v = self.qkv_proj(x).split([self.num_heads * self.head_dim, kv_size, kv_size], dim=-1)
        q = q.view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)  # (B, Hq, T, D)
        k = k.view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        mode = ATTENTION_MODES[ctx.mode]
        if ctx.segments is None:
            out = mode(q, k, v, ctx, self.layer_idx, rope)  # (B, Hq, T, D)
        elif len(ctx.segments) == 1:  # one sequence packed: it is the whole input
            out = mode(q, k, v, ctx.segments[0].ctx, self.layer_idx, rope)
        else:  # packed sequences (B = 1): each attends over its own cache
            out = torch.cat([
                mode(q[:, :, s.start : s.stop], k[:, :, s.start : s.stop], v[:, :, s.start : s.stop],
                     s.ctx, self.layer_idx, rope)
                for s in ctx.segments
            ], dim=2)
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
            for s in ctx.segments or ():
                s.ctx.cos_sin = tuple(t[:, :, s.start : s.stop] for t in ctx.cos_sin)
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
        """Logits (B, V) of each row's last token, (B, T, V) when ctx.last_only is False, or
        (len(ctx.logits_at), V) for a packed input."""
        hidden = self.model(input_ids, ctx)
        if ctx.logits_at is not None:
            hidden = hidden[0, ctx.logits_at]
        elif ctx.last_only:
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
