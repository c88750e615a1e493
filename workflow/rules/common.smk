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


def accuracy_config():
    """The evaluate slice without `kl`, so that KL options do not rerun the accuracy evaluation."""
    return {key: value for key, value in config["evaluate"].items() if key != "kl"}


def kl_pairs():
    """(checkpoint label, reference, KL file) of every row of kl.csv: reference `base` is KL(π_0 ‖ π_k),
    `previous` KL(π_{k−1} ‖ π_k); where π_{k−1} is the base (single schedule, stage 1) both read one file."""
    pairs = []
    for method, schedule, stage, task in training_runs():
        label = run_label(method, schedule, stage, task)
        base = f"{R}/eval/{label}/kl_base.json"
        previous = base if schedule == "single" or stage == 1 else f"{R}/eval/{label}/kl_previous.json"
        pairs += [(label, "previous", previous), (label, "base", base)]
    return pairs


def kl_reference(wildcards):
    """The earlier model of a KL pair: nothing for the base, else the previous sequential stage."""
    return [] if wildcards.reference == "base" else train_init(wildcards)


def final_targets():
    figures = [f"{R}/figures/training_fitness.png"]
    if any(schedule_tasks(m, "sequential") for m in config["train"]["methods"]):
        figures += [f"{R}/figures/accuracy_sequential.png", f"{R}/figures/kl_sequential.png"]
    tables = [f"{R}/tables/{name}.{ext}" for name in ("accuracy", "update_norms") for ext in ("csv", "md")]
    kl = [f"{R}/eval/kl.csv"] if training_runs() else []
    return figures + tables + kl
