"""Will a training job fit on its device? The shared frame of the ES and GRPO memory plans, and the rows of
an evaluation pass that fit (`generation_rows`: the weights and forward-pass terms it shares with ES's plan).

A plan is a list of terms computed at start, before the large copies exist, logged one line each, and
checked against the device so that a job that cannot fit stops at once naming the option to change,
rather than after an hour of downloads and warm-up. A term either lives for the whole job or belongs to
a phase (generation, backward, optimizer step): phases do not overlap in time, so the peak is the
persistent terms plus the largest phase. It is an estimate: allocator fragmentation is not modelled
beyond a fixed headroom.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from esft.errors import EsftError
from esft.rollout.scoring import LOGITS_BUDGET

log = logging.getLogger(__name__)

GIB = 1 << 30
HEADROOM = 0.05
"""Fraction of the device kept free for the allocator, CUDA context and kernels' own scratch."""
CONTEXT_BYTES = GIB
"""CUDA context and library handles, held outside PyTorch's allocator."""


def size(nbytes: int) -> str:
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB else f"{nbytes / (1 << 20):.2f} MiB"


@dataclass(frozen=True)
class Term:
    name: str
    nbytes: int
    on_device: bool
    note: str
    phase: str = ""
    """Empty: held for the whole job; otherwise the phase it is held in (phases do not overlap)."""


@dataclass(frozen=True)
class MemoryPlan:
    terms: tuple[Term, ...]
    capacity: int | None
    """Bytes of device memory; None on CPU (nothing is checked)."""

    def phase_bytes(self, phase: str) -> int:
        return sum(t.nbytes for t in self.terms if t.on_device and t.phase == phase)

    @property
    def peak_phase(self) -> str:
        """The phase with the most device bytes ("" when the plan has no phases)."""
        phases = sorted({t.phase for t in self.terms if t.phase})
        return max(phases, key=self.phase_bytes, default="")

    @property
    def device_bytes(self) -> int:
        """Peak bytes on the device: the persistent terms plus the largest phase."""
        peak = self.peak_phase
        return self.phase_bytes("") + (self.phase_bytes(peak) if peak else 0)

    @property
    def host_bytes(self) -> int:
        return sum(t.nbytes for t in self.terms if not t.on_device)

    @property
    def usable(self) -> int | None:
        return None if self.capacity is None else int(self.capacity * (1 - HEADROOM)) - CONTEXT_BYTES

    def term(self, name: str) -> Term:
        return next(t for t in self.terms if t.name == name)

    def lines(self) -> list[str]:
        """One line per term, then the totals: what the training log shows."""
        out = [f"{t.name:<12} {size(t.nbytes):>12}  {'device' if t.on_device else 'host  '}  "
               f"{f'[{t.phase}] ' if t.phase else ''}{t.note}" for t in self.terms]
        total = f"on device {size(self.device_bytes)}"
        if self.peak_phase:
            total += f" (at its peak, {self.peak_phase})"
        total += f", in host memory {size(self.host_bytes)}"
        if self.capacity is not None:
            total += f"; usable {size(self.usable)} of {size(self.capacity)}"
        return out + [total]

    def options(self, section: str) -> list[str]:
        """The settings of `section` that would shrink the plan, each with what it frees."""
        raise NotImplementedError

    def check(self, section: str) -> None:
        """Raise naming the options of `section` (es, lbes, grpo, ...) that would make the plan fit."""
        if self.capacity is None or self.device_bytes <= self.usable:
            return
        raise EsftError(f"memory plan: {self.device_bytes / GIB:.1f} GiB on the device exceeds the usable "
                        f"{self.usable / GIB:.1f} GiB of {self.capacity / GIB:.1f} GiB; set "
                        + ", or ".join(self.options(section)))


def numel_bytes(tensors: Mapping[str, torch.Tensor], element_size: int | None = None) -> int:
    return sum(t.numel() * (element_size or t.element_size()) for t in tensors.values())


def weights_term(model: torch.nn.Module) -> Term:
    """The model's parameters and buffers in their own dtypes, held for the whole job."""
    weights = numel_bytes(dict(model.named_parameters())) + numel_bytes(dict(model.named_buffers()))
    return Term("weights", weights, True, f"{sum(p.numel() for p in model.parameters()):,} parameters")


def pass_terms(model: torch.nn.Module, rows: int, prompt_tokens: int, new_tokens: int,
               rows_note: str) -> tuple[Term, Term, Term]:
    """The KV cache, one layer's prefill activations and the logits of one forward pass of `rows` sequences:
    the longest prompt (or scored text) of `prompt_tokens` plus `new_tokens` generated (0: prefill-only
    scoring). rows_note: what the rows are, for the log. Works on a model built on the meta device."""
    cfg = model.config
    dtype_bytes = next(model.parameters()).element_size()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    seq = prompt_tokens + new_tokens
    kv_per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * dtype_bytes
    activations = rows * prompt_tokens * (3 * cfg.intermediate_size + 4 * cfg.hidden_size) * dtype_bytes
    if new_tokens:  # generation keeps one position's logits per row, and generate's fp32 copy of them
        logits, logits_note = rows * cfg.vocab_size * (dtype_bytes + 4), f"{rows} rows × 1 position"
    else:  # chunked scoring: a bounded slice of fp32 logits and its log-softmax
        logits, logits_note = 2 * 4 * LOGITS_BUDGET, "scoring slice and its log-softmax"
    return (Term("kv_cache", rows * seq * kv_per_token, True, f"{rows_note} per pass × {seq} tokens"),
            Term("activations", activations, True, f"one layer's prefill of {rows} × {prompt_tokens} tokens"),
            Term("logits", logits, True, logits_note))


def device_capacity(device: torch.device) -> int | None:
    """Total memory of a CUDA device; None for CPU (and other devices, which are not checked)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory


def log_and_check(plan: MemoryPlan, section: str) -> None:
    """Log the plan, one line per term, then raise if it cannot fit."""
    for line in plan.lines():
        log.info("memory plan: %s", line)
    plan.check(section)


def generation_rows(model: torch.nn.Module, prompt_tokens: int, new_tokens: int, wanted: int,
                    capacity: int | None) -> int:
    """The most rows, at most `wanted`, whose generation pass (weights, KV cache, prefill activations,
    logits) fits `capacity`: evaluation sizes its batches so, since a fixed batch that fits short prompts
    overflows on long ones (BoolQ passages at 4B: 256 rows need 57-71 GiB of KV). None (CPU) checks
    nothing."""
    if capacity is None:
        return wanted
    empty, one = (MemoryPlan((weights_term(model), *pass_terms(model, rows, prompt_tokens, new_tokens,
                                                               f"{rows} rows")), capacity) for rows in (0, 1))
    per_row = one.device_bytes - empty.device_bytes
    rows = (empty.usable - empty.device_bytes) // per_row
    if rows < 1:
        raise EsftError(f"memory plan: one row of {prompt_tokens} prompt + {new_tokens} new tokens needs "
                        f"{one.device_bytes / GIB:.1f} GiB of the usable {one.usable / GIB:.1f} GiB; set a "
                        f"smaller max_new_tokens or a smaller model")
    return min(wanted, rows)
