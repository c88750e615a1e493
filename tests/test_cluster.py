"""The slurm profile's sbatch lines, checked against fake sbatch/sacct/squeue/scancel on PATH.

The fakes record their arguments and answer as SLURM does for snakemake-executor-plugin-slurm 2.x:
`sbatch --parsable` prints the job id, `sacct -X --parsable2 --format=JobIdRaw,State` prints
`<id>|<state>` lines. Every job is reported FAILED, so Snakemake resubmits it (one retry here) and the
second attempt's sbatch line shows the attempt-dependent runtime; then the run stops.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

FAKES = {
    "sbatch": """#!/bin/sh
cat > /dev/null
echo "$*" >> "$FAKE_SLURM/sbatch.log"
n=$(wc -l < "$FAKE_SLURM/sbatch.log")
echo $((1000 + n))
""",
    # status queries list every submitted job as FAILED; account guesses (sacct -nu ...) get nothing
    "sacct": """#!/bin/sh
echo "$*" >> "$FAKE_SLURM/sacct.log"
case "$*" in *JobIdRaw,State*)
  n=$(wc -l < "$FAKE_SLURM/sbatch.log"); i=1
  while [ $i -le $n ]; do echo "$((1000 + i))|FAILED"; i=$((i + 1)); done;;
esac
""",
    "squeue": "#!/bin/sh\necho \"$*\" >> \"$FAKE_SLURM/squeue.log\"\n",
    "scancel": "#!/bin/sh\necho \"$*\" >> \"$FAKE_SLURM/scancel.log\"\n",
    "sinfo": "#!/bin/sh\nexit 0\n",
    "scontrol": "#!/bin/sh\nexit 1\n",
}


def launch_fake_slurm(tmp_path: Path, targets: list[str], files: dict[str, str],
                      configs: list[str]) -> subprocess.Popen:
    """Start the workflow under profiles/slurm with fake SLURM commands for `targets` (their inputs faked as
    `files`), every target to the end (`--keep-going`). The plugin's status checks mostly sleep, so
    several such runs overlap."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, text in FAKES.items():
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    (tmp_path / "sbatch.log").touch()
    work = tmp_path / "work"
    for rel, text in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    env = {**os.environ, "FAKE_SLURM": str(tmp_path),
           "PATH": os.pathsep.join([str(fake), str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(work),
           "--profile", str(REPO / "profiles" / "slurm"), "--configfile", *[str(REPO / c) for c in configs],
           "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
           "--latency-wait", "1", "--retries", "1", "--keep-going", *targets]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=work)


def sbatch_calls(tmp_path: Path, proc: subprocess.Popen) -> dict[str, list[dict[str, str]]]:
    """The parsed options of every sbatch call of a finished fake-SLURM run, by job (its --comment)."""
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode != 0, "every fake job fails, so the run must fail"
    lines = (tmp_path / "sbatch.log").read_text().splitlines()
    assert lines, f"nothing was submitted:\n{stdout[-3000:]}\n{stderr[-3000:]}"
    by_job: dict[str, list[dict[str, str]]] = {}
    for call in map(parse, lines):
        by_job.setdefault(call["--comment"], []).append(call)
    return by_job


def parse(line: str) -> dict[str, str]:
    """sbatch options as {option: value}; flags map to ''."""
    words = shlex.split(line.split(" --wrap=", 1)[0])
    out, i = {}, 0
    while i < len(words):
        word = words[i]
        if word.startswith("--") and "=" in word:
            key, value = word.split("=", 1)
            out[key] = value
        elif word.startswith("-") and i + 1 < len(words) and not words[i + 1].startswith("-"):
            out[word] = words[i + 1]
            i += 1
        else:
            out[word] = ""
        i += 1
    return out


TRAIN_RUN = "results/paper/train/seed-42/es/sequential/1-countdown"


@pytest.fixture(scope="module")
def submitted(tmp_path_factory) -> dict[str, list[dict[str, str]]]:
    """Three fake-SLURM runs at once, one job each: a GPU training job; a CPU table job; and a holdout job whose
    hub snapshot (a local rule) stands in for cais/mmlu from a local folder (hub offline). The sbatch calls of
    each job, and the snapshot's manifest."""
    from datasets import Dataset

    from esft.evaluate.holdout_data import mmlu_rows

    train, table, holdout = (tmp_path_factory.mktemp(name) for name in ("slurm-train", "slurm-table", "slurm-holdout"))
    hub = holdout / "hub-mmlu"
    hub.mkdir()
    Dataset.from_list(mmlu_rows(3, seed=0)).to_parquet(str(hub / "test.parquet"))
    extra = holdout / "hub.yaml"
    extra.write_text(f"holdout: {{benchmarks: {{mmlu: {{dataset: '{hub}', config_name: null, revision: null}}}}}}\n")
    base = {"results/paper/model/base/model.json": '{"source": "Qwen/Qwen3-4B-Instruct-2507", "path": "hf"}'}
    runs = {
        train: launch_fake_slurm(train, [f"{TRAIN_RUN}/weights.safetensors"],
                                 {**base, "results/paper/data/countdown/train.jsonl": "{}\n"}, ["config/paper.yaml"]),
        table: launch_fake_slurm(table, ["results/paper/tables/accuracy.csv"],
                                 {"results/paper/eval/accuracy.csv": "checkpoint,task,accuracy\n"}, ["config/paper.yaml"]),
        holdout: launch_fake_slurm(holdout, ["results/paper/holdout/base/mmlu.json"], base,
                                   ["config/paper.yaml", str(extra)]),
    }
    calls = {job: c for path, proc in runs.items() for job, c in sbatch_calls(path, proc).items()}
    manifest = json.loads((holdout / "work/results/paper/holdout/data/mmlu/manifest.json").read_text())
    return {**calls, "snapshot": [{**manifest, "hub": str(hub)}]}


@pytest.mark.slow
def test_train_asks_for_a_gpu_partition_runtime_memory_and_grows_its_runtime(submitted):
    calls = submitted["rule_train_wildcards_42_es_sequential_1_countdown"]
    assert len(calls) == 2  # the first attempt and one retry
    for attempt, call in enumerate(calls, 1):
        assert call["--gpus"] == "1" and call["-p"] == "gpu" and call["--cpus-per-gpu"] == "8"
        assert call["-t"] == str(1440 * attempt) and call["--mem"] == "128000" and call["--nodes"] == "1"
        assert "--gres" not in call and "--cpus-per-task" not in call and "--requeue" in call


@pytest.mark.slow
def test_cpu_rule_runs_on_the_cpu_partition_without_gpus(submitted):
    calls = submitted["rule_table_accuracy"]
    assert len(calls) == 2
    for attempt, call in enumerate(calls, 1):
        assert call["-p"] == "cpu" and call["-t"] == str(60 * attempt) and call["--mem"] == "16000"
        assert call["--cpus-per-task"] == "1" and call["--ntasks"] == "1"
        assert not any(key in call for key in ("--gpus", "--gres", "--cpus-per-gpu"))


@pytest.mark.slow
def test_holdout_snapshot_runs_where_snakemake_runs_and_the_gpu_job_reads_it(submitted):
    """The hub snapshot is a local rule: it runs in the Snakemake process, never through sbatch; only the
    holdout job is submitted."""
    assert set(submitted) == {"rule_train_wildcards_42_es_sequential_1_countdown", "rule_table_accuracy",
                              "rule_holdout_base_wildcards_mmlu", "snapshot"}
    assert len(submitted["rule_holdout_base_wildcards_mmlu"]) == 2
    manifest = submitted["snapshot"][0]
    assert (manifest["dataset"], manifest["split"], manifest["rows"]) == (manifest["hub"], "test", 3)


def test_train_rule_launches_torchrun_per_method_processes(tmp_path):
    """train.processes gives a method K processes under torchrun (and K GPUs on CUDA runs); others keep esft."""
    extra = tmp_path / "processes.yaml"
    extra.write_text("train: {processes: {lbes: 2}}\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "-n", "-p", "--cores", "8",
         "--configfile", str(REPO / "config/lbes.yaml"), str(extra)], capture_output=True, text=True, env=env,
        timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    commands = [line.removeprefix("Shell command: ") for line in proc.stdout.splitlines() if " train --method " in line]
    assert len(commands) == 4
    for command in commands:
        if "--run-id lbes/" in command:
            assert command.startswith("torchrun --standalone --nproc-per-node 2 -m esft.cli --threads 4 train ")
        else:
            assert command.startswith("esft --threads 4 train --method es ")
    jobs = re.findall(r"rule train:\n(?:    .*\n)*?    resources: (.*)", proc.stdout)
    assert sorted(re.search(r"gpu=(\d+)", r).group(1) for r in jobs) == ["1", "1", "2", "2"]
    assert all(re.search(r"\bnodes=1\b", r) for r in jobs)  # torchrun --standalone sees one node's GPUs


def test_every_retry_runtime_stays_under_its_cap():
    """A runtime of `1440 * attempt` with 2 retries asked for 72 h on the third attempt, past GPU partitions'
    limits (and a job that asks for more than its partition allows never starts): each rule's runtime grows
    with the attempt up to a cap, 48 h at most, and every attempt the profile's retries allow stays under it."""
    import yaml

    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text(encoding="utf-8"))
    rules = {"default": profile["default-resources"], **profile["set-resources"]}
    attempts = range(1, profile["retries"] + 2)
    for rule, resources in rules.items():
        minutes = [eval(resources["runtime"], {"attempt": a}) for a in attempts]  # as Snakemake evaluates it
        assert minutes[0] < minutes[1] <= minutes[-1] <= 48 * 60, (rule, minutes)
    train = [eval(rules["train"]["runtime"], {"attempt": a}) for a in attempts]
    assert train == [1440, 2880, 2880]
