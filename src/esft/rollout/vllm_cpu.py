"""vLLM's CPU worker with every linear layer computing from its `weight` (vLLM's CPU backend only).

After loading, vLLM's CPU platform repacks each linear layer's weight into a kernel-specific copy and
empties `layer.weight` (`dispatch_cpu_unquantized_gemm` with `remove_weight=True`; the LM head keeps its
weight, but oneDNN's handle may hold a reordered copy). esft writes members and checkpoints into the
weights in place, so the packed copies would never see them. This worker loads the model with that dispatch
replaced by vLLM's own fallback, `cpu_linear = F.linear` on the kept weight (what vLLM does for MLA's
kv_b_proj, `_cpu_skip_gemm_dispatch`). `open_engine` names it only when vLLM's platform is the CPU: CUDA
workers keep their weights as loaded and never import this module, which imports vLLM.
"""

from __future__ import annotations

import torch
from vllm.model_executor.layers import utils
from vllm.v1.worker.cpu_worker import CPUWorker


REPACK = utils.dispatch_cpu_unquantized_gemm


def keep_weight(layer: torch.nn.Module, remove_weight: bool) -> None:
    """In place of `REPACK`: a linear layer computes x·Wᵀ + b from its own `weight`; other shapes
    (convolutions, experts) go to vLLM's dispatch."""
    if layer.weight.ndim != 2:
        REPACK(layer, remove_weight)
        return
    layer.cpu_linear = torch.nn.functional.linear


class KeptWeightsCPUWorker(CPUWorker):
    """`CPUWorker` whose loaded linear layers keep computing from `layer.weight`."""

    def load_model(self, *args, **kwargs) -> None:
        utils.dispatch_cpu_unquantized_gemm = keep_weight
        try:
            super().load_model(*args, **kwargs)
        finally:
            utils.dispatch_cpu_unquantized_gemm = REPACK
