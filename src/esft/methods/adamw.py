"""AdamW pretraining as a training method (`adamw`): the gradient baseline of ES pretraining (EA4LLM).

It minimises the mean token NLL of the texts that ES's loglik fitness maximises (the prepared corpus, or
the task's train conversations; `esft.tasks.corpus.training_texts`, `esft.rollout.scoring`), and with
`minibatches_of: es` it draws each iteration's texts exactly as that ES run does (`esft.runs.minibatch`
keyed on the ES run's identity), so the two loss curves are measured on the same minibatches. Each
record's `loss` is the minibatch loss of the weights before the step, as ES logs the loss of its centre θ.

fp32 weights, no dropout (eval mode: the objective is the one ES scores), a learning rate that is a
function of the step alone, and resume state holding weights, AdamW moments and the log: a killed run
resumes to the same bits as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch

from esft.errors import EsftError
from esft.rollout.scoring import MAX_LENGTH, encode_texts, logprob_sums
from esft.runs import (Budget, Drift, ResumeState, TrainJob, input_fingerprint, minibatch, run_seed, run_steps,
                       runtime_of, write_run)

log = logging.getLogger(__name__)

Schedule = Literal["constant", "linear", "cosine"]


@dataclass(frozen=True)
class AdamWSettings:
    """AdamW pretraining hyperparameters; the defaults are torch.optim.AdamW's, a constant learning rate
    and no clipping (plain AdamW), which a study's config replaces with its own."""

    lr: float = 1e-3
    """Peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    """Decoupled weight decay of matrices (embeddings included); norm gains and biases are never decayed."""
    max_grad_norm: float | None = None
    """Clip the global gradient norm to this (None: no clipping; the norm is logged either way)."""
    warmup: int = 0
    """Steps of linear warm-up from 0 to `lr`."""
    schedule: Schedule = "constant"
    """After warm-up: constant, or linear/cosine decay to `min_lr_ratio`·lr at the last iteration."""
    min_lr_ratio: float = 0.0
    iterations: int = 100
    batch_size: int | None = None
    """Texts per step (a seeded minibatch, as ES draws them); None uses all texts."""
    micro_batch_size: int | None = None
    """Texts per forward/backward, gradients accumulated over the step's texts (None: the whole batch)."""
    minibatches_of: str | None = None
    """Draw minibatches as the run of this method (section name, e.g. es) on the same schedule, stage and
    task does with the same seed: both then score the same texts at every iteration. None: this run's own."""
    seed: int = 0
    """Keys the minibatches (with the run's identity, or that of `minibatches_of`)."""
    max_prompt_tokens: int | None = None
    """Stop after the step whose cumulative scored tokens reach this (None: no bound)."""
    loglik_average: Literal["token", "sample"] = "token"
    """token: the mean NLL over every scored token of the step (the usual LM loss); sample: each text's
    mean token NLL averaged over texts, the objective of ES's loglik fitness with es.loglik_average sample."""
    text_length: int = MAX_LENGTH
    """Tokens kept of each text, eos included: es.text_length of the ES run it is compared with."""
    checkpoint_every: int = 10
    """Steps between resumable state snapshots."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        if not self.lr > 0 or not self.eps > 0:
            raise EsftError("adamw.lr and adamw.eps must be > 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise EsftError(f"adamw.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.weight_decay < 0 or (self.max_grad_norm is not None and not self.max_grad_norm > 0):
            raise EsftError("adamw.weight_decay must be >= 0 and adamw.max_grad_norm > 0 or null")
        if self.loglik_average not in ("token", "sample"):
            raise EsftError(f"adamw.loglik_average must be token or sample, got {self.loglik_average!r}")
        if self.schedule not in ("constant", "linear", "cosine"):
            raise EsftError(f"adamw.schedule must be one of constant, linear, cosine; got {self.schedule!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise EsftError(f"adamw.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("warmup", "iterations", "seed"):
            if getattr(self, name) < 0:
                raise EsftError(f"adamw.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "micro_batch_size", "max_prompt_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise EsftError(f"adamw.{name} must be >= 1 or null, got {getattr(self, name)}")
        if self.text_length < 2:
            raise EsftError(f"adamw.text_length must be >= 2 (a token and eos), got {self.text_length}")
        if self.checkpoint_every < 1:
            raise EsftError(f"adamw.checkpoint_every must be >= 1, got {self.checkpoint_every}")

    def lr_at(self, step: int) -> float:
        """The learning rate of 0-based `step`: linear warm-up, then the schedule's decay."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.iterations - 1 - self.warmup)
        if self.schedule == "constant":
            factor = 1.0
        elif self.schedule == "linear":
            factor = 1.0 - progress
        else:
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * factor)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> AdamWSettings:
        unknown = sorted(set(cfg) - {f.name for f in fields(cls)})
        if unknown:
            raise EsftError(f"unknown adamw option(s) {unknown}; allowed: {sorted(f.name for f in fields(cls))}")
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "betas": list(self.betas)}


def batch_seed(settings: AdamWSettings, run_id: str) -> int:
    """The minibatch seed: `seed` keyed on this run's identity, or on that of the `minibatches_of` method's
    run of the same schedule, stage and task (run ids are method/schedule/stage-task)."""
    if settings.minibatches_of and run_id:
        run_id = f"{settings.minibatches_of}/{run_id.split('/', 1)[1]}"
    return run_seed(settings.seed, run_id)


class AdamWRun:
    """AdamW on `model` over token rows `ids`: one step per iteration, logged, checkpointed, resumable."""

    def __init__(self, model: torch.nn.Module, ids: Sequence[Sequence[int]], pad_id: int, settings: AdamWSettings,
                 state_dir: str | Path | None = None, fingerprint: str = "", run_id: str = "") -> None:
        self.model = model.eval()  # no dropout: the objective is the one ES scores
        self.ids, self.pad_id, self.settings, self.run_id = list(ids), pad_id, settings, run_id
        self.seed = batch_seed(settings, run_id)
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        decay = [p for p in self.params.values() if p.ndim >= 2]
        rest = [p for p in self.params.values() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": settings.weight_decay}, {"params": rest, "weight_decay": 0.0}],
            lr=settings.lr, betas=settings.betas, eps=settings.eps)
        self.budget = Budget(max_prompt_tokens=settings.max_prompt_tokens)
        self.drift = Drift(self.params)
        self.runtime = runtime_of(self.params)
        digest = hashlib.sha256(json.dumps([settings.to_dict(), run_id, fingerprint], sort_keys=True).encode())
        self.state = ResumeState(state_dir, digest.hexdigest())
        self.records: list[dict[str, Any]] = []

    # --- resumable state ----------------------------------------------------------------------
    def _save_state(self) -> None:
        tensors = {f"param/{n}": p.detach() for n, p in self.params.items()}
        for index, state in self.optimizer.state_dict()["state"].items():
            tensors.update({f"adamw/{index}/{key}": value for key, value in state.items()})
        self.state.save(tensors, {"records": self.records, "drift": self.drift.rows})

    def _load_state(self) -> None:
        saved = self.state.load()
        if saved is None:
            return
        tensors, meta = saved
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(tensors[f"param/{name}"])
        state = self.optimizer.state_dict()
        moments: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("adamw/"):
                _, index, field = key.split("/")
                moments.setdefault(int(index), {})[field] = value
        state["state"] = moments
        self.optimizer.load_state_dict(state)
        self.records, self.drift.rows = meta["records"], meta["drift"]
        log.info("resumed from %s at step %d", self.state.path, len(self.records))

    # --- the loop -----------------------------------------------------------------------------
    def loss_and_grad(self, rows: Sequence[Sequence[int]]) -> tuple[float, int]:
        """(mean NLL over `rows` as `loglik_average` says, scored tokens), its gradient accumulated into the
        parameters micro-batch by micro-batch (each part weighted by its share of the step's tokens or texts)."""
        tokens = sum(len(r) - 1 for r in rows)  # every token after the first is scored
        micro = self.settings.micro_batch_size or len(rows)
        loss = 0.0
        for first in range(0, len(rows), micro):
            part = rows[first:first + micro]
            sums, counts = logprob_sums(self.model, part, [1] * len(part), self.pad_id)
            if self.settings.loglik_average == "token":
                part_loss = -sums.sum() / tokens
            else:
                part_loss = -(sums / counts).sum() / len(rows)
            part_loss.backward()
            loss += float(part_loss.detach())
        return loss, tokens

    def step(self, iteration: int) -> dict[str, Any]:
        s = self.settings
        start = time.perf_counter()
        indices = minibatch(self.seed, iteration, len(self.ids), s.batch_size)
        lr = s.lr_at(iteration)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss, tokens = self.loss_and_grad([self.ids[i] for i in indices])
        if not math.isfinite(loss):
            raise EsftError(f"adamw step {iteration}, texts {indices[:8]}: loss is {loss}")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(list(self.params.values()), s.max_grad_norm or math.inf))
        self.optimizer.step()
        drift = self.drift.measure(iteration, self.params)
        return {
            "iteration": iteration,
            "seconds": time.perf_counter() - start,
            "reward_mean": -loss,  # mean token log-likelihood, as ES's loglik fitness
            "rollouts": 0,
            "tokens": 0,
            "prompt_tokens": tokens,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "method": "adamw",
            "run_id": self.run_id,
            "seed": s.seed,
            "prompts": indices,
            "drift_sq": drift,
            "config": s.to_dict(),
            **self.runtime,
        }

    def train(self) -> list[dict[str, Any]]:
        self._load_state()
        s = self.settings
        return run_steps(self.records, s.iterations, self.budget, s.checkpoint_every, self.step, self._save_state,
                         describe=lambda r: (f"step {r['iteration'] + 1}/{s.iterations} loss {r['loss']:.4f} lr "
                                             f"{r['lr']:.3g} grad_norm {r['grad_norm']:.3g} | {r['prompt_tokens']} "
                                             f"tokens scored, {r['seconds']:.2f}s"))

    def write_outputs(self, out_dir: str | Path, dtype: str = "float32") -> None:
        write_run(out_dir, self.params, self.records, self.drift.frame(), dtype)
        self.state.clear()


def train(job: TrainJob) -> None:
    from esft.models import load_model
    from esft.tasks import get_task, read_rows
    from esft.tasks.corpus import training_texts

    settings = AdamWSettings.from_dict(job.cfg)
    if job.dtype != "float32":
        raise EsftError(f"adamw trains fp32 weights (AdamW on {job.dtype} weights drops small updates): "
                        "run with dtype float32")
    model, tokenizer = load_model(job.base, job.init, dtype=job.dtype, device=job.device)
    task = get_task(job.task, format_bonus=job.task_cfg.get("format_bonus"))
    train_file = job.data / "train.jsonl"
    ids = encode_texts(training_texts(job.corpus, task, read_rows(task, train_file), tokenizer), tokenizer,
                       settings.text_length)
    if not ids:
        raise EsftError("adamw: no texts to train on")
    fingerprint = json.dumps([job.task, job.task_cfg, str(job.base),
                              input_fingerprint([job.init, job.corpus or train_file])])
    run = AdamWRun(model, ids, tokenizer.pad_token_id, settings, state_dir=job.state_dir, fingerprint=fingerprint,
                   run_id=job.run_id)
    run.train()
    run.write_outputs(job.out, job.save_dtype)
