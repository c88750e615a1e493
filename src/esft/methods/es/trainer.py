"""The ES training loop: evaluate every member on the same prompts, shape, update, log, checkpoint.

One line per iteration goes to run.jsonl (the common fields of `esft.runs` plus run id, seed,
minibatch, raw fitness, update weights, α_t, σ_t, step kind, antithetic mode, LoRA phase, the ES config
and, for a loglik fitness, the loss of θ itself), enough for `replay` to rebuild θ_T from θ_0 bit for
bit. Resumable state is written atomically every `checkpoint_every` iterations to a state directory
outside the job's outputs, so a killed job restarts where it stopped and ends with the same weights as
an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from esft.errors import EsftError
from esft.methods.es.config import ESConfig
from esft.methods.es.distributed import ShardedEvaluator, is_main_process
from esft.methods.es.fitness import CorpusFitness, RandomFitness
from esft.methods.es.lora import lora_phases, merged_weights, wrap_lora
from esft.methods.es.lowrank import LowRankPopulation
from esft.methods.es.modes import Fitness, build_evaluator
from esft.methods.es.population import Population
from esft.methods.es.shaping import member_weights
from esft.params import param_group
from esft.runs import Budget, Drift, ResumeState, minibatch, run_seed, run_steps, runtime_of, write_run

log = logging.getLogger(__name__)


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Named trainable parameters, tied weights once (under their first name)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def group_scales(cfg: ESConfig, names: Iterable[str]) -> tuple[dict[str, float], dict[str, float]]:
    """(α_g, σ_g) per tensor name from es.group_alpha / es.group_sigma (empty when neither is set)."""
    try:
        groups = {n: param_group(n) for n in names} if cfg.group_alpha or cfg.group_sigma else {}
    except ValueError as err:
        raise EsftError(f"es.group_alpha/group_sigma: {err}") from None
    return ({n: cfg.group_alpha.get(g, 1.0) for n, g in groups.items()},
            {n: cfg.group_sigma.get(g, 1.0) for n, g in groups.items()})


def build_population(model: torch.nn.Module, cfg: ESConfig, run_id: str = "") -> tuple[torch.nn.Module, Population]:
    """(model to evaluate, population) for `cfg`: LoRA-wrapped if configured, with σ_g/α_g and phases.

    Noise (and LoRA's initial A) is keyed on es.seed and the run's identity (`run_seed`). Training
    and replay both build their population here, so they apply the same update.
    """
    seed = run_seed(cfg.seed, run_id)
    if cfg.lora is not None:
        model = wrap_lora(model, cfg.lora, seed)
    params = trainable(model)
    alpha_scale, sigma_scale = group_scales(cfg, params)
    if cfg.mode == "lowrank":
        return model, LowRankPopulation(params, seed, cfg.rank, sigma_scale=sigma_scale, alpha_scale=alpha_scale)
    population = Population(
        params, seed, antithetic=cfg.antithetic != "none", sigma_scale=sigma_scale, alpha_scale=alpha_scale,
        phases=lora_phases(list(params), cfg.lora.order) if cfg.lora is not None else None,
        master_device=cfg.master_device,
    )
    return model, population


def apply_update(population: Population, cfg: ESConfig, iteration: int, weights: list[float], alpha: float,
                 sigma: float) -> None:
    """The configured step (standard, or NES divided by σ_t or σ_t·σ_g; normalised for LoRA if asked) with
    logged α_t, σ_t."""
    population.update(iteration, weights, alpha, sigma if cfg.step != "standard" else None,
                      normalize=cfg.lora is not None and cfg.lora.normalize, group_sigma=cfg.step == "nes_group")


def export_weights(model: torch.nn.Module, population: Population, cfg: ESConfig) -> dict[str, torch.Tensor]:
    """fp32 weights under standard Hugging Face names: the master, or the base with adapters merged."""
    if cfg.lora is not None:
        return merged_weights(model, population.master)
    return dict(population.master)


def replayed(model: torch.nn.Module, records: list[dict[str, Any]],
             at: Iterable[int]) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """(k, θ_k) for each k of `at` in ascending order: the weights after k logged updates, rebuilt from θ_0
    (the weights in `model`) and a run's records without evaluating anything, in one pass over the records.

    Full-parameter θ_k are the live master tensors: use them before drawing the next k."""
    if not records:
        raise EsftError("replay: the run log has no iterations")
    if [r["iteration"] for r in records] != list(range(len(records))):
        raise EsftError("replay: the run log must hold iterations 0, 1, ... without gaps")
    if "config" not in records[0]:
        raise EsftError("replay: the run log has no ES config (it predates replay support)")
    wanted = sorted(set(at))
    if wanted and not 1 <= wanted[0] <= wanted[-1] <= len(records):
        raise EsftError(f"replay: iterations {wanted} outside 1..{len(records)} (the run's length)")
    cfg = ESConfig.from_dict(records[0]["config"])
    model, population = build_population(model, cfg, records[0].get("run_id", ""))
    for record in records[:wanted[-1] if wanted else 0]:
        apply_update(population, cfg, record["iteration"], record["shaped"], record["alpha"], record["sigma"])
        if record["iteration"] + 1 in wanted:
            yield record["iteration"] + 1, export_weights(model, population, cfg)


def replay(model: torch.nn.Module, records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """θ_T rebuilt from θ_0 (the weights in `model`) and a run's records, without evaluating anything."""
    return next(replayed(model, records, [len(records)]))[1]


class ESTrainer:
    """ES on `model`: `fitness` scores one member on chosen rows (unused for `fitness: random`).

    Drift ||θ_t − θ_0||² per evolved tensor is logged every iteration (`esft.runs.Drift`): one pass
    over the D evolved values (the update itself makes N/2 to N passes to regenerate noise). θ_0 is
    kept in the model's own dtype, which holds it exactly, so the copy costs half the master's memory
    for a bf16 model, and covers only the adapters under LoRA.

    run_id: the run's identity (method/schedule/stage-task); noise and minibatches are keyed on it
    as well as on es.seed, so the stages of a sequential run draw independent noise.
    """

    def __init__(self, model: torch.nn.Module, fitness: Fitness | None, n_rows: int, cfg: ESConfig,
                 state_dir: str | Path | None = None, fingerprint: str = "", run_id: str = "") -> None:
        self._start(fitness, n_rows, cfg, state_dir, fingerprint, run_id)
        self.model, self.population = build_population(model, cfg, run_id)
        if cfg.fitness == "random":
            self.evaluator = RandomFitness(self.seed)
        elif fitness is None:
            raise EsftError(f"es.fitness {cfg.fitness!r} needs a fitness function")
        else:  # members are sharded over torch.distributed ranks when it is initialised
            self.evaluator = ShardedEvaluator(
                build_evaluator(cfg.mode, self.model, self.population, fitness, cfg.members_per_pass))
        self.drift = Drift(self.population.params, cfg.theta0_device)
        self.runtime = runtime_of(self.population.params)

    def _start(self, fitness: Fitness | None, n_rows: int, cfg: ESConfig, state_dir: str | Path | None,
               fingerprint: str, run_id: str) -> None:
        """What every ES run holds whoever owns θ: config, seeds, budget, resume state, records."""
        self.n_rows = n_rows
        self.cfg = cfg
        self.run_id = run_id
        self.seed = run_seed(cfg.seed, run_id)
        self.fitness = fitness
        self.budget = Budget(cfg.max_rollouts, cfg.max_tokens, cfg.max_prompt_tokens)
        digest = hashlib.sha256(json.dumps([cfg.to_dict(), run_id, fingerprint], sort_keys=True).encode())
        self.state = ResumeState(state_dir, digest.hexdigest())
        self.records: list[dict[str, Any]] = []

    # --- resumable state ----------------------------------------------------------------------
    def _save_state(self) -> None:
        if is_main_process():
            self.state.save(self.population.master, {"records": self.records, "drift": self.drift.rows})

    def _load_state(self) -> None:
        saved = self.state.load()
        if saved is None:
            return
        tensors, meta = saved
        self.population.load_master(tensors)
        self.records, self.drift.rows = meta["records"], meta["drift"]
        log.info("resumed from %s at iteration %d", self.state.path, len(self.records))

    # --- the loop -----------------------------------------------------------------------------
    def counts(self, indices: Sequence[int], results: Sequence[tuple[float, int]]) -> dict[str, int]:
        """The iteration's common cost fields: rollouts, generated tokens and prompt tokens.

        A generating fitness reports generated tokens per member and every member processes the
        prompts of `indices`; a prefill-only fitness (loglik) reports the tokens it scored.
        """
        n_members = len(results)
        reported = sum(n for _, n in results)
        if getattr(self.fitness, "generates", False):
            return {"rollouts": n_members * len(indices), "tokens": reported,
                    "prompt_tokens": n_members * self.fitness.prompt_tokens(indices)}
        return {"rollouts": 0, "tokens": 0, "prompt_tokens": reported}

    def centre_loss(self, indices: Sequence[int]) -> tuple[dict[str, float], int]:
        """({"loss": mean token NLL of θ itself on texts `indices`}, tokens scored) for a loglik fitness,
        else ({}, 0).

        Scored before the update, like a gradient method's training loss, so that ES and the AdamW
        baseline (`esft.methods.adamw`) log the same quantity; the members' fitness is that of θ + σε, not of θ.
        It costs one more scoring pass (1/N of the iteration), counted in prompt_tokens.
        """
        if not isinstance(self.fitness, CorpusFitness):
            return {}, 0
        value, tokens = self.fitness(self.model, indices, member=-1)  # the evaluator left θ in the model
        return {"loss": -value}, tokens

    def evaluate(self, iteration: int, sigma: float, indices: Sequence[int]) -> list[tuple[float, int]]:
        """(fitness, tokens) of every member on rows `indices` (LBES samples and filters first)."""
        return self.evaluator(iteration, range(self.cfg.population), sigma, indices)

    def advance(self, iteration: int, weights: list[float], alpha: float, sigma: float) -> float:
        """Apply the iteration's update to θ and log the drift; returns ||θ − θ_0||²."""
        apply_update(self.population, self.cfg, iteration, weights, alpha, sigma)
        return self.drift.measure(iteration, self.population.master)

    def step(self, iteration: int) -> dict[str, Any]:
        cfg = self.cfg
        start = time.perf_counter()
        alpha, sigma = cfg.alpha_at(iteration), cfg.sigma_at(iteration)
        indices = minibatch(self.seed, iteration, self.n_rows, cfg.batch_size)
        results = self.evaluate(iteration, sigma, indices)
        centre, centre_tokens = self.centre_loss(indices)
        fitness = [value for value, _ in results]
        weights = member_weights(fitness, cfg.shaping, cfg.antithetic)
        drift = self.advance(iteration, weights, alpha, sigma)
        seconds = time.perf_counter() - start
        counts = self.counts(indices, results)
        counts["prompt_tokens"] += centre_tokens
        return {
            "iteration": iteration,
            "seconds": seconds,
            "reward_mean": sum(fitness) / len(fitness),
            **counts,
            "run_id": self.run_id,
            "seed": cfg.seed,
            "sigma": sigma,
            "alpha": alpha,
            "step": cfg.step,
            "antithetic": cfg.antithetic,
            "phase": cfg.lora.order[iteration % len(cfg.lora.order)] if cfg.lora is not None else None,
            "population": cfg.population,
            "prompts": indices,
            "fitness": fitness,
            "shaped": weights,
            "fitness_mean": sum(fitness) / len(fitness),
            "fitness_max": max(fitness),
            **centre,
            "tokens_per_s": counts["tokens"] / seconds if seconds > 0 else 0.0,
            "drift_sq": drift,
            "config": cfg.to_dict(),
            **self.runtime,
        }

    def train(self) -> list[dict[str, Any]]:
        self._load_state()
        n = self.cfg.iterations
        return run_steps(self.records, n, self.budget, self.cfg.checkpoint_every, self.step, self._save_state,
                         unit="iteration", describe=lambda r: (
                             f"iter {r['iteration'] + 1}/{n} fitness mean {r['fitness_mean']:.4f} max "
                             f"{r['fitness_max']:.4f} | {r['rollouts']} rollouts, {r['tokens']} tokens, "
                             f"{r['tokens_per_s']:.0f} tok/s, {r['seconds']:.2f}s"))

    def write_outputs(self, out_dir: str | Path, dtype: str = "float32") -> None:
        """weights.safetensors (HF names, adapters merged, fp32 unless `dtype` says otherwise), run.jsonl
        and drift.parquet, atomically.

        Under torch.distributed every rank holds the same θ; only the main process writes.
        """
        if not is_main_process():
            return
        write_run(out_dir, export_weights(self.model, self.population, self.cfg), self.records, self.drift.frame(),
                  dtype)
        self.state.clear()
