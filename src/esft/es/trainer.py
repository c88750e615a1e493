"""The ES training loop: evaluate every member on the same prompts, shape, update, log, checkpoint.

One line per iteration goes to run.jsonl (seed, minibatch, raw and shaped fitness, α, σ, tokens,
seconds), enough to replay θ_T from θ_0. Resumable state is written atomically every
`checkpoint_every` iterations to a state directory outside the job's outputs, so a killed job restarts
where it stopped and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from esft.es.config import ESConfig
from esft.es.modes import Fitness, InplaceEvaluator
from esft.es.population import Population
from esft.es.shaping import shape_fitness
from esft.io import atomic_path, write_jsonl

log = logging.getLogger(__name__)

def minibatch(cfg: ESConfig, iteration: int, n_rows: int) -> list[int]:
    """Prompt indices of one iteration: all rows, or a seeded subset shared by every member."""
    if cfg.batch_size is None or cfg.batch_size >= n_rows:
        return list(range(n_rows))
    rng = random.Random(f"{cfg.seed}|batch|{iteration}")
    return sorted(rng.sample(range(n_rows), cfg.batch_size))


def trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Named trainable parameters, tied weights once (under their first name)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class ESTrainer:
    def __init__(self, model: torch.nn.Module, fitness: Fitness, n_rows: int, cfg: ESConfig,
                 state_dir: str | Path | None = None, fingerprint: str = "") -> None:
        self.model = model
        self.n_rows = n_rows
        self.cfg = cfg
        self.population = Population(trainable(model), cfg.seed)
        self.evaluator = InplaceEvaluator(model, self.population, fitness)
        self.theta0 = {n: t.clone() for n, t in self.population.master.items()}
        self.state_path = Path(state_dir) / "state.safetensors" if state_dir else None
        self.fingerprint = hashlib.sha256(json.dumps([cfg.to_dict(), fingerprint], sort_keys=True).encode()).hexdigest()
        self.records: list[dict[str, Any]] = []
        self.drift: list[dict[str, Any]] = []

    # --- resumable state ----------------------------------------------------------------------
    def _save_state(self) -> None:
        if self.state_path is None:
            return
        meta = {
            "fingerprint": self.fingerprint,
            "records": json.dumps(self.records),
            "drift": json.dumps(self.drift),
        }
        with atomic_path(self.state_path) as tmp:
            save_file({n: t.contiguous() for n, t in self.population.master.items()}, str(tmp), metadata=meta)

    def _load_state(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        from safetensors import safe_open

        with safe_open(str(self.state_path), "pt") as fh:
            meta = fh.metadata()
        if meta.get("fingerprint") != self.fingerprint:
            log.warning("ignoring state %s: it belongs to another configuration", self.state_path)
            return
        self.population.load_master(load_file(str(self.state_path)))
        self.records = json.loads(meta["records"])
        self.drift = json.loads(meta["drift"])
        log.info("resumed from %s at iteration %d", self.state_path, len(self.records))

    # --- the loop -----------------------------------------------------------------------------
    def step(self, iteration: int) -> dict[str, Any]:
        cfg = self.cfg
        start = time.perf_counter()
        indices = minibatch(cfg, iteration, self.n_rows)
        results = self.evaluator(iteration, range(cfg.population), cfg.sigma, indices)
        fitness = [value for value, _ in results]
        tokens = sum(n for _, n in results)
        weights = shape_fitness(fitness, cfg.shaping)
        self.population.update(iteration, weights, cfg.alpha)
        drift = {n: float((t - self.theta0[n]).pow(2).sum()) for n, t in self.population.master.items()}
        self.drift.extend({"iteration": iteration, "parameter": n, "drift_sq": d} for n, d in drift.items())
        seconds = time.perf_counter() - start
        return {
            "iteration": iteration,
            "seed": cfg.seed,
            "sigma": cfg.sigma,
            "alpha": cfg.alpha,
            "population": cfg.population,
            "prompts": indices,
            "fitness": fitness,
            "shaped": weights,
            "fitness_mean": sum(fitness) / len(fitness),
            "fitness_max": max(fitness),
            "tokens": tokens,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
            "drift_sq": sum(drift.values()),
        }

    def train(self) -> list[dict[str, Any]]:
        self._load_state()
        cfg = self.cfg
        for iteration in range(len(self.records), cfg.iterations):
            record = self.step(iteration)
            self.records.append(record)
            log.info(
                "iter %d/%d fitness mean %.4f max %.4f | %d tokens, %.0f tok/s, %.2fs",
                iteration + 1, cfg.iterations, record["fitness_mean"], record["fitness_max"],
                record["tokens"], record["tokens_per_s"], record["seconds"],
            )
            if (iteration + 1) % cfg.checkpoint_every == 0 and iteration + 1 < cfg.iterations:
                self._save_state()
        return self.records

    def write_outputs(self, out_dir: str | Path) -> None:
        """weights.safetensors (fp32 master, HF names), run.jsonl and drift.parquet, each atomically."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / "weights.safetensors") as tmp:
            save_file({n: t.contiguous() for n, t in self.population.master.items()}, str(tmp),
                      metadata={"format": "pt", "esft": json.dumps(self.cfg.to_dict())})
        write_jsonl(out_dir / "run.jsonl", self.records)
        with atomic_path(out_dir / "drift.parquet") as tmp:
            pd.DataFrame(self.drift, columns=["iteration", "parameter", "drift_sq"]).to_parquet(tmp, index=False)
        if self.state_path is not None and self.state_path.exists():
            self.state_path.unlink()
