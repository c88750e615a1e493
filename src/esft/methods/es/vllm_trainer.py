"""ES on a vLLM engine (`es.backend: vllm`): the driver's side.

θ lives in the engine's worker (`esft.methods.es.vllm_worker.EngineES`: the fp32 master, θ_0, noise and updates,
all under HF names); the driver keeps what `ESTrainer` keeps otherwise (records, shaping, budgets, resume
bookkeeping) and sends only plain arguments through `LLM.collective_rpc`: perturb member m, restore,
update with these weights, save. The loop is ESTrainer's own, so records, run.jsonl and drift.parquet have
the same fields, and for the same fitness values the weights equal those of the Hugging Face path at the
same dtype and device (vLLM's completions, hence fitness, may differ from HF's).
Each process drives one engine on its own device (one GPU per torchrun rank; `engine_environment`) and
evaluates its block of members one after another, each prompt batch scheduled by vLLM; ranks exchange only
fitness scalars (`esft.methods.es.distributed.ShardedEvaluator`) and apply the same update to their own engine, as
the Hugging Face path's ranks do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from math import prod
from pathlib import Path

import pandas as pd
import torch

from esft.errors import EsftError
from esft.memory import GIB, HEADROOM
from esft.methods.es.config import ESConfig
from esft.methods.es.distributed import ShardedEvaluator, init_distributed, is_main_process
from esft.methods.es.fitness import TaskFitness
from esft.methods.es.trainer import ESTrainer, group_scales
from esft.noise import noise_key
from esft.rollout.vllm_backend import VllmEngine
from esft.rollout.vllm_names import Shard
from esft.runs import DRIFT_COLUMNS, TrainJob, write_log

log = logging.getLogger(__name__)

WORKER = "esft.methods.es.vllm_worker.ESWorkerExtension"
"""The worker extension of ES's engines: members, updates and resume state on top of the engine's weights."""


class VllmEvaluator:
    """Members in place on the engine: perturb, generate the iteration's prompts, score; restore at the end.

    Every member uses the same sampling seed (common random numbers); greedy by default.
    """

    def __init__(self, engine: VllmEngine, fitness: TaskFitness, seed: int) -> None:
        self.engine = engine
        self.fitness = fitness
        self.seed = seed

    def __call__(self, iteration: int, members: Iterable[int], sigma: float,
                 indices: Sequence[int]) -> list[tuple[float, int]]:
        fitness = self.fitness
        prompts = [fitness.prompt_ids[i] for i in indices]
        seed = noise_key(self.seed, iteration, -1, "sampling") if fitness.temperature > 0 else None
        members = list(members)
        log.debug("iteration %d: members %s on this engine (rank %d)", iteration, members,
                  torch.distributed.get_rank() if torch.distributed.is_initialized() else 0)
        results = []
        try:
            for member in members:
                self.engine.write("esft_perturb", iteration, member, sigma)
                gens = self.engine.generate(prompts, fitness.max_new_tokens, fitness.temperature, seed, fitness.top_p)
                results.append((fitness.score(gens.texts, indices, member), gens.total_tokens))
        finally:
            self.engine.write("esft_restore")
        return results


class VllmESTrainer(ESTrainer):
    """`ESTrainer` whose θ is the engine's: setup, update, resume state and export run on the worker."""

    def __init__(self, engine: VllmEngine, fitness: TaskFitness, n_rows: int, cfg: ESConfig,
                 state_dir: str | Path | None = None, fingerprint: str = "", run_id: str = "") -> None:
        self._start(fitness, n_rows, cfg, state_dir, fingerprint, run_id)
        self.engine = engine
        alpha_scale, sigma_scale = group_scales(cfg, [s.hf_name for s in engine.layout if not s.alias])
        options = {"antithetic": cfg.antithetic != "none", "alpha_scale": alpha_scale, "sigma_scale": sigma_scale,
                   "master_device": cfg.master_device, "theta0_device": cfg.theta0_device}
        self.runtime = engine.call("esft_setup", engine.shards(), self.seed, options)
        self.evaluator = ShardedEvaluator(VllmEvaluator(engine, fitness, self.seed))
        self.drift_rows: list[dict] = []

    def advance(self, iteration: int, weights: list[float], alpha: float, sigma: float) -> float:
        rows = self.engine.write("esft_update", iteration, [float(w) for w in weights], alpha,
                                 sigma if self.cfg.step != "standard" else None, False, self.cfg.step == "nes_group")
        self.drift_rows.extend(rows)
        return sum(row["drift_sq"] for row in rows)

    def _save_state(self) -> None:
        if self.state.path is not None and is_main_process():
            self.engine.call("esft_save_state", str(self.state.path.parent), self.state.fingerprint,
                             {"records": self.records, "drift": self.drift_rows})

    def _load_state(self) -> None:
        if self.state.path is None:
            return
        meta = self.engine.write("esft_load_state", str(self.state.path.parent), self.state.fingerprint)
        if meta is not None:
            self.records, self.drift_rows = meta["records"], meta["drift"]
            log.info("resumed from %s at iteration %d", self.state.path, len(self.records))

    def write_outputs(self, out_dir: str | Path, dtype: str = "float32") -> None:
        """weights.safetensors (written by the worker from the fp32 master, HF names), run.jsonl, drift.parquet;
        by the main process only (every rank's engine holds the same θ)."""
        if not is_main_process():
            return
        self.engine.call("esft_save_weights", str(Path(out_dir) / "weights.safetensors"), dtype)
        write_log(out_dir, self.records, pd.DataFrame(self.drift_rows, columns=DRIFT_COLUMNS))
        self.state.clear()


def engine_memory(layout: Sequence[Shard], dtype: str, cfg: ESConfig, capacity: int | None,
                  section: str = "es") -> str:
    """The GPU memory the ES state takes beside vLLM's share, as a log line; raises if it cannot fit.

    The fp32 master and θ_0 (unless placed on the host) and the workspace of one tensor write (fp32 noise
    and sum of the largest tensor, plus θ's device copy when the master is on the host) must fit in the
    (1 − gpu_memory_utilization) of the GPU that vLLM leaves, less the allocator headroom.
    """
    numels = [prod(s.shape) for s in layout if not s.alias]
    element = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    master = 4 * sum(numels) if cfg.master_device == "model" else 0
    theta0 = element * sum(numels) if cfg.theta0_device == "model" else 0
    workspace = (2 + (cfg.master_device == "cpu")) * 4 * max(numels)
    need = master + theta0 + workspace
    line = (f"ES state beside vLLM: master {master / GIB:.2f} GiB, θ_0 {theta0 / GIB:.2f} GiB, "
            f"workspace {workspace / GIB:.2f} GiB")
    if capacity is None:
        return line
    usable = capacity * (1 - cfg.vllm.gpu_memory_utilization - HEADROOM)
    if need > usable:
        options = [f"{section}.{key}: cpu (frees {size / GIB:.1f} GiB)"
                   for key, size in (("master_device", master), ("theta0_device", theta0)) if size]
        raise EsftError(f"memory plan: the ES state needs {need / GIB:.1f} GiB of GPU memory beside vLLM, but "
                        f"{section}.vllm.gpu_memory_utilization {cfg.vllm.gpu_memory_utilization} leaves "
                        f"{max(usable, 0) / GIB:.1f} GiB of {capacity / GIB:.1f} GiB; set "
                        + ", or ".join(options + [f"a lower {section}.vllm.gpu_memory_utilization"]))
    return line + f" of {usable / GIB:.2f} GiB left by vLLM"


def train(job: TrainJob, cfg: ESConfig) -> None:
    """One ES stage on a vLLM engine (es.run.train dispatches here for `es.backend: vllm`); under torchrun
    one engine per rank, members sharded over the ranks."""
    from esft.rollout.vllm_backend import open_engine
    from esft.runs import input_fingerprint
    from esft.tasks import get_task, read_rows

    if job.corpus:
        raise EsftError("es.backend vllm trains on task rewards: it takes no --corpus")
    init_distributed(job.device)  # a no-op unless launched by torchrun
    task = get_task(job.task, format_bonus=job.task_cfg.get("format_bonus"))
    rows = read_rows(task, job.data / "train.jsonl")
    engine = open_engine(job.base, job.dtype, cfg.vllm, [([task.messages(r) for r in rows],
                                                          job.task_cfg["max_new_tokens"])], seed=cfg.seed,
                         worker_extension=WORKER)
    if job.init:
        engine.load_weights(job.init)
    capacity = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory \
        if torch.cuda.is_available() else None
    log.info("memory plan: %s", engine_memory(engine.layout, job.dtype, cfg, capacity, job.section))
    fitness = TaskFitness(task, rows, engine.tokenizer, job.task_cfg["max_new_tokens"], cfg.generation_batch_size,
                          cfg.temperature, cfg.top_p)
    fingerprint = json.dumps([job.task, job.task_cfg, input_fingerprint([job.init])])
    trainer = VllmESTrainer(engine, fitness, len(rows), cfg, state_dir=job.state_dir, fingerprint=fingerprint,
                            run_id=job.run_id)
    trainer.train()
    trainer.write_outputs(job.out, job.save_dtype)
