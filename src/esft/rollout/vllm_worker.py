"""What every esft vLLM engine's worker does: show its tensors, and take a checkpoint written into them.

`WeightsExtension` is the class given to `vllm.LLM(worker_extension_cls=...)` for an engine that only
generates (evaluation): vLLM mixes it into its worker, and the driver calls its `esft_*` methods through
`LLM.collective_rpc`. ES's worker (`esft.methods.es.vllm_worker`) extends it with members and updates, so
evaluation engines never load the ES engine. Checkpoints are HF-named; the worker reads the file itself, so
the weights never travel through the RPC channel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from safetensors.torch import load_file

from esft.errors import EsftError
from esft.rollout.vllm_names import Shard, unfuse


def load_into(views: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> None:
    """Copy HF-named tensors into the engine's views (cast to its dtype); every name must match."""
    missing, unknown = sorted(set(views) - set(state)), sorted(set(state) - set(views))
    if missing or unknown:
        raise EsftError(f"weights do not match the engine: missing {missing[:5]} unknown {unknown[:5]}")
    with torch.no_grad():
        for name, view in views.items():
            view.copy_(state[name])


def shards(layout: list[dict[str, Any]]) -> list[Shard]:
    """Shards from their RPC form (dicts; tuples may arrive as lists)."""
    return [Shard(**{**s, "shape": tuple(s["shape"])}) for s in layout]


class WeightsExtension:
    """Mixed into vLLM's worker (one device, TP 1).

    vLLM's worker provides `model_runner.model` (the engine's nn.Module) and `parallel_config`; every name
    here starts with `esft_` so that none shadows the worker's own.
    """

    def esft_tensors(self) -> dict[str, torch.Tensor]:
        sizes = (self.parallel_config.tensor_parallel_size, self.parallel_config.pipeline_parallel_size)
        if sizes != (1, 1):
            raise EsftError(f"esft's vLLM engines need tensor and pipeline parallel size 1, got {sizes}")
        return {name: p.data for name, p in self.model_runner.model.named_parameters()}

    def esft_load_weights(self, path: str, layout: list[dict[str, Any]]) -> None:
        """Write an HF-named checkpoint (weights.safetensors) into the engine."""
        load_into(unfuse(self.esft_tensors(), shards(layout)), load_file(path))
