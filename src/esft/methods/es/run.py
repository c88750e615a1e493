"""ES as a training method: `train(job)` builds the configured fitness and runs one ES stage."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from esft.methods.es.config import ESConfig
from esft.methods.es.fitness import CorpusFitness, TaskFitness
from esft.methods.es.memory import ESMemoryPlan
from esft.methods.es.modes import Fitness
from esft.runs import TrainJob
from esft.tasks import Task, get_task, read_rows
from esft.tasks.corpus import training_texts


def build_fitness(cfg: ESConfig, task: Task, rows: Sequence[dict[str, Any]], tokenizer, max_new_tokens: int,
                  corpus: str | None = None) -> tuple[Fitness | None, int]:
    """(model fitness of `es.fitness`, number of rows it draws from); None for `random`, which never
    evaluates the model. loglik scores `corpus` ({text} rows) or, by default, the train conversations
    with their reference answers."""
    if cfg.fitness == "task":
        return TaskFitness(task, rows, tokenizer, max_new_tokens, cfg.generation_batch_size, cfg.temperature,
                           cfg.top_p), len(rows)
    if cfg.fitness == "loglik":
        texts = training_texts(corpus, task, rows, tokenizer)
        return CorpusFitness(texts, tokenizer, cfg.generation_batch_size, max_length=cfg.text_length,
                             average=cfg.loglik_average), len(texts)
    return None, len(rows)


def check_memory(model, cfg: ESConfig, fitness: Fitness | None, n_rows: int, max_new_tokens: int,
                 name: str) -> ESMemoryPlan:
    """Log the run's memory plan, stop early if it cannot fit (esft.methods.es.memory) and return it. Under LoRA
    the master and θ_0 hold only the (small) adapters and are left out."""
    from esft.methods.es.batched import pass_shape
    from esft.methods.es.memory import check_run

    prompts = min(cfg.batch_size or n_rows, n_rows)
    members, per_pass = (1, min(cfg.generation_batch_size, prompts)) if cfg.mode == "inplace" else \
        pass_shape(cfg.population, prompts, cfg.generation_batch_size, cfg.members_per_pass)
    rows = members * per_pass
    if isinstance(fitness, TaskFitness):
        longest, new = max(map(len, fitness.prompt_ids)), max_new_tokens
    elif isinstance(fitness, CorpusFitness):
        longest, new = max(map(len, fitness.ids)), 0
    else:  # random fitness never runs the model
        rows, longest, new = 0, 0, 0
    trainable = {} if cfg.lora is not None else {n: p for n, p in model.named_parameters() if p.requires_grad}
    return check_run(model, trainable, name, rows=rows, prompt_tokens=longest, new_tokens=new,
              master_device=cfg.master_device, theta0_device=cfg.theta0_device, mode=cfg.mode, members=members,
              rank=cfg.rank)


def train(job: TrainJob) -> None:
    from esft.methods.es.distributed import init_distributed
    from esft.methods.es.trainer import ESTrainer
    from esft.models import load_model
    from esft.runs import input_fingerprint

    cfg = ESConfig.from_dict(job.cfg)
    if cfg.backend == "vllm":
        from esft.methods.es.vllm_trainer import train as train_on_vllm

        train_on_vllm(job, cfg)
        return
    init_distributed(job.device)  # a no-op unless launched by torchrun
    model, tokenizer = load_model(job.base, job.init, dtype=job.dtype, device=job.device)
    task = get_task(job.task, format_bonus=job.task_cfg.get("format_bonus"))
    rows = read_rows(task, job.data / "train.jsonl")
    fitness, n_rows = build_fitness(cfg, task, rows, tokenizer, job.task_cfg["max_new_tokens"], job.corpus)
    check_memory(model, cfg, fitness, n_rows, job.task_cfg["max_new_tokens"], job.section)
    fingerprint = json.dumps([job.task, job.task_cfg, input_fingerprint([job.init, job.corpus])])
    trainer = ESTrainer(model, fitness, n_rows, cfg, state_dir=job.state_dir, fingerprint=fingerprint,
                        run_id=job.run_id)
    trainer.train()
    trainer.write_outputs(job.out, job.save_dtype)
