# Paths, checkpoint bookkeeping and config slices shared by all rules.
import json
from collections import namedtuple
from pathlib import Path

from esft.config import method_kind

EXP = config["experiment"]
R = f"results/{EXP}"
LOGS = f"logs/{EXP}"
RUNTIME = config["runtime"]
SEEDS = config["seeds"]
# one training job; its label (and directory under train/) is seed-S/METHOD/SCHEDULE/K-TASK
Run = namedtuple("Run", "seed method schedule stage task")
# a checkpoint both compared methods reach (geometry), in one seed
Pair = namedtuple("Pair", "seed schedule stage task")


wildcard_constraints:
    task="[a-z0-9_]+",
    method="[a-z0-9_]+",
    schedule="single|sequential",
    stage="[0-9]+",
    seed="[0-9]+",


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
    """Every training job: each seed trains every method on its sequential and single tasks."""
    runs = []
    for seed in SEEDS:
        for method in config["train"]["methods"]:
            runs += [
                Run(seed, method, "sequential", k, t) for k, t in enumerate(schedule_tasks(method, "sequential"), 1)
            ]
            runs += [Run(seed, method, "single", 1, t) for t in schedule_tasks(method, "single")]
    return runs


def run_label(seed, method, schedule, stage, task):
    return f"seed-{seed}/{method}/{schedule}/{stage}-{task}"


def run_dir(seed, method, schedule, stage, task):
    return f"{R}/train/{run_label(seed, method, schedule, stage, task)}"


def checkpoint_labels():
    return ["base"] + [run_label(*run) for run in training_runs()]


def method_config(method, task, seed=None):
    """The method's slice with this task's overrides applied, and the experiment's seed (seeds:) as its
    `seed` when one is given."""
    overrides = config["train"].get("overrides", {}).get(task, {}).get(method, {})
    return {**config[method], **overrides, **({} if seed is None else {"seed": int(seed)})}


def train_dtype(method):
    """The model dtype a method trains in: runtime.dtype, except GRPO and AdamW pretraining, whose AdamW
    needs fp32 weights (grpo.bf16 gives GRPO bf16 mixed precision)."""
    return "float32" if method_kind(method) in ("grpo", "adamw") else RUNTIME["dtype"]


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


def scores_corpus(method, task):
    """Whether `method` trains `task` on corpus log-likelihood: es-kind runs with fitness loglik, adamw runs."""
    kind = method_kind(method)
    return kind == "adamw" or (kind == "es" and method_config(method, task).get("fitness") == "loglik")


def train_corpus(wildcards):
    """The prepared corpus, for runs that score corpus log-likelihood when a corpus: section is set."""
    if config.get("corpus") and scores_corpus(wildcards.method, wildcards.task):
        return f"{R}/data/corpus.jsonl"
    return []


def without_seed(label):
    """A run label without its seed-S/ part: the run a seed-wise rule writes in every seed."""
    return label.partition("/")[2]


def run_names():
    """METHOD/SCHEDULE/K-TASK of every run a seed trains (the same in every seed)."""
    return [without_seed(run_label(*run)) for run in training_runs() if run.seed == SEEDS[0]]


def seed_weights(wildcards):
    """Every checkpoint of one seed, in run_names() order: the batched evaluation rules score them in one
    process, so start-up (imports, lm-eval's environment report) is paid once per seed, not per checkpoint."""
    return [f"{R}/train/seed-{wildcards.seed}/{name}/weights.safetensors" for name in run_names()]


def holdout_names():
    """METHOD/SCHEDULE/K-TASK of the runs whose checkpoints get holdout benchmarks, in every seed."""
    return [without_seed(label) for label in holdout_checkpoints() if label.startswith(f"seed-{SEEDS[0]}/")]


def kl_jobs():
    """(run name, reference, reference weights or `base`) of each KL file a seed's KL job writes: KL to the base
    for every run, to the previous stage for sequential stages after the first."""
    jobs = []
    for run in training_runs():
        if run.seed != SEEDS[0]:
            continue
        name = without_seed(run_label(*run))
        jobs.append((name, "base", "base"))
        if run.schedule == "sequential" and run.stage > 1:
            previous = schedule_tasks(run.method, "sequential")[run.stage - 2]
            jobs.append((name, "previous", f"{run.method}/sequential/{run.stage - 1}-{previous}"))
    return jobs


def kl_reference_args(wildcards):
    """`--reference` of a seed's KL job: `base` or the previous stage's weights, per KL file."""
    return " ".join(
        ref if ref == "base" else f"{R}/train/seed-{wildcards.seed}/{ref}/weights.safetensors"
        for _, _, ref in kl_jobs()
    )


def test_files():
    return [f"{R}/data/{t}/test.jsonl" for t in task_names()]


def prebuilt_base():
    """The shipped tiny-model files (model.prebuilt) that base_model copies; none where it builds the model."""
    prebuilt = config["model"].get("prebuilt")
    if config["model"]["source"] != "tiny" or not prebuilt:
        return []
    return [str(p) for p in sorted(Path(workflow.basedir, prebuilt).iterdir())]


def train_init(wildcards):
    """Sequential stage k > 1 starts from stage k-1 of the same method; everything else from the base."""
    k = int(wildcards.stage)
    if wildcards.schedule == "single" or k == 1:
        return []
    previous = schedule_tasks(wildcards.method, "sequential")[k - 2]
    return f"{run_dir(wildcards.seed, wildcards.method, 'sequential', k - 1, previous)}/weights.safetensors"


def accuracy_config():
    """The evaluate slice without `kl` and `test_curve`, so that their options do not rerun the accuracy
    evaluation."""
    return {key: value for key, value in config["evaluate"].items() if key not in ("kl", "test_curve")}


def kl_pairs():
    """(checkpoint label, reference, KL file) of every row of kl.csv: reference `base` is KL(π_0 ‖ π_k),
    `previous` KL(π_{k−1} ‖ π_k); where π_{k−1} is the base (single schedule, stage 1) both read one file."""
    pairs = []
    for run in training_runs():
        label = run_label(*run)
        base = f"{R}/eval/{label}/kl_base.json"
        previous = base if run.schedule == "single" or run.stage == 1 else f"{R}/eval/{label}/kl_previous.json"
        pairs += [(label, "previous", previous), (label, "base", base)]
    return pairs


def figure_cfg(name):
    """One figure's options: the shared dpi plus its own section, so changing it redraws only that figure."""
    return js({"dpi": config["figures"].get("dpi", 120), **config["figures"].get(name, {})})


def table_cfg(name=None):
    return js({"float_format": config["tables"].get("float_format", ".3f"), **config["tables"].get(name, {})})


def geometry_methods():
    return config["geometry"]["methods"]


def geometry_runs():
    """Training runs whose drift is fitted: those of geometry.drift.methods (null: the compared methods)."""
    methods = config["geometry"].get("drift", {}).get("methods") or geometry_methods()
    return [run for run in training_runs() if run.method in methods]


def geometry_pairs():
    """Each checkpoint both compared methods reach by training the same tasks (sequential stages up to the
    first difference in their task lists), in every seed; none unless both are trained."""
    a, b = geometry_methods()
    if not {a, b} <= set(config["train"]["methods"]):
        return []
    pairs = []
    for seed in SEEDS:
        for schedule in config["geometry"]["schedules"]:
            tasks_a, tasks_b = schedule_tasks(a, schedule), schedule_tasks(b, schedule)
            if schedule == "sequential":
                for k, (task_a, task_b) in enumerate(zip(tasks_a, tasks_b), 1):
                    if task_a != task_b:
                        break
                    pairs.append(Pair(seed, schedule, k, task_a))
            else:
                pairs += [Pair(seed, schedule, 1, t) for t in tasks_a if t in tasks_b]
    return pairs


def pair_weights(pairs=None):
    """Both methods' weights at `pairs` (default: every geometry pair)."""
    pairs = geometry_pairs() if pairs is None else pairs
    return [
        f"{run_dir(p.seed, m, p.schedule, p.stage, p.task)}/weights.safetensors"
        for p in pairs
        for m in geometry_methods()
    ]


def pair_args(pairs=None):
    """`--pairs` of the esft geometry stages: seed-S/schedule/k-task=WEIGHTS_A,WEIGHTS_B (default: every
    pair)."""
    pairs = geometry_pairs() if pairs is None else pairs
    return " ".join(
        f"seed-{p.seed}/{p.schedule}/{p.stage}-{p.task}="
        + ",".join(f"{run_dir(p.seed, m, p.schedule, p.stage, p.task)}/weights.safetensors" for m in geometry_methods())
        for p in pairs
    )


def pair_tasks():
    return list(dict.fromkeys(p.task for p in geometry_pairs()))


def geometry_cfg(stage):
    """A pair stage's slice: its own section plus the evaluation settings both pair stages share."""
    g = config["geometry"]
    return js(
        {"generation_batch_size": g["generation_batch_size"], "variants_per_pass": g["variants_per_pass"], **g[stage]}
    )


def budget_runs():
    """(seed, method, task, k) of Table 1's earlier budgets: single-task runs rebuilt after k iterations."""
    budgets = config["tables"].get("single_task", {}).get("budgets", {})
    return [
        (s, m, t, k)
        for s in SEEDS
        for m in config["train"]["methods"]
        for t in schedule_tasks(m, "single")
        for k in budgets.get(m, [])
    ]


def budget_dir(seed, method, task, k):
    return f"{R}/budget/seed-{seed}/{method}/single/1-{task}/{k}"


def budget_key(seed, method, task, k):
    """A budget's `LABEL@K` key for the stages that read it."""
    return f"{run_label(seed, method, 'single', 1, task)}@{k}"


def single_runs():
    return [run for run in training_runs() if run.schedule == "single"]


def findings_inputs(wildcards):
    """What the findings table has measured: each input present only when its stage runs."""
    inputs = {}
    if geometry_pairs():
        inputs.update(
            deltas=f"{R}/geometry/deltas.csv",
            interpolation=f"{R}/geometry/interpolation.csv",
            probes=f"{R}/geometry/probes.csv",
        )
    if geometry_runs():
        inputs["drift_fits"] = f"{R}/geometry/drift_fits.csv"
    if probe_holdout_pairs():
        inputs["probes_holdout"] = f"{R}/geometry/probes_holdout.csv"
    if training_runs():
        inputs.update(accuracy=f"{R}/eval/accuracy.csv", kl=f"{R}/eval/kl.csv")
    return inputs


HOLDOUT = config.get("holdout")
LM_EVAL_TASKS = f"{workflow.basedir}/resources/lm_eval"


def holdout_checkpoints():
    """Checkpoints that get holdout benchmarks: the base and every sequential stage, or every checkpoint."""
    if HOLDOUT["checkpoints"] == "all":
        return checkpoint_labels()
    return ["base"] + [run_label(*run) for run in training_runs() if run.schedule == "sequential"]


def holdout_records():
    """LABEL/BENCHMARK -> record path of every holdout job (none without a holdout section)."""
    if not HOLDOUT:
        return {}
    return {
        f"{label}/{b}": f"{R}/holdout/{label}/{b}.json"
        for label in holdout_checkpoints()
        for b in HOLDOUT["benchmarks"]
    }


def holdout_snapshot(benchmark):
    """What a snapshot of the benchmark's hub dataset is of (dataset, config_name, revision), or None where
    the rows are not a hub dataset evaluated as one task (synthetic, local files, loglikelihood MMLU)."""
    cfg = HOLDOUT["benchmarks"][benchmark]
    if cfg["source"] != "hf" or cfg["dataset"] in ("json", "parquet", "csv") or cfg.get("protocol") == "loglikelihood":
        return None
    return {"source": "hf", **{key: cfg.get(key) for key in ("dataset", "config_name", "revision")}}


def benchmark_inputs(benchmark):
    """A benchmark's rows (generated stand-ins, or the snapshot of its hub dataset), our MMLU task files,
    and IFEval's punkt_tab root."""
    inputs = {}
    if HOLDOUT["benchmarks"][benchmark]["source"] == "synthetic":
        inputs["data"] = f"{R}/holdout/data/{benchmark}.jsonl"
    elif holdout_snapshot(benchmark):
        inputs["data"] = f"{R}/holdout/data/{benchmark}"
    if benchmark == "mmlu":
        inputs["tasks"] = [
            f"{LM_EVAL_TASKS}/{f}" for f in ("esft_mmlu_gen.yaml", "esft_mmlu_gen_short.yaml", "utils.py")
        ]
    else:
        inputs["nltk_data"] = f"{R}/holdout/nltk_data"
    return inputs


# --- EA4LLM: ES pretraining against its AdamW baseline ------------------------------------------------------
def pretraining_runs():
    """Single-task runs of the pretraining-loss figure: es-kind runs with fitness loglik and adamw runs, on
    the tasks that both kinds train (none unless both do)."""
    runs = [run for run in single_runs() if scores_corpus(run.method, run.task)]
    kinds = {}
    for run in runs:
        kinds.setdefault(run.task, set()).add(method_kind(run.method))
    return [run for run in runs if kinds[run.task] == {"es", "adamw"}]


def holdout_inputs(wildcards):
    return benchmark_inputs(wildcards.benchmark)


def probe_holdout_pairs():
    """Checkpoint pairs whose probes also run the holdout benchmarks (Figure 5); none without a holdout
    section. `stages: last` keeps the final sequential pair and every single-task pair (each the last stage
    of its run)."""
    if not HOLDOUT:
        return []
    pairs = geometry_pairs()
    if config["geometry"]["probe_holdout"]["stages"] == "all":
        return pairs
    last = max((p.stage for p in pairs if p.schedule == "sequential"), default=None)
    return [p for p in pairs if p.schedule != "sequential" or p.stage == last]


def probe_holdout_cfg():
    """The probe directions of the probe-holdout stage: its scales (null: the probes'), the probes' axis and
    random directions, so that a change of any of them reruns it."""
    g = config["geometry"]
    scales = g["probe_holdout"]["scales"]
    return js(
        {
            "scales": g["probes"]["scales"] if scales is None else scales,
            "axis": g["probes"].get("axis", "relative"),
            "random_directions": g["probes"]["random_directions"],
            "seed": g["probes"]["seed"],
        }
    )


def probe_holdout_data(wildcards):
    """`--data` of the probe-holdout stage: BENCHMARK=ROWS of each synthetic benchmark."""
    rows = {benchmark: benchmark_inputs(benchmark).get("data") for benchmark in HOLDOUT["benchmarks"]}
    return " ".join(f"{benchmark}={path}" for benchmark, path in rows.items() if path)


def probe_holdout_inputs(wildcards):
    """Every benchmark's inputs (rows, task files, punkt_tab root), each key a list."""
    inputs = {}
    for benchmark in HOLDOUT["benchmarks"]:
        for key, value in benchmark_inputs(benchmark).items():
            inputs.setdefault(key, []).extend(value if isinstance(value, list) else [value])
    return inputs


def final_targets():
    figures = ["training_fitness", "training_curves"]
    if any(schedule_tasks(m, "sequential") for m in config["train"]["methods"]):
        figures += ["accuracy_sequential", "kl_sequential"]
    tables = ["accuracy", "update_norms"]
    if single_runs():
        tables.append("single_task")
    if geometry_pairs():
        figures += ["interpolation", "probes"]
        tables.append("norm_ratio")
    if probe_holdout_pairs():
        figures.append("probes_holdout")
    if geometry_runs():
        figures.append("drift")
    if pretraining_runs():
        figures.append("pretraining_loss")
    if geometry_pairs() or geometry_runs():
        tables.append("findings")
    if HOLDOUT:
        tables.append("holdout")
    kl = [f"{R}/eval/kl.csv"] if training_runs() else []
    return (
        kl
        + [f"{R}/figures/{name}.{ext}" for name in figures for ext in ("png", "pdf")]
        + [
            f"{R}/tables/{name}.{ext}"
            for name in tables
            for ext in ("csv", "md", "tex")
            if (name, ext) != ("findings", "tex")
        ]
    )


# --- The other studies: ES with LoRA (blog) and LBES vs ES ------------------------------------------
# Each study's figures and table enter the targets only when the config trains the runs it compares.


def single_methods(task, kinds):
    """Methods of the given kinds (es, lbes, ...) that train `task` alone from the base, in config order."""
    return [m for m in config["train"]["methods"] if method_kind(m) in kinds and task in schedule_tasks(m, "single")]


def single_tasks():
    return list(dict.fromkeys(t for m in config["train"]["methods"] for t in schedule_tasks(m, "single")))


def uses_lora(method, task):
    """Whether the es-kind `method` trains `task` with a LoRA section (its task overrides included)."""
    return bool(method_config(method, task).get("lora"))


def lora_study():
    """{task: es-kind methods training it single} for each single task that one es-kind method trains with
    LoRA and another without (the ES-with-LoRA figures compare all of them there); empty: no figures."""
    study = {}
    for task in single_tasks():
        methods = single_methods(task, {"es"})
        if len({uses_lora(m, task) for m in methods}) == 2:
            study[task] = methods
    return study


def lora_runs():
    return [Run(s, m, "single", 1, t) for s in SEEDS for t, methods in lora_study().items() for m in methods]


def lora_names():
    """METHOD/single/1-TASK of the study runs, the same in every seed (the test-curve job evaluates a seed's)."""
    return [without_seed(run_label(*run)) for run in lora_runs() if run.seed == SEEDS[0]]


def test_curve_cfg():
    """The test-curve stage's slice: the evaluation's batch size and evaluate.test_curve."""
    return js(
        {"generation_batch_size": config["evaluate"]["generation_batch_size"], **config["evaluate"]["test_curve"]}
    )


def lbes_study():
    """{task: es- and lbes-kind methods training it single} for each single task that at least one of each
    kind trains; empty: no accuracy-vs-cost figure and no time-to-accuracy table."""
    study = {}
    for task in single_tasks():
        methods = single_methods(task, {"es", "lbes"})
        if {method_kind(m) for m in methods} == {"es", "lbes"}:
            study[task] = methods
    return study


def lbes_runs():
    return [Run(s, m, "single", 1, t) for s in SEEDS for t, methods in lbes_study().items() for m in methods]


def curve_points():
    """(seed, method, task, k) of every intermediate model on the accuracy-vs-cost curves: each study run
    rebuilt after k of tables.time_to_accuracy.iterations (k below the method's configured iterations),
    through Table 1's replay and evaluation rules (a k listed in both is built once)."""
    points = []
    for run in lbes_runs():
        total = method_config(run.method, run.task).get("iterations")
        points += [
            (run.seed, run.method, run.task, k)
            for k in config["tables"]["time_to_accuracy"]["iterations"]
            if total is None or k < total
        ]
    return points


def study_targets():
    """Figures and tables of the other studies whose runs this config trains."""
    figures, tables = [], []
    if lora_study():
        figures += ["lora_prompt_rewards", "lora_cumulative_reward", "lora_training"]
        tables.append("lora_rewards")
    if lbes_study():
        figures.append("accuracy_vs_cost")
        tables.append("time_to_accuracy")
    return [f"{R}/figures/{name}.{ext}" for name in figures for ext in ("png", "pdf")] + [
        f"{R}/tables/{name}.{ext}" for name in tables for ext in ("csv", "md", "tex")
    ]
