"""One `train` entry point for every method: a registry of peers (es, grpo, lbes, adamw).

Each method module exposes `train(job: TrainJob) -> None`, which loads the model, trains one stage
and writes the run directory through `esft.runs`. Methods are imported only when chosen, so GRPO
never loads the ES engine and ES never loads TRL.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esft.errors import EsftError

METHODS: dict[str, str] = {
    "es": "esft.es.run",
    "grpo": "esft.grpo",
    "lbes": "esft.es.lbes",
    "adamw": "esft.pretrain",
}
"""Method name -> module whose `train(job)` runs one stage."""


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


def train(job: TrainJob) -> None:
    """Run one training stage with the job's method."""
    if job.method not in METHODS:
        raise EsftError(f"unknown method {job.method!r}; available: {', '.join(METHODS)}")
    importlib.import_module(METHODS[job.method]).train(job)
