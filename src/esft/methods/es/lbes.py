"""LBES (Fukuda & Kawahara, Algorithm 2): ES whose members only prefill, never generate.

Per iteration t: draw B prompts (the ES minibatch); sample n completions of each with the current,
unperturbed θ at the configured temperature (seeded from the run's seed and t); reward them; keep the
k_var prompts with the highest reward variance and, of each, the top-k and bottom-k completions; score
every member θ + σεᵢ by the mean token log-likelihood of each kept completion (the same token ids that
were sampled, prompt masked); fitness of member i = Pearson r between the kept rewards and member i's
log-likelihoods, pooled over all kept completions (the paper's runs: `--flat-corrcoef True`);
z-score and take the NES step θ ← θ + α/(λσ) Σ zᵢεᵢ.

Everything else is the ES engine: keyed noise, fp32 master, restore by copy, antithetic pairs, the
`inplace` evaluator (sharded over torch.distributed ranks), budgets, drift, resume and replay. Each
record logs the derived ESConfig as `config` (so `esft replay` rebuilds θ_T bitwise with ES's own
function) and the LBES settings as `lbes`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from esft.errors import EsftError
from esft.methods.es.config import Antithetic, ESConfig, _reject_unknown
from esft.methods.es.distributed import from_main, is_main_process
from esft.methods.es.fitness import FitnessError, checked_reward
from esft.methods.es.trainer import ESTrainer
from esft.noise import noise_key
from esft.rollout import Generations, encode_prompts, generate, score_sequences
from esft.runs import TrainJob
from esft.tasks import Task


@dataclass(frozen=True)
class LBESConfig:
    """LBES hyperparameters; defaults are the paper's GSM8K/Countdown runs (Llama-3.1-8B-Instruct)."""

    population: int = 32
    """λ, perturbed members scored per iteration."""
    sigma: float = 1e-3
    """Perturbation scale σ: member i is θ + σεᵢ."""
    alpha: float = 5e-7
    """Step size α of θ ← θ + α/(λσ) Σ zᵢεᵢ."""
    iterations: int = 100
    batch_size: int | None = 64
    """B, prompts sampled per iteration (a seeded minibatch, as in ES); None uses all rows."""
    n_samples: int = 8
    """n, completions sampled per prompt with the current θ."""
    temperature: float = 0.1
    """Sampling temperature (> 0: n greedy samples would be identical)."""
    k_var: int = 32
    """Prompts kept: those with the highest reward variance across their n samples (ties: earlier row
    first). A prompt whose rewards are all equal is never kept: it cannot tell completions apart."""
    k: int = 1
    """Completions kept per kept prompt: the k best and the k worst by reward (ties: lower sample index
    counts as better), so 2k <= n_samples."""
    antithetic: Antithetic = "none"
    """As es.antithetic: members 2j, 2j+1 use ±ε_j (signed: the signed correlations sⱼ·rⱼ z-scored
    together; mirrored: all λ correlations; paired: the pair differences)."""
    mode: Literal["inplace"] = "inplace"
    """Member evaluation: inplace (perturb, prefill, restore). The batched/lowrank modes are generation
    loops; LBES members only prefill."""
    max_rollouts: int | None = None
    """Stop after the iteration whose cumulative sampled completions (B·n per iteration) reach this."""
    max_tokens: int | None = None
    """Stop after the iteration whose cumulative sampled (generated) tokens reach this."""
    seed: int = 0
    """Keys noise, minibatches and sampling (with the run's identity)."""
    generation_batch_size: int = 64
    """Rows per forward pass, for sampling and for scoring."""
    checkpoint_every: int = 10
    """Iterations between resumable state snapshots."""
    master_device: Literal["model", "cpu"] = "model"
    """As es.master_device: the fp32 master on the model's device or in (pinned) host memory."""
    theta0_device: Literal["model", "cpu"] = "model"
    """As es.theta0_device."""

    def __post_init__(self) -> None:
        if self.n_samples < 2:
            raise EsftError(f"lbes.n_samples must be >= 2 (rewards must vary within a prompt), got {self.n_samples}")
        if not self.temperature > 0:
            raise EsftError(f"lbes.temperature must be > 0 (greedy samples of a prompt are identical), "
                            f"got {self.temperature}")
        if self.k_var < 1 or self.k < 1:
            raise EsftError(f"lbes.k_var and lbes.k must be >= 1, got {self.k_var}, {self.k}")
        if 2 * self.k > self.n_samples:
            raise EsftError(f"lbes.k: the top-k and bottom-k completions must be distinct, so 2k <= n_samples; "
                            f"got k={self.k}, n_samples={self.n_samples}")
        if self.mode != "inplace":
            raise EsftError(f"lbes.mode must be inplace (batched and lowrank are generation loops; LBES "
                            f"members only prefill), got {self.mode!r}")
        if self.generation_batch_size < 1:
            raise EsftError(f"lbes.generation_batch_size must be >= 1, got {self.generation_batch_size}")
        try:  # the shared options are checked once, by ESConfig, and reported under lbes.
            self.es_config()
        except EsftError as err:
            raise EsftError(re.sub(r"\bes\.", "lbes.", str(err))) from None

    def es_config(self) -> ESConfig:
        """The population's ESConfig: z-score shaping and the NES step (α/(λσ) Σ zᵢεᵢ). Its `fitness` is
        loglik because members only prefill (the value replay never reads)."""
        return ESConfig(
            population=self.population, sigma=self.sigma, alpha=self.alpha, iterations=self.iterations,
            batch_size=self.batch_size, shaping="zscore", step="nes", antithetic=self.antithetic,
            fitness="loglik", mode=self.mode, max_rollouts=self.max_rollouts, max_tokens=self.max_tokens,
            seed=self.seed, generation_batch_size=self.generation_batch_size,
            checkpoint_every=self.checkpoint_every, master_device=self.master_device,
            theta0_device=self.theta0_device,
        )

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> LBESConfig:
        _reject_unknown(cls, cfg, "lbes")
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select(rewards: Sequence[Mapping[int, float]], k_var: int, k: int) -> list[tuple[int, int]]:
    """(prompt position, sample index) of the kept completions, sorted.

    rewards[p] maps each scorable sample of prompt p to its reward. Prompts with fewer than 2k such
    samples or with equal rewards are dropped; of the rest, the k_var with the highest (population)
    reward variance are kept (ties: lower position first), and of each the k best and the k worst
    samples (ties: lower sample index counts as better). Nothing is kept when all rewards are equal.
    """
    candidates = []
    for p, samples in enumerate(rewards):
        if len(samples) < 2 * k:
            continue
        mean = sum(samples.values()) / len(samples)
        variance = sum((r - mean) ** 2 for r in samples.values()) / len(samples)
        if variance > 0:
            candidates.append((-variance, p))
    kept = []
    for _, p in sorted(candidates)[:k_var]:
        ranked = sorted(rewards[p], key=lambda j: (-rewards[p][j], j))
        kept += [(p, j) for j in ranked[:k] + ranked[-k:]]
    return sorted(kept)


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson correlation of x and y; None where undefined (fewer than 2 points or a constant side)."""
    if len(x) != len(y):
        raise ValueError(f"pearson: {len(x)} and {len(y)} values")
    if len(x) < 2:
        return None
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


class CorrelationFitness:
    """Member fitness of one iteration's kept completions (set with `keep`): Pearson r between their
    rewards and their mean token log-likelihoods under the member; NaN where r is undefined.

    A Fitness `(model, indices, member) -> (value, tokens)` for ES's evaluators: `indices` are the
    iteration's prompts, already reflected in the kept completions; tokens are those it prefilled.
    """

    def __init__(self, pad_id: int, batch_size: int) -> None:
        self.pad_id = pad_id
        self.batch_size = batch_size
        self.keep([], [], [])

    def keep(self, sequences: Sequence[Sequence[int]], starts: Sequence[int], rewards: Sequence[float]) -> None:
        """The completions to score: prompt + completion token ids, where each completion starts, rewards."""
        self.sequences, self.starts, self.rewards = list(sequences), list(starts), list(rewards)

    def loglik(self, model: torch.nn.Module) -> list[float]:
        """Mean token log-likelihood of each kept completion under `model`."""
        scores = score_sequences(model, self.sequences, self.starts, self.pad_id, self.batch_size)
        return [total / n for total, n in scores]

    def __call__(self, model: torch.nn.Module, indices: Sequence[int], member: int) -> tuple[float, int]:
        loglik = self.loglik(model)
        bad = [c for c, v in enumerate(loglik) if not math.isfinite(v)]
        if bad:
            raise FitnessError(f"member {member}, kept completion {bad[0]}: log-likelihood is {loglik[bad[0]]}")
        r = pearson(self.rewards, loglik)
        return (math.nan if r is None else r), sum(len(s) for s in self.sequences)


class LBESTrainer(ESTrainer):
    """ESTrainer whose evaluation samples with θ, filters, then scores each member by correlation.

    An iteration that keeps nothing (all rewards equal), or whose members' correlations are all
    undefined, gives every member fitness 0: the z-scores are 0 and θ does not move, while seeds and
    counts advance and the record says why (`status`). A member whose correlation alone is undefined
    gets fitness 0 and is listed in `undefined_members`.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, task: Task, rows: Sequence[dict[str, Any]],
                 cfg: LBESConfig, max_new_tokens: int, state_dir: str | Path | None = None, fingerprint: str = "",
                 run_id: str = "") -> None:
        self.lbes = cfg
        self.task = task
        self.rows = list(rows)
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.prompt_ids = encode_prompts(tokenizer, [task.messages(r) for r in self.rows])
        self.scorer = CorrelationFitness(tokenizer.pad_token_id, cfg.generation_batch_size)
        self.sampled: dict[str, Any] = {}
        """This iteration's samples, filter and outcome, for `counts` and the record."""
        super().__init__(model, self.scorer, len(self.rows), cfg.es_config(), state_dir=state_dir,
                         fingerprint=json.dumps([cfg.to_dict(), fingerprint]), run_id=run_id)

    def sample(self, iteration: int, indices: Sequence[int]) -> tuple[Generations, list[list[float]]]:
        """n completions of each prompt of `indices` by the current θ, and their rewards."""
        n = self.lbes.n_samples
        prompts = [self.prompt_ids[i] for i in indices for _ in range(n)]
        gens = generate(self.model, self.tokenizer, prompts, self.max_new_tokens, self.lbes.generation_batch_size,
                        self.lbes.temperature, seed=noise_key(self.seed, iteration, -1, "lbes-sampling"))
        rewards = [[checked_reward(self.task, gens.texts[p * n + j], self.rows[i],
                                   f"iteration {iteration}, prompt {i}, sample {j}") for j in range(n)]
                   for p, i in enumerate(indices)]
        return gens, rewards

    def evaluate(self, iteration: int, sigma: float, indices: Sequence[int]) -> list[tuple[float, int]]:
        n = self.lbes.n_samples
        # under torchrun rank 0 samples and every rank scores its members on those same completions
        gens, rewards = from_main(self.sample(iteration, indices) if is_main_process() else None)
        # a completion with no tokens (its first token was padding) has no likelihood to score
        scorable = [{j: r for j, r in enumerate(rs) if gens.n_tokens[p * n + j] > 0} for p, rs in enumerate(rewards)]
        kept = select(scorable, self.lbes.k_var, self.lbes.k)
        self.sampled = {"rewards": rewards, "tokens": gens.total_tokens, "kept": kept, "undefined": [],
                        "prompt_tokens": n * sum(len(self.prompt_ids[i]) for i in indices)}
        if not kept:
            self.sampled["status"] = "nothing kept"
            return [(0.0, 0)] * self.cfg.population
        self.scorer.keep([self.prompt_ids[indices[p]] + gens.ids[p * n + j] for p, j in kept],
                         [len(self.prompt_ids[indices[p]]) for p, _ in kept], [rewards[p][j] for p, j in kept])
        results = super().evaluate(iteration, sigma, indices)
        undefined = [m for m, (value, _) in enumerate(results) if math.isnan(value)]
        self.sampled["undefined"] = undefined
        self.sampled["status"] = "correlation undefined" if len(undefined) == len(results) else "scored"
        return [(0.0 if math.isnan(value) else value, tokens) for value, tokens in results]

    def counts(self, indices: Sequence[int], results: Sequence[tuple[float, int]]) -> dict[str, int]:
        """rollouts B·n sampled completions, tokens their generated tokens; prompt tokens: the sampled
        prompts plus every token prefilled by the λ member scorings."""
        return {"rollouts": len(indices) * self.lbes.n_samples, "tokens": self.sampled["tokens"],
                "prompt_tokens": self.sampled["prompt_tokens"] + sum(tokens for _, tokens in results)}

    def step(self, iteration: int) -> dict[str, Any]:
        record = super().step(iteration)
        rewards = self.sampled["rewards"]
        indices = record["prompts"]
        record.update(
            reward_mean=sum(map(sum, rewards)) / sum(map(len, rewards)),
            status=self.sampled["status"],
            sample_rewards=rewards,
            kept=[[indices[p], j] for p, j in self.sampled["kept"]],
            undefined_members=self.sampled["undefined"],
            lbes=self.lbes.to_dict(),
        )
        return record


def train(job: TrainJob) -> None:
    from esft.methods.es.distributed import init_distributed
    from esft.methods.es.memory import check_run
    from esft.models import load_model
    from esft.runs import input_fingerprint
    from esft.tasks import get_task, read_rows

    if job.corpus:
        raise EsftError("lbes scores its own samples of the task's prompts: it takes no --corpus")
    init_distributed(job.device)  # a no-op unless launched by torchrun
    model, tokenizer = load_model(job.base, job.init, dtype=job.dtype, device=job.device)
    task = get_task(job.task, format_bonus=job.task_cfg.get("format_bonus"))
    rows = read_rows(task, job.data / "train.jsonl")
    cfg = LBESConfig.from_dict(job.cfg)
    # members only prefill; the largest batch is the sampling one: B·n rows of prompt + completion
    check_run(model, {n: p for n, p in model.named_parameters() if p.requires_grad}, job.section,
              rows=min(cfg.generation_batch_size, (cfg.batch_size or len(rows)) * cfg.n_samples),
              prompt_tokens=max(map(len, encode_prompts(tokenizer, [task.messages(r) for r in rows]))),
              new_tokens=job.task_cfg["max_new_tokens"], master_device=cfg.master_device,
              theta0_device=cfg.theta0_device)
    fingerprint = json.dumps([job.task, job.task_cfg, input_fingerprint([job.init])])
    trainer = LBESTrainer(model, tokenizer, task, rows, cfg, job.task_cfg["max_new_tokens"],
                          state_dir=job.state_dir, fingerprint=fingerprint, run_id=job.run_id)
    trainer.train()
    trainer.write_outputs(job.out, job.save_dtype)
