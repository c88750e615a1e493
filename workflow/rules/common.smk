# Paths, checkpoint bookkeeping and config slices shared by all rules.
import json

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


HOLDOUT = config.get("holdout")
LM_EVAL_TASKS = f"{workflow.basedir}/resources/lm_eval"


def holdout_checkpoints():
    """Checkpoints that get holdout benchmarks: the base and every sequential stage, or every checkpoint."""
    if HOLDOUT["checkpoints"] == "all":
        return checkpoint_labels()
    return ["base"] + [run_label(*run) for run in training_runs() if run[1] == "sequential"]


def holdout_records():
    """LABEL/BENCHMARK -> record path of every holdout job (none without a holdout section)."""
    if not HOLDOUT:
        return {}
    return {f"{label}/{b}": f"{R}/holdout/{label}/{b}.json" for label in holdout_checkpoints()
            for b in HOLDOUT["benchmarks"]}


def holdout_inputs(wildcards):
    """The benchmark's generated rows (source synthetic), our MMLU task files, and IFEval's punkt_tab root."""
    inputs = {}
    if HOLDOUT["benchmarks"][wildcards.benchmark]["source"] == "synthetic":
        inputs["data"] = f"{R}/holdout/data/{wildcards.benchmark}.jsonl"
    if wildcards.benchmark == "mmlu":
        inputs["tasks"] = [f"{LM_EVAL_TASKS}/{f}" for f in ("esft_mmlu_gen.yaml", "esft_mmlu_gen_short.yaml", "utils.py")]
    else:
        inputs["nltk_data"] = f"{R}/holdout/nltk_data"
    return inputs


def final_targets():
    figures = [f"{R}/figures/training_fitness.png"]
    if any(schedule_tasks(m, "sequential") for m in config["train"]["methods"]):
        figures.append(f"{R}/figures/accuracy_sequential.png")
    tables = [f"{R}/tables/{name}.{ext}" for name in ("accuracy", "update_norms") for ext in ("csv", "md")]
    if HOLDOUT:
        tables += [f"{R}/tables/holdout.{ext}" for ext in ("csv", "md")]
    return figures + tables
