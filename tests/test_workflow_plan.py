"""Dry runs (seconds): evaluation and KL jobs follow the training runs that common.smk enumerates, for any
method and any task lists, without naming a method in the rules; the embedded default plans the holdouts
along directions (Figure 5) exactly when a holdout section exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO
from test_workflow import planned_jobs, snakemake


def test_evaluation_and_kl_jobs_follow_the_training_runs(tmp_path):
    # es trains three tasks in sequence under its own per_method lists, and no single-task run
    extra = tmp_path / "per_method.yaml"
    extra.write_text(yaml.safe_dump({"train": {"methods": ["es"], "sequential": ["chemistry"], "single": [],
                                               "per_method": {"es": {"sequential": ["chemistry", "boolq", "conciseness"],
                                                                     "single": []}}}}))
    proc = snakemake(tmp_path, "-n", "-p", "--forceall", extra=extra)
    jobs = planned_jobs(proc)
    assert jobs["train"] == 3
    assert jobs["evaluate"] == 4  # base + 3 stages
    assert jobs["kl"] == 5  # KL to the base after each stage, to the previous stage after stages 2 and 3
    assert jobs["collect_kl"] == jobs["figure_kl_sequential"] == 1
    text = proc.stdout + proc.stderr
    kl = [line for line in text.splitlines() if re.search(r"esft .*\bkl --base", line)]
    previous = [line for line in kl if "kl_previous.json" in line]
    assert len(kl) == 5 and len(previous) == 2
    for line in previous:
        stage = int(re.search(r"--weights results/small/train/es/sequential/(\d)-", line).group(1))
        assert f"--reference results/small/train/es/sequential/{stage - 1}-" in line
    assert all("--reference" not in line for line in kl if "kl_base.json" in line)
    collect = next(line for line in text.splitlines() if "esft collect-kl" in line)
    # stage 1's previous model is the base: its `previous` row reads the base pair
    assert "es/sequential/1-chemistry:previous=results/small/eval/es/sequential/1-chemistry/kl_base.json" in collect


def _pretraining(tmp_path, fitness):
    return _plan(tmp_path, "pretraining", {"train": {"methods": ["es", "adamw"], "sequential": [], "single": ["conciseness"]},
                                           "es": {"fitness": fitness},
                                           "adamw": {"iterations": 2, "batch_size": 2, "minibatches_of": "es"}})


def _plan(tmp_path, name: str, overlay: dict) -> tuple[dict[str, int], str]:
    extra = tmp_path / f"{name}.yaml"
    extra.write_text(yaml.safe_dump(overlay))
    proc = snakemake(tmp_path, "-n", "-p", "--forceall", extra=extra)
    return planned_jobs(proc), proc.stdout + proc.stderr


STUDY_RULES = {"collect_prompt_rewards", "figure_lora_prompt_rewards", "figure_lora_cumulative_reward",
               "figure_lora_training", "collect_accuracy_curves", "figure_accuracy_vs_cost", "table_time_to_accuracy"}


def test_lora_figures_need_lora_and_full_parameter_es_on_one_single_task(tmp_path):
    """small.yaml trains es (full-parameter) and lbes on different single tasks: neither study appears;
    an es_lora variant on es's single task brings the three ES-with-LoRA figures, and only those."""
    jobs, _ = _plan(tmp_path, "none", {})
    assert not STUDY_RULES & set(jobs)
    lora = {"population": 4, "sigma": 0.05, "alpha": 0.005, "iterations": 2, "lora": {"r": 2, "alpha": 4}}
    overlay = {"train": {"methods": ["es", "grpo", "lbes", "es_lora"]}, "es_lora": lora}
    jobs, text = _plan(tmp_path, "lora", overlay)
    assert {r for r in STUDY_RULES if r in jobs} == {"collect_prompt_rewards", "figure_lora_prompt_rewards",
                                                     "figure_lora_cumulative_reward", "figure_lora_training"}
    collect = next(line for line in text.splitlines() if "esft prompt-rewards" in line)
    labels = re.findall(r"(\S+)=results/small/eval/\S+/completions.jsonl", collect)
    assert labels == ["base", "es/single/1-conciseness", "es_lora/single/1-conciseness"]
    assert "--data conciseness=results/small/data/conciseness " in collect
    # LoRA alone (no full-parameter es-kind run on that task) compares nothing
    alone = {**overlay, "train": {**overlay["train"], "per_method": {"lbes": {"sequential": [], "single": ["boolq"]},
                                                                       "es": {"single": []}}}}
    jobs, _ = _plan(tmp_path, "alone", alone)
    assert not STUDY_RULES & set(jobs)


def test_lbes_vs_es_needs_both_kinds_on_one_single_task_and_replays_listed_iterations(tmp_path):
    """lbes trains es's single task: the accuracy curves rebuild each run after the listed iterations below
    its own length (2 here: 1 kept, 2 and 5 dropped), sharing Table 1's es budget at 1."""
    overlay = {"train": {"per_method": {"lbes": {"sequential": [], "single": ["conciseness"]}}},
               "tables": {"time_to_accuracy": {"iterations": [1, 2, 5]}}}
    jobs, text = _plan(tmp_path, "lbes", overlay)
    assert {r for r in STUDY_RULES if r in jobs} == {"collect_accuracy_curves", "figure_accuracy_vs_cost",
                                                     "table_time_to_accuracy"}
    assert jobs["replay_budget"] == jobs["evaluate_budget"] == 2  # es@1 (also Table 1's) and lbes@1
    collect = next(line for line in text.splitlines() if "esft accuracy-curves" in line)
    points = sorted(re.findall(r"(\S+@\w+)=", collect))
    assert points == ["es/single/1-conciseness@1", "es/single/1-conciseness@final", "lbes/single/1-conciseness@1",
                      "lbes/single/1-conciseness@final"]
    assert "--base-accuracy results/small/eval/base/accuracy.json" in collect


def test_pretraining_loss_figure_needs_es_loglik_and_adamw_on_one_task(tmp_path):
    jobs, text = _pretraining(tmp_path, "loglik")
    assert jobs["train"] == 2 and jobs["figure_pretraining_loss"] == 1
    adamw = next(line for line in text.splitlines() if "train --method adamw" in line)
    assert "--run-id adamw/single/1-conciseness" in adamw and "--dtype float32" in adamw
    figure = next(line for line in text.splitlines() if "esft figure pretraining" in line)
    for method in ("es", "adamw"):
        assert f"{method}/single/1-conciseness=results/small/train/{method}/single/1-conciseness/run.jsonl" in figure
    jobs, _ = _pretraining(tmp_path, "task")  # ES fine-tuning on rewards: no loss to compare
    assert jobs["train"] == 2 and "figure_pretraining_loss" not in jobs


def _default_plan(workdir: Path, *extra: Path) -> subprocess.CompletedProcess:
    """A dry run of the embedded default (config/config.yaml: no --configfile) or of the given configs."""
    configs = ["--configfile", *map(str, extra)] if extra else []
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
                           *configs, "-n", "-p"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc


def test_default_plans_holdouts_along_directions_at_the_last_stage_only(tmp_path):
    """Figure 5 is part of the embedded default: one probe-holdout job on the final sequential pair, with the
    probes' scales and directions and the holdout section's benchmarks, feeding the findings table."""
    proc = _default_plan(tmp_path)
    jobs = planned_jobs(proc)
    assert jobs["geometry_probe_holdout"] == jobs["figure_probes_holdout"] == jobs["table_findings"] == 1
    text = proc.stdout + proc.stderr
    command = next(line for line in text.splitlines() if "esft --threads 1 probe-holdout" in line)
    assert "--pairs sequential/4-boolq=" in command and "sequential/3-" not in command
    assert '--cfg \'{"random_directions": 3, "scales": [0, 1, 2], "seed": 0}\'' in command
    assert "--data mmlu=results/default/holdout/data/mmlu.jsonl ifeval=results/default/holdout/data/ifeval.jsonl" in command
    assert "--nltk-data results/default/holdout/nltk_data" in command
    findings = next(line for line in text.splitlines() if "esft findings" in line)
    assert "--probes-holdout results/default/geometry/probes_holdout.csv" in findings


def test_without_a_holdout_section_no_holdouts_along_directions(tmp_path):
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    del config["holdout"]
    path = tmp_path / "no_holdout.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = _default_plan(tmp_path, path)
    jobs = planned_jobs(proc)
    assert jobs["geometry_probes"] == jobs["table_findings"] == 1
    assert not {"geometry_probe_holdout", "figure_probes_holdout", "holdout"} & set(jobs)
    assert "--probes-holdout" not in next(line for line in (proc.stdout + proc.stderr).splitlines()
                                          if "esft findings" in line)
