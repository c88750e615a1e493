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
    extra.write_text(yaml.safe_dump({"seeds": [0, 5], "train": {"methods": ["es"], "sequential": ["chemistry"], "single": [],
                                               "per_method": {"es": {"sequential": ["chemistry", "boolq", "conciseness"],
                                                                     "single": []}}}}))
    proc = snakemake(tmp_path, "-n", "-p", "--forceall", extra=extra)
    jobs = planned_jobs(proc)
    assert jobs["train"] == 6  # 3 stages in each of 2 seeds
    assert jobs["evaluate_base"] == 1 and jobs["evaluate"] == 2  # every stage of a seed in one job
    assert jobs["kl"] == 2 and jobs["collect_kl"] == jobs["figure_kl_sequential"] == 1
    text = proc.stdout + proc.stderr
    kl = [line for line in text.splitlines() if re.search(r"esft .*\bkl --base", line)]
    assert len(kl) == 2
    for seed, line in zip((0, 5), sorted(kl)):
        run = f"results/small/train/seed-{seed}/es/sequential"
        # KL to the base after each stage, to the previous stage after stages 2 and 3, pair by pair
        references = re.search(r"--reference (.*?) --weights", line).group(1).split()
        weights = re.search(r"--weights (.*?) --device", line).group(1).split()
        outs = re.search(r"--out (.*?) >", line).group(1).split()
        assert references == ["base", "base", f"{run}/1-chemistry/weights.safetensors", "base",
                              f"{run}/2-boolq/weights.safetensors"]
        assert weights == [f"{run}/{k}/weights.safetensors" for k in ("1-chemistry", "2-boolq", "2-boolq",
                                                                        "3-conciseness", "3-conciseness")]
        assert [Path(o).name for o in outs] == ["kl_base.json", "kl_base.json", "kl_previous.json", "kl_base.json",
                                                "kl_previous.json"]
        assert all(f"results/small/eval/seed-{seed}/es/sequential/" in o for o in outs)
    collect = next(line for line in text.splitlines() if "esft collect-kl" in line)
    # stage 1's previous model is the base: its `previous` row reads the base pair
    assert ("seed-5/es/sequential/1-chemistry:previous=results/small/eval/seed-5/es/sequential/1-chemistry/kl_base.json"
            in collect)


def _pretraining(tmp_path, fitness):
    return _plan(tmp_path, "pretraining", {"train": {"methods": ["es", "adamw"], "sequential": [], "single": ["conciseness"]},
                                           "es": {"fitness": fitness},
                                           "adamw": {"iterations": 2, "batch_size": 2, "minibatches_of": "es"}})


def _plan(tmp_path, name: str, overlay: dict) -> tuple[dict[str, int], str]:
    extra = tmp_path / f"{name}.yaml"
    extra.write_text(yaml.safe_dump(overlay))
    proc = snakemake(tmp_path, "-n", "-p", "--forceall", extra=extra)
    return planned_jobs(proc), proc.stdout + proc.stderr


LORA_RULES = {"test_curve", "collect_prompt_rewards", "figure_lora_prompt_rewards", "figure_lora_cumulative_reward",
              "figure_lora_training", "table_lora_rewards"}
STUDY_RULES = LORA_RULES | {"collect_accuracy_curves", "figure_accuracy_vs_cost", "table_time_to_accuracy"}


def test_lora_figures_need_lora_and_full_parameter_es_on_one_single_task(tmp_path):
    """small.yaml trains es (full-parameter) and lbes on different single tasks: neither study appears;
    an es_lora variant on es's single task brings the ES-with-LoRA test curves, figures and table, and only
    those: one test-curve job per seed, evaluating both runs every evaluate.test_curve.every iterations."""
    jobs, _ = _plan(tmp_path, "none", {})
    assert not STUDY_RULES & set(jobs)
    lora = {"population": 4, "sigma": 0.05, "alpha": 0.005, "iterations": 2, "lora": {"r": 2, "alpha": 4}}
    overlay = {"train": {"methods": ["es", "grpo", "lbes", "es_lora"]}, "es_lora": lora}
    jobs, text = _plan(tmp_path, "lora", overlay)
    assert {r for r in STUDY_RULES if r in jobs} == LORA_RULES and jobs["test_curve"] == 1
    curve = next(line for line in text.splitlines() if " test-curve --base " in line)
    assert re.findall(r"--runs (\S+) (\S+) ", curve) == [("results/small/train/seed-0/es/single/1-conciseness/run.jsonl",
                                                          "results/small/train/seed-0/es_lora/single/1-conciseness/run.jsonl")]
    assert '"every": 10' in curve and "--data conciseness=results/small/data/conciseness " in curve
    collect = next(line for line in text.splitlines() if "esft prompt-rewards" in line)
    labels = re.findall(r"(\S+)=results/small/eval/\S+/test_curve.jsonl", collect)
    assert labels == ["seed-0/es/single/1-conciseness", "seed-0/es_lora/single/1-conciseness"]
    assert "--base results/small/eval/base/completions.jsonl " in collect
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
    assert points == ["seed-0/es/single/1-conciseness@1", "seed-0/es/single/1-conciseness@final",
                      "seed-0/lbes/single/1-conciseness@1", "seed-0/lbes/single/1-conciseness@final"]
    assert "--base-accuracy results/small/eval/base/accuracy.json" in collect


def test_pretraining_loss_figure_needs_es_loglik_and_adamw_on_one_task(tmp_path):
    jobs, text = _pretraining(tmp_path, "loglik")
    assert jobs["train"] == 2 and jobs["figure_pretraining_loss"] == 1
    adamw = next(line for line in text.splitlines() if "train --method adamw" in line)
    assert "--run-id adamw/single/1-conciseness" in adamw and "--dtype float32" in adamw
    figure = next(line for line in text.splitlines() if "esft figure pretraining" in line)
    for method in ("es", "adamw"):
        assert (f"seed-0/{method}/single/1-conciseness=results/small/train/seed-0/{method}/single/1-conciseness/"
                "run.jsonl") in figure
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
    pairs = re.findall(r"(seed-\d+/sequential/\d-\w+)=", command)
    assert pairs == [f"seed-{s}/sequential/4-boolq" for s in (0, 1, 2)]  # the last stage of every seed
    assert '--cfg \'{"axis": "relative", "random_directions": 6, "scales": [0, 1, 2], "seed": 0}\'' in command
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
