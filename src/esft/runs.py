"""What every training method shares and none owns: the job it is given (`TrainJob`), the run log, drift,
budgets, resume state, export.

A run directory holds the same three files whatever the method (ES, GRPO, LBES), so every downstream
stage treats methods alike:

- `weights.safetensors`: tensors under standard Hugging Face names (fp32 unless the run asks for another
  export dtype; resume state keeps the fp32 master), loadable onto the base model
  (`esft.models.load_weights`) and by plain transformers; one metadata key, so identical tensors give
  identical bytes (safetensors writes two or more keys in a per-process random order);
- `run.jsonl`: one record per iteration or optimizer step with the common fields below plus the
  method's own;
- `drift.parquet`: ||θ_t − θ_0||² per named parameter per step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from esft.errors import EsftError
from esft.io import atomic_path, write_jsonl

log = logging.getLogger(__name__)

COMMON_FIELDS = ("iteration", "seconds", "reward_mean", "rollouts", "tokens", "prompt_tokens")
"""Fields of every run.jsonl record: 0-based step, wall seconds of the step, mean training reward,
completions generated, generated tokens, and prompt tokens processed (prefill-only scoring included)."""

DRIFT_COLUMNS = ["iteration", "parameter", "drift_sq"]


@dataclass(frozen=True)
class TrainJob:
    """Everything one training stage needs, as the `train` rule (or a user) gives it."""

    method: str
    task: str
    base: str
    """Base-model directory (with model.json), hub id or path."""
    data: Path
    """The task's data directory (train.jsonl)."""
    task_cfg: dict[str, Any]
    cfg: dict[str, Any]
    """The method's config slice, per-task overrides applied."""
    out: Path
    init: str | None = None
    """weights.safetensors to start from (sequential stage k > 1); None: the base."""
    run_id: str = ""
    """The run's identity (method/schedule/stage-task): keys its noise and seeds apart from other runs."""
    state_dir: Path | None = None
    device: str = "cpu"
    dtype: str = "float32"
    corpus: str | None = None
    save_dtype: str = "float32"
    """dtype of the exported weights.safetensors (the run itself and its resume state stay fp32)."""

    @property
    def section(self) -> str:
        """The method's config section, for messages: its name in the run id (es_300), else the method."""
        return self.run_id.split("/", 1)[0] or self.method


def check_record(record: Mapping[str, Any]) -> None:
    """Raise if a run.jsonl record lacks a common field: every downstream stage relies on them."""
    missing = [f for f in COMMON_FIELDS if f not in record]
    if missing:
        raise EsftError(f"run record {record.get('iteration', '?')} lacks common field(s) {missing}")


@dataclass(frozen=True)
class Budget:
    """Stop a run once its cumulative rollouts or generated tokens reach a bound (None: unbounded).

    Checked after each step, so the step that reaches the bound completes and the stop point is a
    function of the run's own deterministic counts: the same run stops at the same step every time.
    """

    max_rollouts: int | None = None
    max_tokens: int | None = None
    max_prompt_tokens: int | None = None
    """Prompt tokens processed, prefill-only scoring included: the cost of a method that generates nothing."""

    def __post_init__(self) -> None:
        for name in ("max_rollouts", "max_tokens", "max_prompt_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise EsftError(f"{name} must be >= 1 or null, got {value}")

    def exhausted(self, records: Sequence[Mapping[str, Any]]) -> str | None:
        """Why the run must stop after `records` (None: it may go on)."""
        rollouts = sum(r["rollouts"] for r in records)
        tokens = sum(r["tokens"] for r in records)
        prompt_tokens = sum(r["prompt_tokens"] for r in records)
        if self.max_rollouts is not None and rollouts >= self.max_rollouts:
            return f"max_rollouts {self.max_rollouts} reached ({rollouts} rollouts)"
        if self.max_tokens is not None and tokens >= self.max_tokens:
            return f"max_tokens {self.max_tokens} reached ({tokens} generated tokens)"
        if self.max_prompt_tokens is not None and prompt_tokens >= self.max_prompt_tokens:
            return f"max_prompt_tokens {self.max_prompt_tokens} reached ({prompt_tokens} prompt tokens)"
        return None


def run_steps(records: list[dict[str, Any]], iterations: int, budget: Budget, checkpoint_every: int,
              step: Callable[[int], dict[str, Any]], save: Callable[[], None],
              describe: Callable[[dict[str, Any]], str], unit: str = "step") -> list[dict[str, Any]]:
    """The loop of a method that owns its steps (ES, LBES, AdamW): go on after the records already logged
    (a resumed run), stop before a step once `budget` is spent, append each step's record and log
    `describe(record)`, and save the resume state every `checkpoint_every` steps but not after the last
    (the outputs follow it). `unit` names a step in the log (ES: iteration)."""
    for iteration in range(len(records), iterations):
        stop = budget.exhausted(records)
        if stop:
            log.info("stopping before %s %d: %s", unit, iteration + 1, stop)
            break
        record = step(iteration)
        records.append(record)
        log.info("%s", describe(record))
        if (iteration + 1) % checkpoint_every == 0 and iteration + 1 < iterations:
            save()
    return records


def run_seed(seed: int, run_id: str) -> int:
    """The seed of one run: `seed` keyed on the run's identity (method/schedule/stage-task).

    Sequential stages share a method's seed; keyed alone they would draw identical noise and minibatches
    in every stage, so their steps would be correlated (Proposition 1 assumes independent steps). An
    empty `run_id` keeps `seed` itself.
    """
    if not run_id:
        return seed
    digest = hashlib.blake2b(f"{seed}|run|{run_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def minibatch(seed: int, iteration: int, n_rows: int, batch_size: int | None) -> list[int]:
    """Row indices of one iteration: all rows, or `batch_size` of them drawn from (`seed`, iteration).

    Every method that draws minibatches draws them here, so two runs keyed on the same seed (ES and the
    AdamW baseline that follows it, `esft.methods.adamw`) score the same rows at every iteration.
    """
    if batch_size is None or batch_size >= n_rows:
        return list(range(n_rows))
    rng = random.Random(f"{seed}|batch|{iteration}")
    return sorted(rng.sample(range(n_rows), batch_size))


OFFLOAD = ("model", "cpu")
"""Where a training-time copy of the weights lives: on the model's device, or in host memory."""


def offload(tensor: torch.Tensor, where: str) -> torch.Tensor:
    """A private copy of `tensor` on its own device (`model`) or in host memory (`cpu`; pinned when the
    tensor is on CUDA, so that host-device copies are fast and can overlap)."""
    if where not in OFFLOAD:
        raise EsftError(f"unknown placement {where!r}; allowed: {', '.join(OFFLOAD)}")
    if where == "model" or tensor.device.type == "cpu":
        return tensor.detach().clone()
    return torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=tensor.is_cuda).copy_(tensor)


def runtime_of(params: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """The dtype and device of the live tensors a run trains, logged with every step: a replay is bitwise
    only in the run's own dtype and device (not those of a host-memory copy such as θ_0 or the master)."""
    first = next(iter(params.values()))
    return {"dtype": str(first.dtype).removeprefix("torch."), "device": first.device.type}


class Drift:
    """||θ_t − θ_0||² per named tensor per step.

    θ_0 is kept in each tensor's own dtype, which holds it exactly, on the model's device or in host
    memory (`device`, see `offload`); a measurement is one pass over the tensors. `rows` is JSON-able,
    so it travels in resume state.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], device: str = "model") -> None:
        with torch.no_grad():
            self.theta0 = {n: offload(p, device) for n, p in params.items()}
        self.rows: list[dict[str, Any]] = []

    @torch.no_grad()
    def measure(self, step: int, params: Mapping[str, torch.Tensor]) -> float:
        """Record ||θ − θ_0||² of every tensor at `step`; returns the total."""
        total = 0.0
        for name, theta0 in self.theta0.items():
            theta = params[name].detach()
            d = float(torch.sub(theta.float(), theta0.to(theta.device).float()).square_().sum())
            self.rows.append({"iteration": step, "parameter": name, "drift_sq": d})
            total += d
        return total

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=DRIFT_COLUMNS)


SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""Export dtypes of weights.safetensors: fp32 by default, bf16 halves a real model's checkpoints."""


def save_weights(path: str | Path, weights: Mapping[str, torch.Tensor], dtype: str = "float32") -> None:
    """Weights under their (HF) names in `dtype` (one rounding of the fp32 values), atomically, with one
    metadata key (byte-identical reruns)."""
    if dtype not in SAVE_DTYPES:
        raise EsftError(f"unknown checkpoint dtype {dtype!r}; allowed: {', '.join(SAVE_DTYPES)}")
    tensors = {n: t.detach().to(device="cpu", dtype=torch.float32).to(SAVE_DTYPES[dtype]).contiguous()
               for n, t in weights.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})


def write_run(out_dir: str | Path, weights: Mapping[str, torch.Tensor], records: Sequence[Mapping[str, Any]],
              drift: pd.DataFrame, dtype: str = "float32") -> None:
    """The three files of a run directory, each written atomically (weights in `dtype`); records must carry
    the common fields."""
    for record in records:
        check_record(record)
    save_weights(Path(out_dir) / "weights.safetensors", weights, dtype)
    write_log(out_dir, records, drift)


def write_log(out_dir: str | Path, records: Sequence[Mapping[str, Any]], drift: pd.DataFrame) -> None:
    """run.jsonl and drift.parquet of a run directory, atomically (weights.safetensors is written apart by
    a process that holds θ: `write_run`, or the vLLM worker)."""
    for record in records:
        check_record(record)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "run.jsonl", records)
    with atomic_path(out_dir / "drift.parquet") as tmp:
        drift.to_parquet(tmp, index=False)


class ResumeState:
    """A job's resumable state: tensors plus JSON metadata, written atomically outside its outputs.

    The state is tagged with a fingerprint of the job's configuration and inputs; state left by a
    different configuration is ignored (with a warning) rather than resumed.
    """

    def __init__(self, state_dir: str | Path | None, fingerprint: str, name: str = "state.safetensors") -> None:
        self.path = Path(state_dir) / name if state_dir else None
        self.fingerprint = fingerprint

    def save(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        payload = {"esft_state": json.dumps({"fingerprint": self.fingerprint, **meta})}
        with atomic_path(self.path) as tmp:
            save_file({n: t.detach().contiguous() for n, t in tensors.items()}, str(tmp), metadata=payload)

    def load(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """(tensors, metadata) of a matching saved state, or None."""
        if self.path is None or not self.path.exists():
            return None
        with safe_open(str(self.path), "pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("esft_state", "{}"))
        if meta.pop("fingerprint", None) != self.fingerprint:
            log.warning("ignoring state %s: it belongs to another configuration or input", self.path)
            return None
        return load_file(str(self.path)), meta

    def clear(self) -> None:
        if self.path is not None and self.path.exists():
            self.path.unlink()


def input_fingerprint(paths: Iterable[str | Path | None]) -> list[tuple[str, int, int]]:
    """(path, size, mtime) of each input file: resume state of a job whose inputs changed is not reused."""
    return [(str(p), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in paths if p]
