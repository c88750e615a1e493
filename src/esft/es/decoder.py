"""A KV-cached greedy decoder for Qwen3 models that runs a whole population in one generation loop.

Rows are laid out member-major, [N members, B prompts]. Every weight is read through a `MemberWeights`
provider, so one loop serves three purposes: `SharedWeights` (the unperturbed model for every row: the
`pure` inference limit), per-member full-rank weights (`batched`) and low-rank offsets (`lowrank`).
The numerics follow transformers' Qwen3 (fp32 RMSNorm, its rotary module, left-padding positions as
in `generate`), so greedy tokens match `model.generate` in the common case; HF's per-step overhead,
which dominates small models, is avoided.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from esft.errors import EsftError


class MemberWeights(Protocol):
    """How each member's weights enter the forward pass; activations are [N, rows per member, ...]."""

    def linear(self, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        """x·Wₘᵀ for member m = x's leading index, x [N, R, in]; several names (projections of the same
        input) are computed as one fused product and returned concatenated along the last dimension."""

    def embed(self, ids: torch.Tensor, name: str) -> torch.Tensor:
        """Rows of member m's embedding for ids [N, R] -> [N, R, d]."""

    def vector(self, name: str, ndim: int) -> torch.Tensor:
        """A 1-D weight (norm gain), shaped to broadcast against an `ndim`-dimensional [N, ...] input."""


class SharedWeights:
    """Every member reads the live model's weights: the unperturbed `pure` reference."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.weights = {n: p.detach() for n, p in model.named_parameters(remove_duplicate=False)}
        self.fused: dict[tuple[str, ...], torch.Tensor] = {}

    def linear_weight(self, names: tuple[str, ...]) -> torch.Tensor:
        """The shared weights of `names` stacked along the output dimension [Σ out, in], built once."""
        w = self.fused.get(names)
        if w is None:
            w = self.fused[names] = torch.cat([self.weights[n] for n in names])
        return w

    def linear(self, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        return F.linear(x, self.linear_weight(names))

    def embed(self, ids: torch.Tensor, name: str) -> torch.Tensor:
        return F.embedding(ids, self.weights[name])

    def vector(self, name: str, ndim: int) -> torch.Tensor:
        return self.weights[name]


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Qwen3RMSNorm: normalise in fp32, cast back, then scale."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class Qwen3Decoder:
    """Greedy decoding of [N, B] rows of a Qwen3ForCausalLM through a `MemberWeights` provider."""

    def __init__(self, model: torch.nn.Module) -> None:
        cfg = model.config
        if cfg.model_type != "qwen3":
            raise EsftError(f"population-batched decoding supports qwen3 models, not {cfg.model_type!r}")
        if getattr(cfg, "attention_bias", False) or getattr(cfg, "sliding_window", None) and getattr(
                cfg, "use_sliding_window", False):
            raise EsftError("population-batched decoding does not support attention bias or sliding windows")
        self.model = model
        self.layers = cfg.num_hidden_layers
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.act = {"silu": F.silu, "gelu": F.gelu}[cfg.hidden_act]
        self.rotary = model.model.rotary_emb
        tied = model.lm_head.weight is model.model.embed_tokens.weight
        self.head_name = "model.embed_tokens.weight" if tied else "lm_head.weight"

    def _layer(self, w: MemberWeights, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               cache: tuple[torch.Tensor, torch.Tensor], start: int, mask: torch.Tensor) -> torch.Tensor:
        n, rows, _ = x.shape
        t = cos.shape[2]
        b = rows // t
        p = f"model.layers.{i}."
        h = _rms_norm(x, w.vector(p + "input_layernorm.weight", 3), self.eps)
        a = p + "self_attn."
        qkv = w.linear(h, (a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"))
        q, k, v = qkv.split([self.heads * self.head_dim] + [self.kv_heads * self.head_dim] * 2, dim=-1)
        q = q.reshape(n, rows, self.heads, self.head_dim)
        k = k.reshape(n, rows, self.kv_heads, self.head_dim)
        v = v.reshape(n * b, t, self.kv_heads, self.head_dim)
        q = _rms_norm(q, w.vector(p + "self_attn.q_norm.weight", 4), self.eps)
        k = _rms_norm(k, w.vector(p + "self_attn.k_norm.weight", 4), self.eps)
        q = _rotate(q.view(n * b, t, self.heads, self.head_dim).transpose(1, 2), cos, sin)
        k = _rotate(k.view(n * b, t, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
        keys, values = cache
        keys[:, :, start:start + t] = k
        values[:, :, start:start + t] = v.transpose(1, 2)
        end = start + t
        attn = F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], attn_mask=mask,
                                              scale=self.head_dim ** -0.5, enable_gqa=True)
        x = x + w.linear(attn.transpose(1, 2).reshape(n, rows, self.heads * self.head_dim),
                         (a + "o_proj.weight",))
        h = _rms_norm(x, w.vector(p + "post_attention_layernorm.weight", 3), self.eps)
        gate, up = w.linear(h, (p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight")).chunk(2, dim=-1)
        return x + w.linear(self.act(gate) * up, (p + "mlp.down_proj.weight",))

    def _logits(self, w: MemberWeights, ids: torch.Tensor, positions: torch.Tensor, rope: tuple, caches: list,
                start: int, mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits [N, B, V] after feeding ids [N, B, T] at `positions` [N·B, T]."""
        n, b, t = ids.shape
        x = w.embed(ids.reshape(n, b * t), "model.embed_tokens.weight")
        cos, sin = rope[0][positions].unsqueeze(1), rope[1][positions].unsqueeze(1)
        for i in range(self.layers):
            x = self._layer(w, i, x, cos, sin, caches[i], start, mask)
        last = x.view(n, b, t, -1)[:, :, -1]
        return w.linear(_rms_norm(last, w.vector("model.norm.weight", 3), self.eps), (self.head_name,))

    @torch.inference_mode()
    def generate(self, weights: MemberWeights, members: int, prompt_ids: Sequence[Sequence[int]],
                 max_new_tokens: int, pad_id: int, eos_id: int) -> torch.Tensor:
        """Greedy new tokens [N, B, ≤max_new_tokens] of every member on every prompt (pad after eos)."""
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        b, width = len(prompt_ids), max(len(r) for r in prompt_ids)
        ids = torch.full((b, width), pad_id, dtype=torch.long)
        valid = torch.zeros((b, width + max_new_tokens), dtype=torch.bool)
        for r, row in enumerate(prompt_ids):
            ids[r, width - len(row):] = torch.tensor(row, dtype=torch.long)
            valid[r, width - len(row):] = True
        lengths = torch.tensor([len(r) for r in prompt_ids])
        rows = members * b
        ids = ids.to(device).expand(members, b, width)
        valid = valid.to(device).repeat(members, 1)
        lengths = lengths.to(device).repeat(members)
        positions = (valid[:, :width].long().cumsum(-1) - 1).clamp(min=0)
        total = width + max_new_tokens
        # the rotary module's own cos/sin (same values per position), computed once for every position
        rope = tuple(r[0] for r in self.rotary(torch.empty(0, dtype=dtype, device=device),
                                                torch.arange(total, device=device)[None]))
        shape = (rows, self.kv_heads, total, self.head_dim)
        caches = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                  for _ in range(self.layers)]
        # prefill: causal over real tokens; each position also sees itself so pad rows stay finite
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        mask = (causal & valid[:, None, :width]) | torch.eye(width, dtype=torch.bool, device=device)
        logits = self._logits(weights, ids, positions, rope, caches, 0, mask[:, None])
        alive = torch.ones(members, b, dtype=torch.bool, device=device)
        out = []
        for step in range(max_new_tokens):
            token = torch.where(alive, logits.argmax(-1), pad_id)
            out.append(token)
            alive &= token != eos_id
            if step + 1 == max_new_tokens or not bool(alive.any()):
                break
            pos = width + step
            valid[:, pos] = True
            logits = self._logits(weights, token[..., None], (lengths + step)[:, None], rope, caches, pos,
                                  valid[:, None, None, :pos + 1])
        return torch.stack(out, dim=-1)
