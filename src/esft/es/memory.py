"""Will an ES-engine run fit on its device? A plan computed at start, before the large copies exist.

The terms are the tensors an `inplace` run holds at once: the model's weights; the fp32 master θ and
θ_0 (each on the device or in host memory, `es.master_device` / `es.theta0_device`); the per-tensor
workspace of a member write or an update (a noise draw and a sum, fp32, of the largest tensor, plus
θ's device copy when the master is in host memory); the KV cache of one generation (or scoring) batch;
the prefill activations of one layer; and the logits of a batch (one position per row when generating,
a bounded slice when scoring). It is an estimate, meant to fail fast with the option to change rather
than after an hour of downloads and warm-up; it does not model allocator fragmentation beyond a fixed
headroom.
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


@dataclass(frozen=True)
class MemoryPlan:
    terms: tuple[Term, ...]
    capacity: int | None
    """Bytes of device memory; None on CPU (nothing is checked)."""

    @property
    def device_bytes(self) -> int:
        return sum(t.nbytes for t in self.terms if t.on_device)

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
        out = [f"{t.name:<12} {size(t.nbytes):>12}  {'device' if t.on_device else 'host  '}  {t.note}"
               for t in self.terms]
        total = f"on device {size(self.device_bytes)}, in host memory {size(self.host_bytes)}"
        if self.capacity is not None:
            total += f"; usable {size(self.usable)} of {size(self.capacity)}"
        return out + [total]

    def check(self, section: str) -> None:
        """Raise naming the options of `section` (es, lbes, ...) that would make the plan fit."""
        if self.capacity is None or self.device_bytes <= self.usable:
            return
        options = [f"{section}.{key}: cpu (frees {self.term(name).nbytes / GIB:.1f} GiB)"
                   for key, name in (("master_device", "master"), ("theta0_device", "theta0"))
                   if self.term(name).on_device]
        kv = self.term("kv_cache")
        options.append(f"a smaller {section}.generation_batch_size (KV cache {kv.nbytes / GIB:.1f} GiB: {kv.note})")
        raise EsftError(f"memory plan: {self.device_bytes / GIB:.1f} GiB on the device exceeds the usable "
                        f"{self.usable / GIB:.1f} GiB of {self.capacity / GIB:.1f} GiB; set "
                        + ", or ".join(options))


def _numel_bytes(tensors: Mapping[str, torch.Tensor], element_size: int | None = None) -> int:
    return sum(t.numel() * (element_size or t.element_size()) for t in tensors.values())


def plan_memory(model: torch.nn.Module, trainable: Mapping[str, torch.Tensor], *, rows: int, prompt_tokens: int,
                new_tokens: int, master_device: str = "model", theta0_device: str = "model",
                capacity: int | None = None) -> MemoryPlan:
    """The plan of an `inplace` run evolving `trainable` (θ_0 and the master cover these) of `model`.

    rows: sequences per forward batch; prompt_tokens: the longest prompt (or scored text); new_tokens:
    generated tokens per row (0 for prefill-only scoring). Works on a model built on the meta device.
    """
    cfg = model.config
    dtype_bytes = next(model.parameters()).element_size()
    weights = _numel_bytes(dict(model.named_parameters())) + _numel_bytes(dict(model.named_buffers()))
    largest = max((t.numel() for t in trainable.values()), default=0)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    seq = prompt_tokens + new_tokens
    kv_per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * dtype_bytes
    activations = rows * prompt_tokens * (3 * cfg.intermediate_size + 4 * cfg.hidden_size) * dtype_bytes
    if new_tokens:  # generation keeps one position's logits per row, and generate's fp32 copy of them
        logits, logits_note = rows * cfg.vocab_size * (dtype_bytes + 4), f"{rows} rows × 1 position"
    else:  # chunked scoring: a bounded slice of fp32 logits and its log-softmax
        logits, logits_note = 2 * 4 * LOGITS_BUDGET, "scoring slice and its log-softmax"
    master_on_device = master_device == "model"
    terms = (
        Term("weights", weights, True, f"{sum(p.numel() for p in model.parameters()):,} parameters"),
        Term("master", _numel_bytes(trainable, 4), master_on_device, "fp32 θ of the evolved tensors"),
        Term("theta0", _numel_bytes(trainable, dtype_bytes), theta0_device == "model", "θ_0 for the drift log"),
        Term("workspace", (2 + (not master_on_device)) * 4 * largest, True,
             f"fp32 noise + sum of the largest tensor ({largest / 1e6:.0f} M)"
             + ("" if master_on_device else " + θ's device copy")),
        Term("kv_cache", rows * seq * kv_per_token, True, f"{rows} rows × {seq} tokens"),
        Term("activations", activations, True, f"one layer's prefill of {rows} × {prompt_tokens} tokens"),
        Term("logits", logits, True, logits_note),
    )
    return MemoryPlan(terms, capacity)


def device_capacity(device: torch.device) -> int | None:
    """Total memory of a CUDA device; None for CPU (and other devices, which are not checked)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory


def check_run(model: torch.nn.Module, trainable: Mapping[str, torch.Tensor], section: str, *, rows: int,
              prompt_tokens: int, new_tokens: int, master_device: str, theta0_device: str) -> MemoryPlan:
    """Plan a run of `model` on its own device, log the plan and raise if it cannot fit."""
    plan = plan_memory(model, trainable, rows=rows, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                       master_device=master_device, theta0_device=theta0_device,
                       capacity=device_capacity(next(model.parameters()).device))
    log_and_check(plan, section)
    return plan


def log_and_check(plan: MemoryPlan, section: str) -> None:
    """Log the plan, one line per term, then raise if it cannot fit."""
    for line in plan.lines():
        log.info("memory plan: %s", line)
    plan.check(section)
