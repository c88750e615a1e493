"""A KV-cached greedy decoder for Qwen3, Qwen2 and Llama models that runs many members' rows in one loop.

Rows are laid out member-major, [N members, B prompts]. Every weight is read through a `MemberWeights`
provider, so one loop serves three purposes: `SharedWeights` (the unperturbed model for every row: the
`pure` inference limit), per-member full-rank weights (`MemberStack`: ES's `batched` members, interpolation
points, direction probes) and low-rank offsets (ES's `lowrank`).
Which parts a layer has (q/k norms as in Qwen3, projection biases as in Qwen2 or Llama's bias flags) is
read off the model's modules. The numerics follow transformers (fp32 RMSNorm, the model's own rotary
module, left-padding positions as in `generate`), so greedy tokens match `model.generate` in the common
case; HF's per-step overhead, which dominates small models, is avoided.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
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
        """A 1-D weight (norm gain, bias), shaped to broadcast against an `ndim`-dimensional [N, ...] input."""


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


class MemberStack(SharedWeights):
    """Explicit full-rank per-member weights: `stacked[name]` is [N, ...] (member m's tensor at index m);
    tensors not in `stacked` are the model's own, shared by every member. Serves any set of weight
    variants (ES members, interpolation points, direction probes)."""

    def __init__(self, model: torch.nn.Module, stacked: dict[str, torch.Tensor]) -> None:
        super().__init__(model)
        self.stacked = stacked
        self.fused_stacked: dict[tuple[str, ...], torch.Tensor] = {}
        self.vectors: dict[tuple[str, int], torch.Tensor] = {}
        """1-D stacked tensors viewed to broadcast against [N, ...] activations, per (name, ndim)."""

    def linear(self, x: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        stacked = [n in self.stacked for n in names]
        if not any(stacked):
            return super().linear(x, names)
        if not all(stacked):
            return torch.cat([self.linear(x, (n,)) for n in names], dim=-1)
        w = self.fused_stacked.get(names)
        if w is None:  # [N, in, out]: bmm streams it far faster than a transposed view on CPU
            fused = torch.cat([self.stacked[n] for n in names], dim=1)
            w = self.fused_stacked[names] = fused.transpose(1, 2).contiguous()
        return torch.bmm(x, w)

    def embed(self, ids: torch.Tensor, name: str) -> torch.Tensor:
        w = self.stacked.get(name)
        if w is None:
            return super().embed(ids, name)
        n, vocab, dim = w.shape
        offsets = torch.arange(n, device=ids.device)[:, None] * vocab
        return F.embedding(ids + offsets, w.view(n * vocab, dim))

    def vector(self, name: str, ndim: int) -> torch.Tensor:
        w = self.vectors.get((name, ndim))
        if w is None:
            w = self.stacked.get(name)
            if w is None:
                return super().vector(name, ndim)
            w = self.vectors[name, ndim] = w.view(w.shape[0], *([1] * (ndim - 2)), w.shape[-1])
        return w


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' RMSNorm (Qwen3, Qwen2, Llama): normalise in fp32, cast back, then scale."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


_ARCHITECTURES = ("qwen3", "qwen2", "llama")
"""model_type values whose layers this decoder reproduces (pre-norm RMSNorm attention and gated MLP)."""

_POSITIONAL_ROPE = ("default", "linear", "llama3", "yarn")
"""Rope types whose cos/sin depend on the position alone: one table from the model's rotary module then
serves every step. dynamic and longrope rescale with the sequence length as `generate` grows it."""

_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu}


@dataclass(frozen=True)
class _Projection:
    """Linear layers of the same input, computed as one fused product; biases None where they have none."""

    weights: tuple[str, ...]
    biases: tuple[str, ...] | None


def _projection(model: torch.nn.Module, modules: Sequence[str]) -> _Projection:
    """The fused projection of `modules`, with their biases if the modules have them (all or none)."""
    has_bias = [model.get_submodule(m).bias is not None for m in modules]
    if any(has_bias) != all(has_bias):
        raise EsftError(f"population-batched decoding fuses {', '.join(modules)}: they must all have biases or none")
    return _Projection(tuple(f"{m}.weight" for m in modules),
                       tuple(f"{m}.bias" for m in modules) if all(has_bias) else None)


@dataclass(frozen=True)
class _LayerNames:
    """One decoder layer's parameter names; q_norm/k_norm are None where the layer has none (Qwen2, Llama)."""

    input_norm: str
    qkv: _Projection
    q_norm: str | None
    k_norm: str | None
    o: _Projection
    post_norm: str
    gate_up: _Projection
    down: _Projection


def _layer_names(model: torch.nn.Module, i: int) -> _LayerNames:
    """Layer i's structure, read off its modules rather than the model type."""
    p = f"model.layers.{i}."
    a, m = p + "self_attn.", p + "mlp."
    attn = model.get_submodule(p + "self_attn")
    if getattr(attn, "sliding_window", None) is not None:
        raise EsftError(f"population-batched decoding does not support sliding-window attention (layer {i})")

    def head_norm(name: str) -> str | None:
        return f"{a}{name}.weight" if isinstance(getattr(attn, name, None), torch.nn.Module) else None

    return _LayerNames(p + "input_layernorm.weight", _projection(model, [a + "q_proj", a + "k_proj", a + "v_proj"]),
                       head_norm("q_norm"), head_norm("k_norm"), _projection(model, [a + "o_proj"]),
                       p + "post_attention_layernorm.weight",
                       _projection(model, [m + "gate_proj", m + "up_proj"]), _projection(model, [m + "down_proj"]))


class PopulationDecoder:
    """Greedy decoding of [N, B] rows of a Qwen3, Qwen2 or Llama causal LM through a `MemberWeights` provider."""

    def __init__(self, model: torch.nn.Module) -> None:
        cfg = model.config
        if cfg.model_type not in _ARCHITECTURES:
            raise EsftError(f"population-batched decoding supports {', '.join(_ARCHITECTURES)} models, not "
                            f"{cfg.model_type!r}: use es.mode inplace")
        self.rotary = model.model.rotary_emb
        rope = getattr(self.rotary, "rope_type", "default")
        if rope not in _POSITIONAL_ROPE:
            raise EsftError(f"population-batched decoding supports rope types {', '.join(_POSITIONAL_ROPE)}, "
                            f"not {rope!r}: use es.mode inplace")
        if cfg.hidden_act not in _ACTIVATIONS:
            raise EsftError(f"population-batched decoding supports activations {', '.join(_ACTIVATIONS)}, "
                            f"not {cfg.hidden_act!r}: use es.mode inplace")
        self.model = model
        self.layers = [_layer_names(model, i) for i in range(cfg.num_hidden_layers)]
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.act = _ACTIVATIONS[cfg.hidden_act]
        head = _projection(model, ["lm_head"])
        tied = model.lm_head.weight is model.model.embed_tokens.weight
        self.head = replace(head, weights=("model.embed_tokens.weight",)) if tied else head

    def _biases(self, w: MemberWeights, members: int) -> dict[_Projection, torch.Tensor]:
        """Every biased projection's biases, concatenated like its fused weights, [N, 1, Σ out]: read once
        per generation (the provider's biases are fixed for it), so a step adds them in one op."""
        projections = [p for layer in self.layers for p in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        return {p: torch.cat([w.vector(n, 3).expand(members, 1, -1) for n in p.biases], dim=-1)
                for p in projections + [self.head] if p.biases is not None}

    @staticmethod
    def _project(w: MemberWeights, biases: dict[_Projection, torch.Tensor], x: torch.Tensor,
                 p: _Projection) -> torch.Tensor:
        """x·Wᵀ (+ b) of a fused projection; bias-free models (Qwen3) pay no extra op."""
        y = w.linear(x, p.weights)
        return y if p.biases is None else y + biases[p]

    def _heads(self, w: MemberWeights, x: torch.Tensor, norm: str | None, heads: int, n: int,
               t: int) -> torch.Tensor:
        """[N, B·T, heads·D] -> [N·B, heads, T, D], RMS-normalised per head where the layer has a q/k norm."""
        x = x.reshape(n, -1, heads, self.head_dim)
        if norm is not None:
            x = _rms_norm(x, w.vector(norm, 4), self.eps)
        return x.view(-1, t, heads, self.head_dim).transpose(1, 2)

    def _layer(self, w: MemberWeights, biases: dict[_Projection, torch.Tensor], layer: _LayerNames,
               x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor],
               start: int, mask: torch.Tensor) -> torch.Tensor:
        n, rows, _ = x.shape
        t = cos.shape[2]
        b = rows // t
        h = _rms_norm(x, w.vector(layer.input_norm, 3), self.eps)
        qkv = self._project(w, biases, h, layer.qkv)
        q, k, v = qkv.split([self.heads * self.head_dim] + [self.kv_heads * self.head_dim] * 2, dim=-1)
        v = v.reshape(n * b, t, self.kv_heads, self.head_dim)
        q = _rotate(self._heads(w, q, layer.q_norm, self.heads, n, t), cos, sin)
        k = _rotate(self._heads(w, k, layer.k_norm, self.kv_heads, n, t), cos, sin)
        keys, values = cache
        keys[:, :, start:start + t] = k
        values[:, :, start:start + t] = v.transpose(1, 2)
        end = start + t
        attn = F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], attn_mask=mask,
                                              scale=self.head_dim ** -0.5, enable_gqa=True)
        x = x + self._project(w, biases, attn.transpose(1, 2).reshape(n, rows, self.heads * self.head_dim), layer.o)
        h = _rms_norm(x, w.vector(layer.post_norm, 3), self.eps)
        gate, up = self._project(w, biases, h, layer.gate_up).chunk(2, dim=-1)
        return x + self._project(w, biases, self.act(gate) * up, layer.down)

    def _logits(self, w: MemberWeights, biases: dict[_Projection, torch.Tensor], ids: torch.Tensor,
                positions: torch.Tensor, rope: tuple, caches: list, start: int, mask: torch.Tensor) -> torch.Tensor:
        """Next-token logits [N, B, V] after feeding ids [N, B, T] at `positions` [N·B, T]."""
        n, b, t = ids.shape
        x = w.embed(ids.reshape(n, b * t), "model.embed_tokens.weight")
        cos, sin = rope[0][positions].unsqueeze(1), rope[1][positions].unsqueeze(1)
        for layer, cache in zip(self.layers, caches):
            x = self._layer(w, biases, layer, x, cos, sin, cache, start, mask)
        last = x.view(n, b, t, -1)[:, :, -1]
        return self._project(w, biases, _rms_norm(last, w.vector("model.norm.weight", 3), self.eps), self.head)

    @torch.inference_mode()
    def generate(self, weights: MemberWeights, members: int, prompt_ids: Sequence[Sequence[int]],
                 max_new_tokens: int, pad_id: int, stop_ids: Sequence[int]) -> torch.Tensor:
        """Greedy new tokens [N, B, ≤max_new_tokens] of every member on every prompt; a row ends on any
        of `stop_ids` (`esft.rollout.stop_ids`) and is padded after it.

        The KV cache holds exactly these N·B rows for the longest of these prompts plus max_new_tokens:
        callers bound memory by calling with fewer members or prompts (`esft.methods.es.batched.pass_shape`).
        """
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
                  for _ in self.layers]
        # prefill: causal over real tokens; each position also sees itself so pad rows stay finite
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
        mask = (causal & valid[:, None, :width]) | torch.eye(width, dtype=torch.bool, device=device)
        biases = self._biases(weights, members)
        logits = self._logits(weights, biases, ids, positions, rope, caches, 0, mask[:, None])
        stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
        alive = torch.ones(members, b, dtype=torch.bool, device=device)
        out = []
        for step in range(max_new_tokens):
            token = torch.where(alive, logits.argmax(-1), pad_id)
            out.append(token)
            alive &= ~torch.isin(token, stops)
            if step + 1 == max_new_tokens or not bool(alive.any()):
                break
            pos = width + step
            valid[:, pos] = True
            logits = self._logits(weights, biases, token[..., None], (lengths + step)[:, None], rope, caches, pos,
                                  valid[:, None, None, :pos + 1])
        return torch.stack(out, dim=-1)
