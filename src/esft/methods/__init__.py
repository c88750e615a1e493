"""The training methods, one room each, and their registry: one `train` entry point for every method, a
registry of peers (es, grpo, lbes, adamw).

Rooms: `es/` (the ES engine, ES and LBES on it, its vLLM driver and worker), `grpo/` (TRL's GRPOTrainer and
its memory plan), `adamw` (the AdamW baseline of the EA4LLM study). Each method module exposes
`train(job: TrainJob) -> None` (`esft.runs.TrainJob`, below every method), which loads the model, trains
one stage and writes the run directory through `esft.runs`. A room imports only modules below the methods,
never another room, this registry or the CLI; this registry alone names every method, and imports one only
when chosen, so GRPO never loads the ES engine and ES never loads TRL (tests/test_import_rules.py).
"""

from __future__ import annotations

import importlib

from esft.errors import EsftError
from esft.runs import TrainJob

METHODS: dict[str, str] = {
    "es": "esft.methods.es.run",
    "grpo": "esft.methods.grpo.trainer",
    "lbes": "esft.methods.es.lbes",
    "adamw": "esft.methods.adamw",
}
"""Method name -> module whose `train(job)` runs one stage."""


def train(job: TrainJob) -> None:
    """Run one training stage with the job's method."""
    if job.method not in METHODS:
        raise EsftError(f"unknown method {job.method!r}; available: {', '.join(METHODS)}")
    importlib.import_module(METHODS[job.method]).train(job)
