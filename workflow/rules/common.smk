# Paths, checkpoint bookkeeping and config slices shared by all rules.
import json

from esft.config import method_kind

EXP = config["experiment"]
R = f"results/{EXP}"
LOGS = f"logs/{EXP}"
RUNTIME = config["runtime"]


wildcard_constraints:
    task="[a-z0-9_]+",
    method="[a-z0-9_]+",
    schedule="single|sequential",
    stage="[0-9]+",


def js(obj):
    """A config slice as canonical JSON: a params value that changes exactly when the slice does."""
    return json.dumps(obj, sort_keys=True)


def task_names():
    return list(config["tasks"])


def schedule_tasks(method, schedule):
    """The tasks `method` trains in `schedule` (sequential or single): its own list under
    train.per_method, else the shared one."""
    own = config["train"].get("per_method", {}).get(method, {})
    return own.get(schedule, config["train"][schedule])


def training_runs():
    """(method, schedule, stage, task) of every training job."""
    runs = []
    for method in config["train"]["methods"]:
        runs += [(method, "sequential", k, t) for k, t in enumerate(schedule_tasks(method, "sequential"), 1)]
        runs += [(method, "single", 1, t) for t in schedule_tasks(method, "single")]
    return runs


def run_label(method, schedule, stage, task):
    return f"{method}/{schedule}/{stage}-{task}"


def run_dir(method, schedule, stage, task):
    return f"{R}/train/{run_label(method, schedule, stage, task)}"


def checkpoint_labels():
    return ["base"] + [run_label(*run) for run in training_runs()]


def method_config(method, task):
    """The method's slice with this task's overrides applied."""
    overrides = config["train"].get("overrides", {}).get(task, {}).get(method, {})
    return {**config[method], **overrides}


def train_dtype(method):
    """The model dtype a method trains in: runtime.dtype, except GRPO, whose AdamW needs fp32 weights
    (grpo.bf16 gives it bf16 mixed precision)."""
    return "float32" if method_kind(method) == "grpo" else RUNTIME["dtype"]


def processes(method):
    """Processes of one training job of `method` (train.processes; members sharded over them)."""
    return config["train"].get("processes", {}).get(method, 1)


def train_launcher(wildcards, threads):
    """`esft`, or torchrun with one process per GPU (or per CPU slot) when the method asks for several."""
    k = processes(wildcards.method)
    if k == 1:
        return f"esft --threads {threads}"
    return f"torchrun --standalone --nproc-per-node {k} -m esft.cli --threads {threads}"


def train_gpus(wildcards):
    """GPUs of one training job: one per process on a CUDA runtime, none on CPU."""
    return processes(wildcards.method) if RUNTIME["device"].startswith("cuda") else 0


def train_corpus(wildcards):
    """The prepared corpus, for es-kind runs whose fitness is loglik when a corpus: section is set."""
    cfg = method_config(wildcards.method, wildcards.task)
    if config.get("corpus") and method_kind(wildcards.method) == "es" and cfg.get("fitness") == "loglik":
        return f"{R}/data/corpus.jsonl"
    return []


def checkpoint_weights(wildcards):
    return [] if wildcards.ckpt == "base" else f"{R}/train/{wildcards.ckpt}/weights.safetensors"


def test_files():
    return [f"{R}/data/{t}/test.jsonl" for t in task_names()]


def train_init(wildcards):
    """Sequential stage k > 1 starts from stage k-1 of the same method; everything else from the base."""
    k = int(wildcards.stage)
    if wildcards.schedule == "single" or k == 1:
        return []
    previous = schedule_tasks(wildcards.method, "sequential")[k - 2]
    return f"{run_dir(wildcards.method, 'sequential', k - 1, previous)}/weights.safetensors"


def final_targets():
    figures = [f"{R}/figures/training_fitness.png"]
    if any(schedule_tasks(m, "sequential") for m in config["train"]["methods"]):
        figures.append(f"{R}/figures/accuracy_sequential.png")
    tables = [f"{R}/tables/{name}.{ext}" for name in ("accuracy", "update_norms") for ext in ("csv", "md")]
    return figures + tables
