"""The real experiments' configs: each validates, plans the jobs it should (dry run), and its offline twin
(config/twins/<name>.yaml layered on it) runs the workflow end to end on CPU."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, run_snakemake
from test_workflow import check_run_files
from esft.config import load_config

SCHEMA = REPO / "config" / "schema.yaml"
REAL = ["paper", "lbes", "es_lora", "ea4llm"]
TRAIN_JOBS = {"paper": 20, "lbes": 4, "es_lora": 2, "ea4llm": 8}
"""paper: ES-100 sequential (4) + ES-300 sequential (4, Figure 1's third line) and single (3) + ES-500 single (1,
Appendix C) + GRPO sequential and single (8)."""


def configs(name: str, twin: bool) -> list[Path]:
    return [REPO / "config" / f"{name}.yaml"] + ([REPO / "config" / "twins" / f"{name}.yaml"] if twin else [])


def snakemake(workdir: Path, files: list[Path], *args: str) -> subprocess.CompletedProcess:
    return run_snakemake(workdir, files, *args, timeout=600)


def test_every_config_has_a_twin():
    real = {p.stem for p in (REPO / "config").glob("*.yaml")} - {"config", "schema"}
    assert real == set(REAL) == {p.stem for p in (REPO / "config" / "twins").glob("*.yaml")}


@pytest.mark.parametrize("twin", [False, True], ids=["real", "twin"])
@pytest.mark.parametrize("name", REAL)
def test_config_validates(name, twin):
    cfg = load_config(configs(name, twin), SCHEMA)
    assert (cfg["model"]["source"] == "tiny") == (twin or name == "ea4llm")
    if twin:
        assert cfg["runtime"]["device"] == "cpu" and cfg["experiment"] == f"{name}_twin"
        assert all(t["source"] != "hf" for t in cfg["tasks"].values()) and not cfg.get("corpus")


def test_paper_settings():
    cfg = load_config(configs("paper", False), SCHEMA)
    assert cfg["train"]["methods"] == ["es", "es_300", "es_500", "grpo"]
    # Figure 6 / Appendix C: the single-task run extended to 500 iterations, fitted per parameter; its states
    # at 100 and 300 fill countdown's ES-100 and ES-300 cells of Table 1
    assert cfg["train"]["per_method"]["es_500"] == {"sequential": [], "single": ["countdown"]}
    assert "countdown" not in cfg["train"]["per_method"]["es_300"]["single"]
    assert cfg["geometry"]["drift"]["methods"] == ["es", "es_500"]
    assert cfg["tables"]["single_task"] == {"budgets": {"es_300": [100], "es_500": [100, 300]},
                                            "columns": {"es_500": "es_300"}}
    # Figures 4 and 5: absolute c on one axis, at least 9 distances, in the real config and its twin
    for twin in (False, True):
        probes = load_config(configs("paper", twin), SCHEMA)["geometry"]["probes"]
        assert probes["axis"] == "absolute" and len(probes["scales"]) >= 9 and 0 in probes["scales"]
    assert cfg["geometry"]["probe_holdout"]["scales"] is None  # Figure 5 on the same scales
    for name, iterations in (("es", 100), ("es_300", 300), ("es_500", 500)):
        es = cfg[name]
        assert (es["population"], es["sigma"], es["alpha"], es["batch_size"], es["iterations"]) == \
            (30, 0.0015, 0.00075, 200, iterations)
    for name in ("es", "es_300"):  # issue 17, defect 4: members sample as the authors' code does
        assert (cfg[name]["temperature"], cfg[name]["top_p"], cfg[name].get("mode", "inplace")) == (1.0, 0.95, "inplace")
    code = load_config(configs("paper", False) + [REPO / "config" / "overlays" / "paper_code_sigma.yaml"], SCHEMA)
    assert all((code[m]["sigma"], code[m]["alpha"]) == (0.001, 0.0005) for m in ("es", "es_300"))
    assert code["experiment"] == "paper_code_sigma" and code["grpo"] == cfg["grpo"]
    grpo = cfg["grpo"]
    assert (grpo["num_train_epochs"], grpo["num_generations"], grpo["max_grad_norm"], grpo["beta"]) == (20, 8, 1.0, 0.0)
    # issue 17, defect 2: the authors' qwen_grpo.json and train/grpo.py (lr, schedule, clip, sampling, seed, one
    # AdamW across tasks) and their 80 steps per task = 20 epochs of 200 prompts × 8 completions
    assert (grpo["learning_rate"], grpo["warmup_ratio"], grpo["epsilon"], grpo["temperature"], grpo["top_p"],
            cfg["seeds"], grpo["carry_optimizer"], grpo["loss_type"]) == (3e-6, 0.0, 0.2, 1.0, 0.95, [42], True, "grpo")
    completions = grpo["per_device_train_batch_size"] * grpo["gradient_accumulation_steps"]
    steps = grpo["num_train_epochs"] * 200 * grpo["num_generations"] // completions
    assert (steps, steps * completions) == (80, 32000) and 200 * grpo["num_generations"] % completions == 0
    # what one 80 GB GPU needs for GRPO on the 4B model (tests/test_memory.py checks the plan)
    assert (grpo["bf16"], grpo["gradient_checkpointing"], grpo["optim"]) == (True, True, "adamw_8bit")
    assert load_config(configs("paper", True), SCHEMA)["grpo"]["optim"] == "adamw_torch"  # the CPU twin
    lbes = load_config(configs("lbes", False), SCHEMA)["lbes"]
    assert (lbes["batch_size"], lbes["population"], lbes["alpha"], lbes["sigma"], lbes["n_samples"],
            lbes["temperature"]) == (64, 32, 5e-7, 1e-3, 8, 0.1)
    lora = load_config(configs("es_lora", False), SCHEMA)
    assert (lora["es"]["sigma"], lora["es"]["alpha"]) == (0.001, 0.0005)
    assert (lora["es_lora"]["sigma"], lora["es_lora"]["alpha"], lora["es_lora"]["lora"]["r"]) == (0.0075, 0.005, 256)
    assert lora["model"]["source"] == "Qwen/Qwen2.5-7B-Instruct"  # the blog's model
    # the blog's test prompts, seed, and model selection: evaluated every 10 iterations, reported at the best
    assert (lora["tasks"]["conciseness"]["prompts"], lora["seeds"], lora["evaluate"]["test_curve"]) == \
        ("blog", [33], {"every": 10})


def test_lbes_and_ea4llm_settings():
    """The settings LBES §4.1 and EA4LLM §4.1 state (docs/fidelity.md lists each with its source)."""
    cfg = load_config(configs("lbes", False), SCHEMA)
    assert cfg["train"]["single"] == ["gsm8k", "countdown_lbes"]
    assert (cfg["tasks"]["gsm8k"]["max_new_tokens"], cfg["tasks"]["countdown_lbes"]["max_new_tokens"]) == (1024, 2048)
    cd = cfg["tasks"]["countdown_lbes"]
    assert (cd["source"], cd["n_train"], cd["n_test"]) == ("synthetic", 8192, 1024)
    assert cfg["tables"]["time_to_accuracy"]["targets"] == {"gsm8k": 0.8, "countdown_lbes": 0.5}
    # one epoch: ⌈rows / B⌉ iterations per task
    assert cfg["es"]["iterations"] == cfg["lbes"]["iterations"] == -(-7473 // 64)
    assert cfg["train"]["overrides"]["countdown_lbes"] == {"es": {"iterations": 128}, "lbes": {"iterations": 128}}
    cfg = load_config(configs("ea4llm", False), SCHEMA)
    es = cfg["es"]
    assert (es["population"], es["sigma"], es["alpha"], es["iterations"], cfg["corpus"]["n_texts"]) == \
        (30, 1e-3, 5e-4, 1000, 5000)
    assert (es["antithetic"], es["step"], es["loglik_average"]) == ("signed", "nes", "sample")  # eqs. 10, 14, 2-3
    # §4.1 "samples of length 256": every ES run and the AdamW baseline score the same 256 tokens per text
    assert {cfg[m]["text_length"] for m in cfg["train"]["methods"]} == {256}
    tiny = cfg["model"]["tiny"]
    attn = tiny["hidden_size"] * tiny["head_dim"] * (2 * tiny["num_attention_heads"] + 2 * tiny["num_key_value_heads"])
    params = tiny["num_hidden_layers"] * (attn + 3 * tiny["hidden_size"] * tiny["intermediate_size"])
    assert 0.9e9 < params < 1.1e9  # a Qwen3 model of about 1B
    off = {"antithetic": "none", "shaping": "zscore", "step": "standard", "group_alpha": {}, "group_sigma": {},
           "alpha_decay": 1.0, "sigma_decay": 1.0}
    assert {k: cfg["es_baseline"][k] for k in off} == off
    for variant, switch in (("es_antithetic", "antithetic"), ("es_rank", "shaping"), ("es_nes", "step")):
        assert [k for k in off if cfg[variant][k] != off[k]] == [switch]
    assert [k for k in off if cfg["es_groups"][k] != off[k]] == ["group_alpha", "group_sigma"]
    assert [k for k in off if cfg["es_decay"][k] != off[k]] == ["alpha_decay", "sigma_decay"]


@pytest.mark.parametrize("name", REAL)
def test_real_config_dry_run(tmp_path, name):
    """The real config plans every job without touching the hub; GPU runs pass their own options."""
    out = snakemake(tmp_path, configs(name, False), "-n", "-p", "--cores", "4").stdout
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:", 1)[1], re.M))
    assert int(jobs["train"]) == TRAIN_JOBS[name] and jobs["base_model"] == "1"
    assert ("prepare_corpus" in jobs) == (name == "ea4llm")
    commands = [line for line in out.splitlines() if " train --method " in line]
    if name == "paper":
        assert sum("--method es " in c and "--run-id es_300/single/" in c for c in commands) == 3
        assert sum("--method es " in c and "--run-id es_300/sequential/" in c for c in commands) == 4
        assert sum("--method es " in c and "--run-id es_500/single/1-countdown" in c for c in commands) == 1
        assert all("--dtype float32" in c for c in commands if "--method grpo" in c)
        assert all("--dtype bfloat16 " in c for c in commands if "--method es " in c)
        assert not any("--save-dtype" in c for c in commands)  # weights.safetensors: fp32, the exact θ
    if name == "ea4llm":
        assert all("--corpus results/ea4llm/data/corpus.jsonl" in c for c in commands)


def test_paper_checkpoints_keep_a_grpo_sized_update(tmp_path):
    """Issue 17, defect 1: a GRPO-sized step (1e-5 per weight on bf16 weights of scale 0.02, whose bf16 step is
    ~1.2e-4) survives the export the paper's train jobs write, the reload by the norm stage (Table 3) within
    1%, and is the exact θ the next sequential stage starts from."""
    import torch

    from esft.geometry.norms import update_norms
    from esft.models import load_weights
    from esft.runs import Drift, write_run

    out = snakemake(tmp_path, configs("paper", False), "-n", "-p", "--cores", "4").stdout
    commands = [line for line in out.splitlines() if " train --method " in line]
    exports = {m.group(1) if (m := re.search(r"--save-dtype (\w+)", c)) else "float32" for c in commands}
    g = torch.Generator().manual_seed(0)
    theta0 = {"lm_head.weight": (0.02 * torch.randn(512, 512, generator=g)).to(torch.bfloat16).float()}  # a bf16 base model
    step = 1e-5 * torch.randn(512, 512, generator=g).sign()
    theta = {"lm_head.weight": theta0["lm_head.weight"] + step}
    for dtype in exports:
        run = tmp_path / dtype
        write_run(run, theta, [], Drift({}).frame(), dtype)
        norm = float(update_norms(theta0, {"grpo": run / "weights.safetensors"})["update_norm"].iloc[0])
        assert norm == pytest.approx(float(step.norm()), rel=0.01), dtype
        following = torch.nn.Module()  # a GRPO stage loads --init into fp32 weights
        following.lm_head = torch.nn.Linear(512, 512, bias=False)
        load_weights(following, run / "weights.safetensors")
        assert torch.equal(following.lm_head.weight.detach(), theta["lm_head.weight"]), dtype


def test_paper_holdout_jobs_read_the_snapshot_of_the_hub_dataset(tmp_path):
    """The paper's MMLU and IFEval rows are snapshotted once per experiment (the local rule holdout_snapshot,
    at the configured revision); every holdout job takes the snapshot as input and reads it with --data."""
    out = snakemake(tmp_path, configs("paper", False), "-n", "-p", "--cores", "4").stdout
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:", 1)[1], re.M))
    # per benchmark: the base, and the 4 stages of es, es_300 and grpo of the one seed in one job
    assert jobs["holdout_snapshot"] == jobs["holdout_base"] == jobs["holdout"] == "2"
    for bench, dataset in (("mmlu", "cais/mmlu"), ("ifeval", "google/IFEval")):
        snapshot = f"results/paper/holdout/data/{bench}"
        command = next(line for line in out.splitlines() if f"holdout-snapshot --benchmark {bench}" in line)
        assert f'"dataset": "{dataset}"' in command and f"--out {snapshot} " in command
        blocks = re.findall(r"^rule holdout(?:_base)?:\n((?:    .*\n)+)Shell command: (.*)", out, re.M)
        mine = [(block, cmd) for block, cmd in blocks if f"--benchmark {bench} " in cmd]
        assert len(mine) == 2
        assert sum(cmd.count("/weights.safetensors") for _, cmd in mine) == 12  # 4 stages of es, es_300, grpo
        for block, cmd in mine:
            assert re.search(rf"^    input: .*\b{snapshot}\b", block, re.M) and f"--data {snapshot} " in cmd
            assert re.search(rf"^    reason: .*Input files updated by another job: .*\b{snapshot}\b", block, re.M)
    data_rules = (REPO / "workflow" / "rules" / "data.smk").read_text(encoding="utf-8")
    assert re.search(r"^localrules:\n(    \w+,\n)*    holdout_snapshot,$", data_rules, re.M)


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL)
def test_twin_runs_end_to_end(tmp_path, name, request):
    """The twin runs every stage (the paper twin's run is the session's shared one, which test_workflow.py
    checks in depth); the es_lora twin trains full-parameter ES under torchrun with 2 gloo ranks, the ea4llm
    twin scores a local corpus prepared by prepare_corpus with ES and AdamW, on the same minibatches, and
    draws their loss curves; every method writes the same run files."""
    if name == "paper":
        tmp_path = request.getfixturevalue("paper_twin")
    else:
        files = configs(name, True)
        if name in ("es_lora", "ea4llm"):
            extra = tmp_path / "extra.yaml"
            if name == "es_lora":
                extra.write_text("train: {processes: {es: 2}}\n")
            else:
                corpus = tmp_path / "texts.jsonl"
                corpus.write_text("".join(json.dumps({"text": f"text {i}: the quick brown fox."}) + "\n"
                                          for i in range(8)))
                extra.write_text(json.dumps({"corpus": {"dataset": "json", "data_files": str(corpus), "split": "train",
                                                        "n_texts": 6}}))
            files.append(extra)
        start = time.perf_counter()
        snakemake(tmp_path, files, "--cores", "2")
        print(f"{name} twin: {time.perf_counter() - start:.0f} s")
    out = tmp_path / "results" / f"{name}_twin"
    assert (out / "tables" / "accuracy.md").exists() and (out / "figures" / "training_fitness.png").exists()
    run_dirs = sorted(p.parent for p in (out / "train").glob("*/*/*/*/run.jsonl"))
    runs = [r.relative_to(out / "train").as_posix() for r in run_dirs]
    assert len(runs) == {"paper": 9, "lbes": 4, "es_lora": 2, "ea4llm": 3}[name]
    if name == "lbes":
        check_run_files(out, run_dirs)
        for run in (r for r in run_dirs if "/lbes/" in r.as_posix()):  # batch_size prompts × n_samples each
            assert all(json.loads(line)["rollouts"] == 4 * 4 for line in (run / "run.jsonl").read_text().splitlines())
    if name == "es_lora":
        assert runs == ["seed-33/es/single/1-conciseness", "seed-33/es_lora/single/1-conciseness"]
        logs = tmp_path / "logs/es_lora_twin/train/seed-33"
        # each process logs its memory plan: two for the torchrun job, one for the other
        assert (logs / "es/single/1-conciseness.log").read_text().count("memory plan: on device") == 2
        assert (logs / "es_lora/single/1-conciseness.log").read_text().count("memory plan: on device") == 1
    # each study's own figures and table appear exactly in its twin
    lora = ["figures/lora_prompt_rewards.png", "figures/lora_cumulative_reward.pdf", "figures/lora_training.png",
            "tables/lora_rewards.md"]
    lbes = ["figures/accuracy_vs_cost.png", "figures/accuracy_vs_cost.pdf", "tables/time_to_accuracy.tex"]
    for path in lora + lbes:
        assert (out / path).exists() == (path in {"es_lora": lora, "lbes": lbes}.get(name, [])), path
    if name == "paper":  # Figure 1 draws ES-100, ES-300 and GRPO after each sequential stage
        acc = pd.read_csv(out / "eval/accuracy.csv")
        assert set(acc.loc[acc["schedule"] == "sequential", "method"]) == {"es", "es_300", "grpo"}
        assert (out / "figures" / "accuracy_sequential.png").exists()
    if name == "es_lora":
        from esft.tasks.conciseness import embedded_rows

        assert [json.loads(line) for line in (out / "data/conciseness/test.jsonl").read_text().splitlines()] == \
            embedded_rows("blog")["test"]  # the blog's 8 test prompts
        curves = pd.read_csv(out / "eval/lora_test_curves.csv")
        assert curves.groupby("method")["iteration"].apply(list).to_dict() == {"base": [0], "es": [1, 2],
                                                                               "es_lora": [1, 2]}
        best = curves[curves["best"]].set_index("method")["iteration"]
        assert sorted(best.index) == ["es", "es_lora"]
        rewards = pd.read_csv(out / "eval/lora_prompt_rewards.csv")
        assert rewards.groupby("method").size().to_dict() == {"base": 8, "es": 8, "es_lora": 8}
        assert rewards.groupby("method")["iteration"].first().to_dict() == {"base": 0, **best.to_dict()}
        # the reward recomputed from each completion (−gap) matches the evaluate stage's score 1/(1 + gap)
        assert rewards["score"].tolist() == pytest.approx((1 / (1 - rewards["reward"])).tolist())
        for run in runs:  # the curve's last point is the run's own checkpoint, evaluated alike
            final = [r["completion"] for r in map(json.loads, (out / "eval" / run / "completions.jsonl").open())]
            curve = [r["completion"] for r in map(json.loads, (out / "eval" / run / "test_curve.jsonl").open())]
            assert curve[8:] == final
    if name == "lbes":
        curves = pd.read_csv(out / "eval/accuracy_curves.csv")
        # the base and the final checkpoint (iteration 2) of each method and task, at growing cost
        assert curves.groupby(["task", "method"])["iteration"].apply(list).map(tuple).unique().tolist() == [(0, 2)]
        assert (curves.groupby(["task", "method"])["tokens"].diff().dropna() > 0).all()
        table = pd.read_csv(out / "tables/time_to_accuracy.csv")
        assert len(table) == 4 and set(table["status"]) <= {"reached", "not reached", "best is 0"}
        assert (table.loc[table["task"] == "gsm8k", "target"] == 0.8).all()
    if name == "ea4llm":
        es, adamw = ([json.loads(line) for line in (out / f"train/seed-0/{m}/single/1-conciseness/run.jsonl").read_text()
                      .splitlines()] for m in ("es", "adamw"))
        assert es[0]["config"]["fitness"] == "loglik" and len(es[0]["prompts"]) == 2
        assert [r["prompts"] for r in es] == [r["prompts"] for r in adamw]
        assert es[0]["loss"] == pytest.approx(adamw[0]["loss"], rel=1e-6)  # both start from the base model
        assert adamw[-1]["loss"] < adamw[0]["loss"]
        assert json.loads((out / "data" / "corpus.manifest.json").read_text())["texts"] == 6
        assert (out / "figures" / "pretraining_loss.png").exists() and (out / "figures" / "pretraining_loss.pdf").exists()
