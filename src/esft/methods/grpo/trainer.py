"""GRPO as a training method, through TRL's GRPOTrainer: `train(job)` runs one stage.

TRL samples the groups, normalises rewards into advantages, computes the clipped surrogate, steps
AdamW and writes checkpoints. This module maps `GRPOSettings` onto `trl.GRPOConfig`, hands TRL the
task's own reward (counting the rollouts and tokens every method is budgeted in), and turns each
optimizer step into a run.jsonl record and drift rows (`esft.runs`), which travel inside TRL's
checkpoints so that a killed job resumes from its last checkpoint rather than from scratch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
import types
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pandas as pd
import torch
from transformers import PrinterCallback, TrainerCallback

from esft.errors import EsftError
from esft.io import atomic_path, read_json, read_jsonl, write_json, write_jsonl
from esft.runs import Budget, Drift, TrainJob, input_fingerprint, write_run
from esft.tasks import Task, get_task, read_rows

log = logging.getLogger(__name__)

LossType = Literal["grpo", "dr_grpo", "dapo", "bnpo"]
Optim = Literal["adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit"]
BITSANDBYTES = ("adamw_8bit", "paged_adamw_8bit")
"""`grpo.optim` values that run bitsandbytes' 8-bit AdamW (the `gpu` extra)."""

OPTIMIZER_FILE = "optimizer.pt"
"""AdamW state written next to a stage's weights when `carry_optimizer` is on."""

CHECKPOINT_PREFIX = "checkpoint-"
"""TRL's (transformers') checkpoint directory prefix inside its output_dir."""

STATE_FILES = {"records": "esft_records.jsonl", "drift": "esft_drift.parquet", "marker": "esft_state.json"}
"""Our part of a TRL checkpoint; the marker is written last, so a checkpoint without it is incomplete."""


@dataclass(frozen=True)
class GRPOSettings:
    """GRPO hyperparameters, each mapped onto the `trl.GRPOConfig` field of the same name unless noted.

    The paper fixes AdamW (TRL `optim="adamw_torch"`), linear decay (`lr_scheduler_type="linear"`, no
    warmup), max grad norm 1.0, KL coefficient 0, 8 rollouts per prompt and 20 epochs per task; those
    are the defaults here, and the schedule is not an option (`optim` only picks an AdamW implementation,
    to fit a model's states in memory). Everything the paper does not fix keeps TRL 1.16's default: weight
    decay 0, learning rate 1e-6, AdamW betas/eps, reward scaling by the group's std
    (`scale_rewards="group"`), sampling with top_p 1 / top_k 0, one optimizer step per generation batch
    (`num_iterations=1`), gradient checkpointing on. Every completion of an optimizer step is sampled
    with that step's weights (`steps_per_generation` divides `gradient_accumulation_steps`), so the
    importance ratio is exactly 1 and the clip (`epsilon`) never binds, as in the paper's authors' code,
    which also takes one step per batch of rollouts.
    """

    learning_rate: float = 1e-6
    """AdamW peak learning rate, decayed linearly to 0 over the run (TRL's default; the paper gives none)."""
    num_train_epochs: float = 20.0
    """Passes over the train prompts, each prompt sampled `num_generations` times per pass (paper: 20)."""
    max_steps: int | None = None
    """Optimizer steps; when set it overrides `num_train_epochs` (TRL `max_steps`, -1 when null)."""
    num_generations: int = 8
    """Completions sampled per prompt: the group whose rewards are normalised into advantages (paper: 8)."""
    per_device_train_batch_size: int = 8
    """Completions (not prompts) per micro-batch and device; prompts per optimizer step are
    per_device_train_batch_size · gradient_accumulation_steps · devices / num_generations. An epoch takes
    the shuffled prompts in whole steps and drops the remainder (TRL's RepeatSampler)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; TRL generates the whole step's completions at once."""
    steps_per_generation: int | None = None
    """Micro-batches whose completions one `generate` call samples (TRL `steps_per_generation`; null: all of
    the step's): bounds the rows of a generation pass, and so its KV cache, without changing the step. It
    must divide gradient_accumulation_steps (all completions of a step then come from that step's weights)."""
    temperature: float = 1.0
    """Sampling temperature of the rollouts (TRL's default; GRPO always samples)."""
    top_p: float = 1.0
    """Nucleus sampling of the rollouts: the smallest set of tokens holding this probability (TRL's default
    1.0: no truncation). The loss scores the sampled tokens under the untruncated distribution."""
    epsilon: float = 0.2
    """PPO clip range of the importance ratio (TRL's default); inert with one step per batch of rollouts."""
    warmup_ratio: float = 0.0
    """Fraction of the steps over which the learning rate rises linearly from 0 before its linear decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping by global norm (paper: 1.0)."""
    beta: float = 0.0
    """KL coefficient to the reference model; 0 (paper) drops the KL term and loads no reference model."""
    loss_type: LossType = "grpo"
    """How token losses are aggregated. grpo (the paper's, DeepSeekMath's GRPO clipped surrogate):
    mean over each completion's tokens, then over completions; dr_grpo: sum divided by a constant
    (max_completion_length); dapo (TRL 1.16's default): divided by the number of tokens in the
    accumulated batch; bnpo: by those of the local micro-batch."""
    seed: int = 0
    """Sampling and data order; TRL's seed is derived from it and the run's identity (run_id)."""
    bf16: bool = False
    """bf16 mixed precision (autocast over fp32 master weights); GPU runs set it, CPU runs leave it off."""
    gradient_checkpointing: bool = True
    """Recompute each layer's activations in the backward pass instead of keeping them (TRL's default):
    a micro-batch then holds each layer's input only (`esft.methods.grpo.memory`), at about a third more compute."""
    optim: Optim = "adamw_torch"
    """The AdamW implementation (TRL `optim`): adamw_torch (the paper's, foreach), adamw_torch_fused (the
    same update in one kernel, without the foreach step's fp32 buffer), adamw_8bit / paged_adamw_8bit
    (bitsandbytes' blockwise 8-bit moments: 2 bytes per entry instead of 8, an approximation of AdamW;
    paged states may move to host memory under pressure). The 8-bit ones need the `gpu` extra."""
    max_rollouts: int | None = None
    """Stop after the optimizer step whose cumulative rollouts (completions) reach this (null: no bound)."""
    max_tokens: int | None = None
    """Stop after the optimizer step whose cumulative generated tokens reach this (null: no bound)."""
    checkpoint_every: int = 100
    """Optimizer steps between TRL checkpoints (TRL `save_steps`) in the job's state directory."""
    carry_optimizer: bool = False
    """Sequential stages: continue the previous stage's AdamW moments and step count (read from
    optimizer.pt next to the --init weights) instead of a fresh AdamW, as the paper's authors' code keeps
    one optimizer across its tasks; every stage then writes its own optimizer.pt next to its weights. The
    learning-rate schedule restarts either way."""

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("learning_rate", "num_train_epochs", "temperature", "max_grad_norm", "epsilon"):
            if not getattr(self, name) > 0:
                raise EsftError(f"grpo.{name} must be > 0, got {getattr(self, name)}")
        for name in ("beta", "seed"):
            if getattr(self, name) < 0:
                raise EsftError(f"grpo.{name} must be >= 0, got {getattr(self, name)}")
        if self.num_generations < 2:
            raise EsftError(f"grpo.num_generations must be >= 2 (advantages compare completions of one prompt), "
                            f"got {self.num_generations}")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise EsftError(f"grpo.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.top_p <= 1 or not 0 <= self.warmup_ratio < 1:
            raise EsftError(f"grpo.top_p must be in (0, 1] and grpo.warmup_ratio in [0, 1), got {self.top_p} and "
                            f"{self.warmup_ratio}")
        for name in ("max_steps", "max_rollouts", "max_tokens", "steps_per_generation"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise EsftError(f"grpo.{name} must be >= 1 or null, got {getattr(self, name)}")
        if self.steps_per_generation is not None and self.gradient_accumulation_steps % self.steps_per_generation:
            raise EsftError(f"grpo.steps_per_generation ({self.steps_per_generation}) must divide "
                            f"gradient_accumulation_steps ({self.gradient_accumulation_steps}): a step's completions "
                            "all come from that step's weights")
        if self.generation_rows % self.num_generations:
            raise EsftError(f"grpo: completions per generation (per_device_train_batch_size · steps_per_generation, "
                            f"or gradient_accumulation_steps when null, = {self.generation_rows}) must be a multiple "
                            f"of num_generations ({self.num_generations}): a generation holds whole groups")

    @property
    def generation_rows(self) -> int:
        """Completions one generation pass samples (per device)."""
        return self.per_device_train_batch_size * (self.steps_per_generation or self.gradient_accumulation_steps)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> GRPOSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise EsftError(f"unknown grpo option(s) {unknown}; allowed: {sorted(known)}")
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def trl_config(self, output_dir: str | Path, max_completion_length: int, seed: int, use_cpu: bool,
                   save: bool):
        """The `trl.GRPOConfig` of one stage: logging every step (one run.jsonl record per optimizer step)."""
        from trl import GRPOConfig

        return GRPOConfig(
            output_dir=str(output_dir),
            learning_rate=self.learning_rate,
            num_train_epochs=self.num_train_epochs,
            max_steps=-1 if self.max_steps is None else self.max_steps,
            num_generations=self.num_generations,
            per_device_train_batch_size=self.per_device_train_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            steps_per_generation=self.steps_per_generation,
            temperature=self.temperature,
            top_p=self.top_p,
            epsilon=self.epsilon,
            warmup_steps=self.warmup_ratio,  # transformers 5 reads a float in [0, 1) as a ratio (ceil of the steps)
            max_grad_norm=self.max_grad_norm,
            beta=self.beta,
            loss_type=self.loss_type,
            seed=seed,
            bf16=self.bf16,
            max_completion_length=max_completion_length,
            optim=self.optim,
            gradient_checkpointing=self.gradient_checkpointing,
            lr_scheduler_type="linear",
            use_cpu=use_cpu,
            report_to=[],
            logging_strategy="steps",
            logging_steps=1,
            save_strategy="steps" if save else "no",
            save_steps=self.checkpoint_every,
            save_total_limit=2,  # the newest may lack our records if killed mid-save: keep the one before
            disable_tqdm=True,
        )


def _fits(value: Any, hint: Any) -> bool:
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, h) for h in get_args(hint))
    if origin is Literal:
        return value in get_args(hint)
    if hint is type(None):
        return value is None
    if hint is bool:
        return type(value) is bool
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check_types(settings: GRPOSettings) -> None:
    hints = get_type_hints(type(settings))
    for f in fields(settings):
        value = getattr(settings, f.name)
        if not _fits(value, hints[f.name]):
            raise EsftError(f"grpo.{f.name} must be {f.type}, got {value!r}")


def trl_seed(seed: int, run_id: str) -> int:
    """TRL's seed for a stage: `seed` keyed by the run's identity, so two stages never share a stream."""
    if not run_id:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/{run_id}".encode()).digest()[:4], "little") >> 1


class TaskReward:
    """The task's own `Task.reward` in TRL's reward-function signature, counting what was generated.

    TRL 1.16 calls it once per generation batch (one optimizer step) with `prompts`, `completions`
    (conversational: [{"role": "assistant", "content": text}], special tokens skipped),
    `completion_ids` (each cut after its first eos, the eos included), the dataset's other columns
    (here `row`) and trainer_state / log_extra / log_metric.
    """

    def __init__(self, task: Task, rows: Sequence[dict[str, Any]], prompt_lengths: Sequence[int]) -> None:
        self.__name__ = task.name  # TRL logs rewards/<name>/mean
        self.task, self.rows, self.prompt_lengths = task, rows, prompt_lengths
        self.pending = self._zero()

    @staticmethod
    def _zero() -> dict[str, float]:
        return {"rollouts": 0, "tokens": 0, "prompt_tokens": 0, "reward_sum": 0.0}

    def __call__(self, prompts, completions, completion_ids, row, **_) -> list[float]:
        rewards = []
        for completion, index in zip(completions, row, strict=True):
            try:
                reward = float(self.task.reward(completion[0]["content"], self.rows[index]))
            except Exception as err:
                raise EsftError(f"{self.task.name}: the reward raised on train row {index}: {err!r}") from err
            if not math.isfinite(reward):
                raise EsftError(f"{self.task.name}: the reward of train row {index} is {reward}, not finite")
            rewards.append(reward)
        self.pending["rollouts"] += len(completion_ids)
        self.pending["tokens"] += sum(len(ids) for ids in completion_ids)
        self.pending["prompt_tokens"] += sum(self.prompt_lengths[i] for i in row)
        self.pending["reward_sum"] += sum(rewards)
        return rewards

    def take(self) -> dict[str, float]:
        """The counts since the last call (one optimizer step's worth)."""
        counts, self.pending = self.pending, self._zero()
        return counts


class RunLog(TrainerCallback):
    """One run.jsonl record and one set of drift rows per optimizer step, saved inside TRL's checkpoints.

    Records are built in `on_log`: with logging_steps=1 the Trainer calls it after every optimizer step,
    after `on_step_end`, with TRL's metrics of that step (on_step_end sees none of them). It then saves
    checkpoints and calls `on_save`, where this callback adds its records, drift rows and a marker.
    """

    def __init__(self, reward: TaskReward, model: torch.nn.Module, budget: Budget, fingerprint: str,
                 meta: dict[str, Any], carried_optimizer: Path | None = None) -> None:
        self.reward, self.model, self.budget = reward, model, budget
        self.fingerprint, self.meta = fingerprint, meta
        self.carried_optimizer = carried_optimizer
        self.drift = Drift(dict(model.named_parameters()))
        self.records: list[dict[str, Any]] = []
        self.started = time.perf_counter()

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if self.carried_optimizer is not None:
            load_optimizer_state(optimizer, self.carried_optimizer)

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:  # the end-of-training summary (train_runtime, ...)
            return
        counts = self.reward.take()
        step = state.global_step - 1
        drift = self.drift.measure(step, dict(self.model.named_parameters()))
        reward_sum = counts.pop("reward_sum")
        record = {
            "iteration": step,
            "seconds": time.perf_counter() - self.started,
            "reward_mean": reward_sum / counts["rollouts"],
            **counts,
            **logs,
            "drift_sq": drift,
            **self.meta,
        }
        self.records.append(record)
        log.info("step %d reward %.4f loss %.4g grad_norm %.4g | %d rollouts, %d tokens, %.2fs", step + 1,
                 record["reward_mean"], logs["loss"], logs.get("grad_norm", float("nan")), record["rollouts"],
                 record["tokens"], record["seconds"])
        stop = self.budget.exhausted(self.records)
        if stop:
            log.info("stopping after step %d: %s", step + 1, stop)
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
        write_jsonl(checkpoint / STATE_FILES["records"], self.records)
        with atomic_path(checkpoint / STATE_FILES["drift"]) as tmp:
            self.drift.frame().to_parquet(tmp, index=False)
        write_json(checkpoint / STATE_FILES["marker"], {"fingerprint": self.fingerprint})

    def restore(self, checkpoint: Path) -> None:
        self.records = read_jsonl(checkpoint / STATE_FILES["records"])
        self.drift.rows = pd.read_parquet(checkpoint / STATE_FILES["drift"]).to_dict("records")


def trainer_class():
    """TRL's GRPOTrainer with `EpochSeededSampler` (imported late: TRL loads only when GRPO runs)."""
    from trl import GRPOTrainer
    from trl.trainer.utils import RepeatSampler

    class EpochSeededSampler(RepeatSampler):
        """TRL's RepeatSampler with each epoch's prompt order a function of (seed, epoch) alone.

        TRL draws successive epochs' permutations from one generator; a resumed run does not replay
        the finished epochs, so it would take epoch 0's order for the epoch it resumes in. The Trainer
        calls `set_epoch` (through accelerate's data loader) before every epoch, resumed or not.
        """

        def set_epoch(self, epoch: int) -> None:
            if self.shuffle:
                self.generator.manual_seed(self.seed + epoch)

    class Trainer(GRPOTrainer):
        def _get_train_sampler(self, dataset=None):
            s = super()._get_train_sampler(dataset)
            return EpochSeededSampler(s.data_source, s.mini_repeat_count, s.batch_size, s.repeat_count, s.shuffle,
                                      s.seed)

    return Trainer


def resumable_checkpoint(output_dir: Path, fingerprint: str) -> Path | None:
    """The newest complete checkpoint of this configuration in TRL's output_dir, or None.

    Incomplete checkpoints (killed before our marker was written) are removed; checkpoints of another
    configuration or input are removed with a warning, as `esft.runs.ResumeState` ignores such state.
    """
    checkpoints = sorted(output_dir.glob(f"{CHECKPOINT_PREFIX}*"),
                         key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)), reverse=True)
    for checkpoint in checkpoints:
        marker = checkpoint / STATE_FILES["marker"]
        if not marker.exists():
            log.warning("removing incomplete checkpoint %s", checkpoint)
        elif read_json(marker)["fingerprint"] != fingerprint:
            log.warning("removing %s: it belongs to another configuration or input", checkpoint)
        else:
            return checkpoint
        shutil.rmtree(checkpoint)
    return None


def load_optimizer_state(optimizer: torch.optim.Optimizer, path: Path) -> None:
    """Continue a previous stage's AdamW moments and step counts; its hyperparameters (learning rate
    schedule included) stay this stage's. Torch's AdamW keeps `exp_avg`, bitsandbytes' 8-bit one `state1`:
    each parameter's state must hold a tensor of the parameter's shape."""
    saved = torch.load(path, map_location="cpu", weights_only=True)["state"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    shapes_match = len(saved) == len(params) and all(
        any(torch.is_tensor(v) and v.shape == p.shape for v in saved[i].values())
        for i, p in enumerate(params) if i in saved)
    if not shapes_match:
        raise EsftError(f"{path}: the optimizer state does not match this model's parameters")
    state = optimizer.state_dict()
    state["state"] = saved
    optimizer.load_state_dict(state)


def check_optimizer(optim: str) -> None:
    """Transformers imports bitsandbytes only when it builds the optimizer, after the model is loaded and the
    first completions are sampled: a missing package stops the job at start instead."""
    if optim in BITSANDBYTES:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise EsftError(f"grpo.optim {optim} needs bitsandbytes: pip install 'esft[gpu]' on the CUDA machine, "
                            "or use optim adamw_torch / adamw_torch_fused") from None


def check_memory(model: torch.nn.Module, settings: GRPOSettings, prompt_tokens: int, completion_tokens: int,
                 section: str) -> None:
    """Log the job's memory plan (`esft.methods.grpo.memory`) and stop at once, naming the options to change, if it
    cannot fit on the model's device."""
    from esft.memory import device_capacity, log_and_check
    from esft.methods.grpo.memory import plan_grpo

    plan = plan_grpo(model, optim=settings.optim, gradient_checkpointing=settings.gradient_checkpointing,
                     bf16=settings.bf16, micro_batch=settings.per_device_train_batch_size,
                     generation_rows=settings.generation_rows,
                     prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     capacity=device_capacity(next(model.parameters()).device))
    log_and_check(plan, section)


def check_special_tokens(tokenizer) -> None:
    """The pad token must differ from the end-of-turn token (the tokenizer's eos, which closes every chat
    turn): where pad = eos, padding and the end of turn cannot be told apart and the end of turn drops out
    of the loss. Other end-of-sequence ids may equal pad (Qwen3 lists its pad <|endoftext|> among them):
    TRL stops a completion at every eos id of the model's generation_config plus the tokenizer's."""
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise EsftError(f"grpo needs a pad token distinct from the end-of-turn token {tokenizer.eos_token!r}; "
                        f"pad is {tokenizer.pad_token!r}")


def train(job: TrainJob) -> None:
    from datasets import Dataset

    from esft.models import load_model

    settings = GRPOSettings.from_dict(job.cfg)
    check_optimizer(settings.optim)
    if job.dtype != "float32":
        raise EsftError(f"grpo trains fp32 weights (AdamW on {job.dtype} weights drops small updates): "
                        "run with dtype float32 and set grpo.bf16 for bf16 mixed precision")
    model, tokenizer = load_model(job.base, job.init, dtype=job.dtype, device=job.device)
    check_special_tokens(tokenizer)
    task = get_task(job.task, format_bonus=job.task_cfg.get("format_bonus"))
    train_file = job.data / "train.jsonl"
    rows = read_rows(task, train_file)
    prompts = [task.messages(row) for row in rows]
    # The row index rather than the row's fields: a field may itself be called `prompt` (conciseness).
    dataset = Dataset.from_dict({"prompt": prompts, "row": list(range(len(rows)))})
    prompt_lengths = [len(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True,
                                                        return_dict=True)["input_ids"]) for p in prompts]
    reward = TaskReward(task, rows, prompt_lengths)
    check_memory(model, settings, max(prompt_lengths), job.task_cfg["max_new_tokens"], job.section)

    fingerprint = json.dumps([job.method, job.task, job.task_cfg, settings.to_dict(), job.run_id, str(job.base),
                              input_fingerprint([job.init, train_file])])
    carried = None
    if settings.carry_optimizer and job.init is not None:
        carried = Path(job.init).parent / OPTIMIZER_FILE
        if not carried.exists():
            raise EsftError(f"grpo.carry_optimizer: {carried} does not exist (was the previous stage "
                            "trained with carry_optimizer?)")
    seed = trl_seed(settings.seed, job.run_id)
    meta = {"method": "grpo", "run_id": job.run_id, "seed": settings.seed, "trl_seed": seed,
            "config": settings.to_dict(), "dtype": job.dtype, "device": torch.device(job.device).type}

    with tempfile.TemporaryDirectory(prefix="esft-grpo-") as scratch:
        output_dir = Path(job.state_dir) / "trl" if job.state_dir else Path(scratch)
        resume = resumable_checkpoint(output_dir, fingerprint) if job.state_dir else None
        run_log = RunLog(reward, model, Budget(settings.max_rollouts, settings.max_tokens), fingerprint, meta,
                         carried_optimizer=None if resume else carried)
        if resume is not None:
            log.info("resuming from %s", resume)
            run_log.restore(resume)
        trainer = trainer_class()(
            model=model,
            reward_funcs=reward,
            args=settings.trl_config(output_dir, job.task_cfg["max_new_tokens"], seed,
                                     use_cpu=torch.device(job.device).type == "cpu", save=job.state_dir is not None),
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[run_log],
        )
        trainer.remove_callback(PrinterCallback)  # RunLog logs each step; the printer would dump every metric
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        write_run(job.out, dict(trainer.model.named_parameters()), run_log.records, run_log.drift.frame(),
                  job.save_dtype)
        if settings.carry_optimizer:
            with atomic_path(Path(job.out) / OPTIMIZER_FILE) as tmp:
                torch.save(trainer.optimizer.state_dict(), tmp)
        if job.state_dir:
            shutil.rmtree(output_dir)
