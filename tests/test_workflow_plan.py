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
