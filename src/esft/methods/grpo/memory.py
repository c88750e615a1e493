"""Will a GRPO job fit on its device? Its memory plan (`esft.memory` has the frame).

Held for the whole job: the fp32 weights and the optimizer's states (AdamW: two fp32 moments per entry;
bitsandbytes' 8-bit AdamW: one byte each for tensors of at least 4096 entries, plus a fp32 scale per
block of 256, except the weights of every `nn.Embedding`, which transformers' Trainer registers with
bitsandbytes for 32-bit states: Qwen3-4B's tied 389M-entry embedding keeps 3.1 GB of moments, not 0.78). The rest belongs to one of three phases that do not overlap in time (gradients are freed
after every optimizer step, before the next generation):

- generation: TRL samples a whole step's completions at once (per_device_train_batch_size ·
  gradient_accumulation_steps rows) into a KV cache of prompt plus completion tokens, with one layer's
  prefill activations and the last position's logits;
- backward: the fp32 gradients and one micro-batch's activations (per_device_train_batch_size rows of
  prompt plus completion tokens). Per token a Qwen3/Llama layer saves about 8·h bytes in fp32 (the
  residual stream entering each of its two norms) and 2h + 3q + 3kv + 4i entries in the compute dtype
  (normed inputs, q/k/v around their norms and rotary embedding, the attention output, the gated MLP's
  four tensors); gradient checkpointing keeps only each layer's fp32 input and recomputes one layer at a
  time (counted twice: the layer and its gradients). Attention runs as a fused kernel (no length × length
  scores) and TRL's fused LM head scores completions in tiles (no [rows, length, vocab] logits);
- optimizer step: the gradients and, for `adamw_torch` (foreach), one fp32 buffer per entry; the fused
  and 8-bit kernels update in place.

Under bf16 autocast a forward also caches a bf16 copy of each weight it casts (generation and backward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from esft.memory import GIB, MemoryPlan, Term

OPTIMIZERS: dict[str, tuple[int, int]] = {
    "adamw_torch": (8, 4),
    "adamw_torch_fused": (8, 0),
    "adamw_8bit": (2, 0),
    "paged_adamw_8bit": (2, 0),
}
"""optim -> (state bytes per entry of a quantised tensor, step buffer bytes per entry); `grpo.optim`."""
EIGHT_BIT_MIN_SIZE = 4096
"""bitsandbytes keeps fp32 states for tensors with fewer entries (its `min_8bit_size`)."""
BLOCK = 256
"""Entries per fp32 scale of bitsandbytes' blockwise 8-bit states (two states)."""


def _optimizer_bytes(model: torch.nn.Module, optim: str) -> int:
    """Bytes of the optimizer states of `model`'s trainable parameters (a tied tensor counts once)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if OPTIMIZERS[optim][0] == 8:
        return sum(8 * p.numel() for p in params)
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    return sum(2 * p.numel() + 8 * math.ceil(p.numel() / BLOCK)
               if p.numel() >= EIGHT_BIT_MIN_SIZE and id(p) not in embeddings else 8 * p.numel() for p in params)


@dataclass(frozen=True)
class GRPOMemoryPlan(MemoryPlan):
    optim: str = "adamw_torch"
    gradient_checkpointing: bool = True
    bf16: bool = False
    eight_bit_states: int = 0
    """Bytes of the optimizer states under adamw_8bit: what switching to it would keep."""

    def options(self, section: str) -> list[str]:
        options = []
        if OPTIMIZERS[self.optim][0] == 8:
            saved = self.term("optimizer").nbytes - self.eight_bit_states
            options.append(f"{section}.optim: adamw_8bit (bitsandbytes, the gpu extra; frees about "
                           f"{saved / GIB:.1f} GiB)")
        if self.optim == "adamw_torch":
            options.append(f"{section}.optim: adamw_torch_fused (frees the "
                           f"{self.term('step_buffer').nbytes / GIB:.1f} GiB step buffer)")
        act, kv = self.term("activations"), self.term("kv_cache")
        if not self.gradient_checkpointing:
            options.append(f"{section}.gradient_checkpointing: true (activations {act.nbytes / GIB:.1f} GiB)")
        if not self.bf16:
            options.append(f"{section}.bf16: true (halves activations and the KV cache)")
        return options + [
            f"a smaller {section}.per_device_train_batch_size (activations {act.nbytes / GIB:.1f} GiB: {act.note})",
            f"fewer completions per step, {section}.per_device_train_batch_size · gradient_accumulation_steps "
            f"(KV cache {kv.nbytes / GIB:.1f} GiB: {kv.note})",
        ]


def plan_grpo(model: torch.nn.Module, *, optim: str, gradient_checkpointing: bool, bf16: bool, micro_batch: int,
              generation_rows: int, prompt_tokens: int, completion_tokens: int,
              capacity: int | None = None) -> GRPOMemoryPlan:
    """The plan of GRPO on `model` (fp32 weights, all trainable). micro_batch: completions per forward and
    backward; generation_rows: completions sampled at once; prompt_tokens: the longest prompt;
    completion_tokens: max_completion_length. Works on a model built on the meta device."""
    cfg = model.config
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    act_bytes = 2 if bf16 else next(model.parameters()).element_size()
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * head_dim, (getattr(cfg, "num_key_value_heads", None) or
                                                 cfg.num_attention_heads) * head_dim
    seq = prompt_tokens + completion_tokens
    tokens = micro_batch * seq
    layer = act_bytes * (2 * h + 3 * q + 3 * kv + 4 * i) + 8 * h  # saved bytes per token and layer
    if gradient_checkpointing:
        activations, how = tokens * (layers * 4 * h + 2 * layer), "checkpointed: layer inputs + one layer"
    else:
        activations, how = tokens * (layers + 1) * layer, f"all {layers} layers"
    casts = [Term("autocast", 2 * n, True, "bf16 copies of the weights cached by autocast", phase)
             for phase in ("generation", "backward")] if bf16 else []
    buffer = OPTIMIZERS[optim][1]
    terms = (
        Term("weights", weights, True, f"fp32, {n:,} parameters"),
        Term("optimizer", _optimizer_bytes(model, optim), True, f"{optim} states"),
        Term("kv_cache", generation_rows * seq * 2 * layers * kv * act_bytes, True,
             f"{generation_rows} completions × {seq} tokens", "generation"),
        Term("prefill", generation_rows * prompt_tokens * (3 * i + 4 * h) * act_bytes, True,
             f"one layer's prefill of {generation_rows} × {prompt_tokens} tokens", "generation"),
        Term("logits", generation_rows * cfg.vocab_size * (act_bytes + 8), True,
             f"{generation_rows} rows × 1 position, fp32 copy and probabilities", "generation"),
        *casts,
        Term("gradients", 4 * n, True, "fp32", "backward"),
        Term("activations", activations, True, f"{micro_batch} completions × {seq} tokens, {how}", "backward"),
        Term("gradients", 4 * n, True, "fp32", "optimizer step"),
        Term("step_buffer", buffer * n, True, "foreach AdamW's fp32 temporaries" if buffer else
             f"none: {optim} updates in place", "optimizer step"),
    )
    return GRPOMemoryPlan(terms, capacity, optim, gradient_checkpointing, bf16, _optimizer_bytes(model, "adamw_8bit"))
