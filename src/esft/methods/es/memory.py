"""Will an ES-engine run fit on its device? The ES and LBES plan (`esft.memory` has the frame, the weights
and the terms of a forward pass).

The terms are the tensors a run holds at once: the model's weights; the fp32 master θ and θ_0 (each on
the device or in host memory, `es.master_device` / `es.theta0_device`); the per-tensor workspace of a
member write or an update (a noise draw and a sum, fp32, of the largest tensor, plus θ's device copy when
the master is in host memory; `batched` draws a pass's members of it at once); the weights of a pass's
members (`batched`: each member's copy of the evolved tensors and a fused copy of its matrices; `lowrank`:
rank-r factors and their fused copies); the KV cache of one generation (or scoring) pass, sized to that
pass's rows and its longest prompt plus the new tokens; the prefill activations of one layer; and the
logits of a pass (one position per row when generating, a bounded slice when scoring).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from esft.memory import (GIB, MemoryPlan, Term, device_capacity, log_and_check, numel_bytes, pass_terms,
                         weights_term)


class ESMemoryPlan(MemoryPlan):
    def options(self, section: str) -> list[str]:
        options = [f"{section}.{key}: cpu (frees {self.term(name).nbytes / GIB:.1f} GiB)"
                   for key, name in (("master_device", "master"), ("theta0_device", "theta0"))
                   if self.term(name).on_device]
        kv = self.term("kv_cache")
        return options + [f"a smaller {section}.generation_batch_size (KV cache {kv.nbytes / GIB:.1f} GiB: "
                          f"{kv.note})"]


def _host_bytes(tensors: Mapping[str, torch.Tensor], element_size: int, pinned: bool) -> int:
    """Host memory of one copy per tensor (`esft.runs.offload`). PyTorch's pinned-memory allocator rounds
    each allocation up to a power of two: Qwen3-4B's 15 GiB fp32 master takes about 21 GiB pinned."""
    sizes = (t.numel() * element_size for t in tensors.values())
    return sum(1 << (n - 1).bit_length() if pinned and n else n for n in sizes)


def _member_weights(trainable: Mapping[str, torch.Tensor], mode: str, members: int, rank: int,
                    dtype_bytes: int) -> int:
    """Bytes of the per-member weights a population pass of `members` builds (0 for inplace)."""
    if mode == "batched":  # the stacked tensors and the fused, transposed copy of the matrices
        return 2 * members * numel_bytes(trainable, dtype_bytes)
    if mode == "lowrank":  # σA and B per matrix, their fused copies (A block-diagonal over ≤ 3 projections)
        factors = sum(rank * sum(t.shape) for t in trainable.values() if t.dim() == 2)
        vectors = sum(t.numel() for t in trainable.values() if t.dim() != 2)
        return members * (5 * factors + vectors) * dtype_bytes
    return 0


def plan_memory(model: torch.nn.Module, trainable: Mapping[str, torch.Tensor], *, rows: int, prompt_tokens: int,
                new_tokens: int, master_device: str = "model", theta0_device: str = "model",
                capacity: int | None = None, mode: str = "inplace", members: int = 1,
                rank: int = 1, pinned: bool = False) -> ESMemoryPlan:
    """The plan of a run evolving `trainable` (θ_0 and the master cover these) of `model`.

    rows: sequences per forward pass (a population pass: members × prompts); prompt_tokens: the longest
    prompt (or scored text); new_tokens: generated tokens per row (0 for prefill-only scoring); members:
    members per population pass (`batched`, `lowrank`); pinned: host copies are pinned (a CUDA model),
    so each is counted at its allocator's power-of-two size. Works on a model built on the meta device.
    """
    dtype_bytes = next(model.parameters()).element_size()
    largest = max((t.numel() for t in trainable.values()), default=0)
    master_on_device = master_device == "model"
    draws = members if mode == "batched" else 1
    population = mode != "inplace"
    rows_note = f"{members} members × {rows // members} prompts" if population else f"{rows} rows"
    terms = (
        weights_term(model),
        Term("master", numel_bytes(trainable, 4) if master_on_device else _host_bytes(trainable, 4, pinned),
             master_on_device, "fp32 θ of the evolved tensors" + (", pinned" if pinned and not master_on_device
                                                                  else "")),
        Term("theta0", numel_bytes(trainable, dtype_bytes) if theta0_device == "model"
             else _host_bytes(trainable, dtype_bytes, pinned), theta0_device == "model",
             "θ_0 for the drift log" + (", pinned" if pinned and theta0_device != "model" else "")),
        Term("workspace", (draws + 1 + (not master_on_device)) * 4 * largest, True,
             f"fp32 noise ({draws} draw{'s' * (draws > 1)}) + sum of the largest tensor ({largest / 1e6:.0f} M)"
             + ("" if master_on_device else " + θ's device copy")),
        *((Term("members", _member_weights(trainable, mode, members, rank, dtype_bytes), True,
                f"{mode} weights of {members} members per pass"),) if population else ()),
        *pass_terms(model, rows, prompt_tokens, new_tokens, rows_note),
    )
    return ESMemoryPlan(terms, capacity)


def check_run(model: torch.nn.Module, trainable: Mapping[str, torch.Tensor], section: str, *, rows: int,
              prompt_tokens: int, new_tokens: int, master_device: str, theta0_device: str, mode: str = "inplace",
              members: int = 1, rank: int = 1) -> ESMemoryPlan:
    """Plan a run of `model` on its own device, log the plan and raise if it cannot fit."""
    device = next(model.parameters()).device
    plan = plan_memory(model, trainable, rows=rows, prompt_tokens=prompt_tokens, new_tokens=new_tokens,
                       master_device=master_device, theta0_device=theta0_device, mode=mode, members=members,
                       rank=rank, capacity=device_capacity(device), pinned=device.type == "cuda")
    log_and_check(plan, section)
    return plan
