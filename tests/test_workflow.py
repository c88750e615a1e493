"""End to end: the workflow's run of the paper twin (shared with test_real_configs.py), its caching, its
report and its config errors; the recovery after a crash and the dry runs use the small embedded config."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import PAPER_TWIN, REPO, run_snakemake

SMALL = REPO / "tests" / "data" / "small.yaml"
pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, extra: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run Snakemake on the small config (plus an `extra` config file layered on top) in `workdir`."""
    return run_snakemake(workdir, [SMALL] + ([extra] if extra else []), *args, check=check)


def twin(workdir: Path, *args: str, extra: Path | None = None) -> subprocess.CompletedProcess:
    """Run Snakemake on the paper twin (plus an `extra` config file layered on top) in `workdir`."""
    return run_snakemake(workdir, PAPER_TWIN + ([extra] if extra else []), *args)


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Rule -> job count from a dry run's job-stats table (empty when there is nothing to do)."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m.group(1) != "total"}


def read_run(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_run_files(out: Path, runs: list[Path]) -> None:
    """Each run holds weights loadable by plain transformers into the base model (fp32, every tensor but the
    tied head), run.jsonl with the common fields and consecutive iterations, and drift.parquet."""
    import pandas as pd
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from esft.runs import COMMON_FIELDS

    model = AutoModelForCausalLM.from_pretrained(out / "model" / "base")
    for run in runs:
        records = read_run(run / "run.jsonl")
        assert records and all(set(COMMON_FIELDS) <= set(r) for r in records), run
        assert [r["iteration"] for r in records] == list(range(len(records)))
        drift = pd.read_parquet(run / "drift.parquet")
        assert list(drift.columns) == ["iteration", "parameter", "drift_sq"] and len(drift) > 0
        state = load_file(str(run / "weights.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, run  # tied to the embedding
        assert all(t.dtype == torch.float32 for t in state.values())


OUT = Path("results") / "paper_twin"
SEED = "seed-42"
STAGES = [("base", "-", "0"), ("es", "sequential", "1"), ("es", "sequential", "2"), ("es_300", "sequential", "1"),
          ("es_300", "sequential", "2"), ("es_300", "single", "1"), ("es_500", "single", "1"),
          ("grpo", "sequential", "1"), ("grpo", "sequential", "2"), ("grpo", "single", "1")]
"""Table rows of the twin: ES-100, ES-300 and GRPO in sequence (chemistry, boolq), ES-300 and GRPO on boolq
alone, and ES-500 on chemistry alone."""


@pytest.fixture(scope="module")
def workdir(paper_twin) -> Path:
    return paper_twin


def _label(row: dict) -> str:
    return "base" if row["method"] == "base" else f"{SEED}/{row['method']}/{row['schedule']}/{row['stage']}-{row['trained_task']}"


def test_run_produces_figures_tables_and_logs(workdir):
    out = workdir / OUT
    for fig in ("accuracy_sequential.png", "training_fitness.png"):
        assert (out / "figures" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "tables" / "accuracy.csv") as fh:
        rows = list(csv.DictReader(fh))
    stages = [(r["method"], r["schedule"], r["stage"]) for r in rows]
    assert stages == STAGES
    tasks = ("countdown", "math", "chemistry", "boolq")
    assert set(tasks) <= set(rows[0])
    for row in rows:  # each cell is the fraction of its checkpoint's graded completions, recounted here
        completions = [json.loads(line) for line in (out / "eval" / _label(row) / "completions.jsonl").read_text().splitlines()]
        for task in tasks:
            scores = [c["score"] for c in completions if c["task"] == task]
            assert len(scores) == 8 and float(row[task]) == pytest.approx(sum(scores) / 8), (row, task)
    assert max(float(row[task]) for row in rows for task in tasks) > 0  # the warm-started base answers some
    assert "| method" in (out / "tables" / "accuracy.md").read_text()
    with open(out / "geometry" / "update_norms.csv") as fh:
        norms = {r["checkpoint"].removeprefix(f"{SEED}/"): float(r["update_norm"]) for r in csv.DictReader(fh)}
    # an ES checkpoint moved exactly when some iteration of its chain had a non-zero update weight
    chains = {"es/sequential/1-chemistry": ["es/sequential/1-chemistry"],
              "es/sequential/2-boolq": ["es/sequential/1-chemistry", "es/sequential/2-boolq"],
              "es_300/single/1-boolq": ["es_300/single/1-boolq"], "es_500/single/1-chemistry": ["es_500/single/1-chemistry"]}
    for label, runs in chains.items():
        moved = any(any(r["shaped"]) for run in runs for r in read_run(out / "train" / SEED / run / "run.jsonl"))
        assert (norms[label] > 0) == moved, label
    assert norms["es/sequential/1-chemistry"] > 0 and norms["es_500/single/1-chemistry"] > 0  # rewards differ
    # KL to the base is zero exactly where the weights did not move; stage 1's previous model is the base
    with open(out / "eval" / "kl.csv") as fh:
        kl = list(csv.DictReader(fh))
    assert list(kl[0]) == ["seed", "method", "schedule", "stage", "trained_task", "eval_task", "reference", "kl",
                           "n_prompts", "n_tokens", "direction", "estimator"]
    assert {(r["direction"], r["estimator"]) for r in kl} == {("forward", "exact")}  # Figure 2's KL
    assert {r["seed"] for r in kl} == {"42"}
    assert len(kl) == 9 * 2 * 4  # checkpoints × references × evaluated tasks
    for row in kl:
        label = f"{row['method']}/{row['schedule']}/{row['stage']}-{row['trained_task']}"
        reference, task = row["reference"], row["eval_task"]
        # the per-token KL is the mean of the completions' summed KL over their tokens, recounted here
        if reference == "base" or row["stage"] == "2":
            records = [c for c in map(json.loads, (out / "eval" / SEED / label / f"kl_{reference}_completions.jsonl")
                                      .read_text().splitlines()) if c["task"] == task]
            assert int(row["n_tokens"]) == sum(c["n_tokens"] for c in records) > 0
            assert float(row["kl"]) == pytest.approx(sum(c["kl_sum"] for c in records) / int(row["n_tokens"]))
        assert int(row["n_prompts"]) == 8  # every test prompt (fewer than prompts_per_task)
        if reference == "base":
            assert (float(row["kl"]) > 0) == (norms[label] > 0), (label, task)
    for ext in ("png", "pdf"):
        assert (out / "figures" / f"kl_sequential.{ext}").stat().st_size > 1000
    completion = json.loads((out / "eval/base/completions.jsonl").read_text().splitlines()[0])
    assert completion["prompt_ids"] and completion["completion_ids"]
    run = read_run(out / "train" / SEED / "es/sequential/1-chemistry/run.jsonl")
    assert [r["iteration"] for r in run] == [0, 1]
    assert len(run[0]["fitness"]) == 4 and run[0]["tokens"] > 0
    log = (workdir / "logs/paper_twin/train" / SEED / "es/sequential/1-chemistry.log").read_text()
    assert "iter 2/2" in log and "tok/s" in log
    # holdouts (Table 2) of the base and every sequential stage, through lm-eval
    with open(out / "tables" / "holdout.csv") as fh:
        holdout = list(csv.DictReader(fh))
    assert [(r["method"], r["schedule"], r["stage"]) for r in holdout] == [s for s in stages if s[1] != "single"]
    for row in holdout:  # Table 2 holds each checkpoint's lm-eval record
        for benchmark, metric in (("mmlu", "acc"), ("ifeval", "prompt_level_strict_acc")):
            record = json.loads((out / "holdout" / _label(row) / f"{benchmark}.json").read_text())
            assert float(row[f"{benchmark} {metric}"]) == pytest.approx(record["metrics"][metric]), (row, benchmark)
    assert "ifeval inst_level_loose_acc" in holdout[0]
    for label in ("base", f"{SEED}/es/sequential/2-boolq"):
        record = json.loads((out / "holdout" / label / "ifeval.json").read_text())
        assert record["n"] == 8 and record["task_versions"] == {"ifeval": 4.0} and record["lm_eval_version"]
    with open(out / "eval" / "holdout.csv") as fh:
        assert {(r["benchmark"], r["metric"]) for r in csv.DictReader(fh)} >= {("mmlu", "acc"), ("ifeval", "prompt_level_strict_acc")}
    assert not (out / "holdout" / SEED / "es_300" / "single").exists()
    # resume state is cleaned up once the outputs exist
    assert not list((out / "state").rglob("state.safetensors"))


def test_every_method_writes_the_same_run_files(workdir):
    """es, es_300, es_500 and grpo runs all write the same run files (lbes: the lbes twin's test)."""
    out = workdir / OUT
    runs = sorted(p.parent for p in (out / "train").glob(f"{SEED}/*/*/*/run.jsonl"))
    assert {r.relative_to(out / "train").parts[1] for r in runs} == {"es", "es_300", "es_500", "grpo"} and len(runs) == 9
    check_run_files(out, runs)
    grpo = read_run(out / "train" / SEED / "grpo/sequential/1-chemistry/run.jsonl")
    # 8 completions per optimizer step: 4 per prompt, 4 per device batch, 2 accumulation steps
    assert all(r["rollouts"] == 8 and "loss" in r for r in grpo)


def test_second_dry_run_has_nothing_to_do(workdir):
    assert planned_jobs(twin(workdir, "-n")) == {}


def _override(workdir: Path, name: str, data: dict) -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_es_change_reruns_only_training_and_dependents(workdir):
    extra = _override(workdir, "sigma.yaml", {"es": {"sigma": 0.02}})
    jobs = planned_jobs(twin(workdir, "-n", extra=extra))
    # es's 2 sequential stages (es_300 and es_500 have their own sections); the seed's checkpoints are
    # evaluated together: one evaluation, KL and holdout (per benchmark) job
    assert jobs["train"] == 2 and jobs["evaluate"] == 1 and jobs["kl"] == 1
    assert jobs["holdout"] == 2 and "evaluate_base" not in jobs and "holdout_base" not in jobs
    assert "prepare_task" not in jobs and "base_model" not in jobs and "holdout_data" not in jobs


def test_grpo_change_reruns_only_grpo_training_and_dependents(workdir):
    extra = _override(workdir, "lr.yaml", {"grpo": {"learning_rate": 0.002}})
    jobs = planned_jobs(twin(workdir, "-n", extra=extra))
    assert jobs["train"] == 3 and jobs["evaluate"] == 1  # 2 sequential stages and boolq alone


def test_figure_change_reruns_only_figures(workdir):
    extra = _override(workdir, "dpi.yaml", {"figures": {"dpi": 80}})
    jobs = planned_jobs(twin(workdir, "-n", extra=extra))
    assert set(jobs) == {"figure_accuracy_sequential", "figure_kl_sequential", "figure_training_fitness",
                         "figure_training_curves", "figure_drift", "figure_interpolation", "figure_probes",
                         "figure_probes_holdout", "all"}


def test_kl_change_reruns_only_kl(workdir):
    extra = _override(workdir, "kl.yaml", {"evaluate": {"kl": {"temperature": 0.7}}})
    jobs = planned_jobs(twin(workdir, "-n", extra=extra))
    assert jobs == {"kl": 1, "collect_kl": 1, "figure_kl_sequential": 1, "table_findings": 1, "all": 1}


def test_geometry_and_table1_outputs(workdir):
    """es and grpo both trained: the pair stages are measured; Table 1 holds the replayed ES budget beside
    every method's final single-task checkpoint."""
    out = workdir / OUT
    for fig in ("drift", "training_curves", "interpolation", "probes", "probes_holdout"):
        assert (out / "figures" / f"{fig}.pdf").read_bytes()[:5] == b"%PDF-"
    with open(out / "tables" / "single_task.csv") as fh:
        rows = {r["task"]: r for r in csv.DictReader(fh)}
    # ES-300 on boolq replayed after 1 of its 3 iterations; ES-500 on chemistry after 1 and 3 of its 5, in
    # ES-300's columns (tables.single_task.columns); GRPO trains boolq alone
    assert list(rows) == ["boolq", "chemistry"]
    assert list(rows["boolq"]) == ["task", "seed", "base", "es_300 (1 steps)", "es_300 (3 steps)", "es_300 (5 steps)",
                                   "grpo (2 steps)"]
    assert {r["seed"] for r in rows.values()} == {"42"}
    assert rows["boolq"]["es_300 (5 steps)"] == "" and rows["chemistry"]["grpo (2 steps)"] == ""
    assert all(rows[t][c] != "" for t, c in [("boolq", "es_300 (1 steps)"), ("boolq", "es_300 (3 steps)"),
                                              ("chemistry", "es_300 (1 steps)"), ("chemistry", "es_300 (5 steps)")])
    with open(out / "tables" / "findings.csv") as fh:
        verdicts = {r["finding"]: r["verdict"] for r in csv.DictReader(fh)}
    assert verdicts["es update norm >> grpo norm (Table 3)"] != "not measured"
    assert verdicts["es drift linear in steps, slope ~ a^2 D/N (Figure 6)"] != "not measured"
    assert verdicts["es direction ~ random on holdouts (Figure 5)"] != "not measured"
    # holdouts along directions at the last sequential pair only: 2 methods × 4 directions (its own, 3 random) ×
    # 4 points (the twin's 3 absolute distances c, and the checkpoint's own) × 6 metrics (MMLU 2, IFEval 4)
    with open(out / "geometry" / "probes_holdout.csv") as fh:
        along = list(csv.DictReader(fh))
    assert {(r["schedule"], r["stage"], r["trained_task"]) for r in along} == {("sequential", "2", "boolq")}
    assert {r["benchmark"] for r in along} == {"mmlu", "ifeval"} and len(along) == 2 * 4 * 4 * (2 + 4)
    for table in ("single_task", "holdout", "norm_ratio"):
        assert "\\toprule" in (out / "tables" / f"{table}.tex").read_text()


def test_holdout_change_reruns_only_that_benchmark_and_the_holdouts_along_directions(workdir):
    extra = _override(workdir, "ifeval.yaml", {"holdout": {"benchmarks": {"ifeval": {"n": 6}}}})
    jobs = planned_jobs(twin(workdir, "-n", extra=extra))
    assert set(jobs) == {"holdout_data", "holdout_base", "holdout", "collect_holdout", "table_holdout",
                         "geometry_probe_holdout", "figure_probes_holdout", "table_findings", "all"}
    # the base, and the 2 sequential stages of es and grpo in the seed's one job
    assert jobs["holdout_base"] == jobs["holdout"] == jobs["holdout_data"] == 1


REPORT_CATEGORIES = {
    "Accuracy": {"accuracy_sequential.png"},
    "Forgetting": {"kl_sequential.png"},
    "Geometry": {"interpolation.png", "probes.png", "probes_holdout.png"},
    "Drift": {"drift.png"},
    "Training": {"training_fitness.png", "training_curves.png"},
    "Tables": {"accuracy.md", "update_norms.md", "single_task.md", "norm_ratio.md", "holdout.md"},
    "Findings": {"findings.md"},
}


def report_json(html: str, name: str):
    """A JSON object the Snakemake report embeds as `<script id="name"> var name = {...};`."""
    start = re.search(rf'<script id="{name}">\s*var {name} = ', html).end()
    return json.JSONDecoder().raw_decode(html, start)[0]


def test_report_lists_every_figure_and_table_with_rendered_captions(workdir):
    """The report holds each figure and table the run produced, in its category, each with a caption whose
    config values were filled in."""
    twin(workdir, "--report", str(workdir / "report.html"))
    html = (workdir / "report.html").read_text()
    results, categories = report_json(html, "results"), report_json(html, "categories")
    listed = {c: {Path(p).name for sub in subs.values() for p in sub} for c, subs in categories.items()}
    assert listed == REPORT_CATEGORIES
    out = workdir / OUT
    produced = {p.name for p in (out / "figures").glob("*.png")} | {p.name for p in (out / "tables").glob("*.md")}
    assert {Path(p).name for p in results} == produced
    for path, result in results.items():
        caption = result["caption"]
        assert len(caption) > 100 and "{{" not in caption and "{%" not in caption, path
    captions = {Path(p).name: " ".join(r["caption"].split()) for p, r in results.items()}
    assert "countdown 8, math 8, chemistry 8, boolq 8" in captions["accuracy.md"]
    assert "32 prompts per generation batch" in captions["accuracy.md"]
    assert "This run: 200 prompts per task, 2 samples per prompt" in captions["kl_sequential.png"]


def test_bad_config_key_stops_with_one_line(tmp_path):
    extra = _override(tmp_path, "bad.yaml", {"es": {"sigmaa": 0.02}})
    proc = snakemake(tmp_path, "-n", extra=extra, check=False)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "config error" in line]
    assert len(lines) == 1
    assert lines[0].startswith("config error: es: unknown key(s) 'sigmaa'; allowed: alpha, ")
    assert ", sigma" in lines[0]


@pytest.mark.parametrize("profile", ["slurm", "local"])
def test_shipped_profiles_plan_the_workflow(tmp_path, profile):
    """The cluster and local profiles load and plan every job (a dry run submits nothing)."""
    jobs = planned_jobs(snakemake(tmp_path, "-n", "--profile", str(REPO / "profiles" / profile)))
    assert jobs["train"] == 7 and jobs["base_model"] == 1


def test_recovery_after_a_crash_resumes_the_killed_training_job(tmp_path):
    """The README's recovery: Snakemake and its training job SIGKILLed after the job's first saved state,
    then `snakemake --unlock` and the same command; the job resumes from its state and ends with the
    weights an uninterrupted run writes."""
    overlay = {"model": {"tiny": {"warmstart_steps": 0}},
               "train": {"methods": ["es"], "sequential": [], "single": ["chemistry"],
                         "per_method": {"lbes": {"sequential": [], "single": []}}},
               "es": {"iterations": 12, "checkpoint_every": 3}}
    target = "results/small/train/seed-0/es/single/1-chemistry/weights.safetensors"
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    for wd in (crashed, clean):
        wd.mkdir()
        _override(wd, "one_run.yaml", overlay)

    def command(wd: Path) -> list[str]:
        return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(wd), "--configfile",
                str(SMALL), str(wd / "one_run.yaml"), "--cores", "1", target]

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # the uninterrupted run, on the other core meanwhile
    uninterrupted = subprocess.Popen(command(clean), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
    state = crashed / "results/small/state/train/seed-0/es/single/1-chemistry/state.safetensors"
    proc = subprocess.Popen(command(crashed), env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the workflow ended before the training job saved its state"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    subprocess.run(["pkill", "-KILL", "-f", str(crashed)], check=False)  # a job outside snakemake's group
    assert not (crashed / target).exists()

    assert snakemake(crashed, "--cores", "1", target, extra=crashed / "one_run.yaml", check=False).returncode != 0
    snakemake(crashed, "--unlock", target, extra=crashed / "one_run.yaml")
    snakemake(crashed, "--cores", "1", target, extra=crashed / "one_run.yaml")
    log = (crashed / "logs/small/train/seed-0/es/single/1-chemistry.log").read_text()
    assert "resumed from" in log
    output = uninterrupted.communicate(timeout=600)[0]
    assert uninterrupted.returncode == 0, output[-3000:]
    assert (crashed / target).read_bytes() == (clean / target).read_bytes()
