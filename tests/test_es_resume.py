"""Reliability: a run killed with SIGKILL resumes to bitwise-identical weights, and `esft replay`
rebuilds θ_T from θ_0 and run.jsonl bit for bit (full-parameter and LoRA runs)."""

from __future__ import annotations

import json
import logging
import signal

import pytest
from safetensors.torch import load_file

from esft.cli import main
from esft.io import read_jsonl, write_jsonl

from conftest import sigkill_once_saved

TASK_CFG = {"max_new_tokens": 8}


def _train_args(base, cfg, out, state=None, extra=(), log_level="WARNING"):
    args = ["--threads", "1", "--log-level", log_level, "train", "--task", "conciseness", "--base", str(base / "base"),
            "--data", str(base / "data"), "--task-cfg", json.dumps(TASK_CFG), "--cfg", json.dumps(cfg),
            "--out", str(out), *extra]
    return args + (["--state-dir", str(state)] if state else [])


def _assert_same_weights(a, b):
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert wa[name].dtype == wb[name].dtype and wa[name].equal(wb[name]), name


def _moved(weights, base):
    from esft.models import load_model

    model, _ = load_model(base / "base")
    w = load_file(str(weights))
    return sum(int((w[n] != p.detach()).sum()) for n, p in model.named_parameters())


def test_sigkill_then_restart_equals_an_uninterrupted_run(base, tmp_path, caplog):
    cfg = {"population": 6, "sigma": 0.1, "alpha": 0.05, "iterations": 10, "checkpoint_every": 2, "seed": 3}
    main(_train_args(base, cfg, tmp_path / "full"))
    assert _moved(tmp_path / "full" / "weights.safetensors", base) > 0

    state, out = tmp_path / "state", tmp_path / "killed"
    returncode = sigkill_once_saved(_train_args(base, cfg, out, state), state / "state.safetensors")
    assert returncode == -signal.SIGKILL and not (out / "weights.safetensors").exists()

    with caplog.at_level(logging.INFO, logger="esft.methods.es.trainer"):
        main(_train_args(base, cfg, out, state, log_level="INFO"))
    assert any("resumed from" in r.getMessage() for r in caplog.records)
    _assert_same_weights(out / "weights.safetensors", tmp_path / "full" / "weights.safetensors")
    assert read_jsonl(out / "run.jsonl")[-1]["fitness"] == read_jsonl(tmp_path / "full" / "run.jsonl")[-1]["fitness"]
    assert not (state / "state.safetensors").exists()


@pytest.mark.parametrize("cfg, extra", [
    ({"population": 6, "sigma": 0.1, "alpha": 0.5, "iterations": 4, "shaping": "rank", "step": "nes",
      "antithetic": "signed", "group_alpha": {"mlp": 2.0, "emb": 0.5}, "group_sigma": {"attn": 1.5},
      "alpha_decay": 0.5, "alpha_decay_every": 2, "sigma_decay": 0.8, "sigma_decay_every": 3, "seed": 2}, False),
    ({"population": 4, "sigma": 0.05, "alpha": 0.02, "iterations": 3, "antithetic": "paired", "shaping": "raw",
      "fitness": "loglik", "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "up_proj"], "normalize": True},
      "seed": 1}, True),
    ({"population": 5, "sigma": 0.1, "alpha": 0.5, "iterations": 3, "mode": "lowrank", "rank": 2, "step": "nes",
      "group_sigma": {"mlp": 2.0}, "seed": 3}, False),
], ids=["full-parameter", "lora", "lowrank"])
def test_replay_rebuilds_the_trained_weights_bitwise(base, tmp_path, cfg, extra):
    args = []
    if extra:  # a corpus file for the log-likelihood fitness
        write_jsonl(tmp_path / "corpus.jsonl", [{"text": "abc abc abc"}, {"text": "hello world"}])
        args = ["--corpus", str(tmp_path / "corpus.jsonl")]
    main(_train_args(base, cfg, tmp_path / "run", extra=args))
    trained = tmp_path / "run" / "weights.safetensors"
    assert _moved(trained, base) > 0
    records = read_jsonl(tmp_path / "run" / "run.jsonl")
    assert [r["alpha"] for r in records] == [cfg["alpha"] * cfg.get("alpha_decay", 1) ** (t // cfg.get("alpha_decay_every", 1))
                                             for t in range(cfg["iterations"])]
    main(["replay", "--base", str(base / "base"), "--run", str(tmp_path / "run" / "run.jsonl"),
          "--out", str(tmp_path / "replayed.safetensors")])
    _assert_same_weights(tmp_path / "replayed.safetensors", trained)


def test_test_curve_evaluates_the_replayed_weights_and_ends_on_the_checkpoint(base, tmp_path):
    """`esft test-curve` rebuilds θ_k in one pass and evaluates it: at k = 2 as evaluating `esft replay
    --iterations 2`'s weights, at k = T = 3 as the run's own checkpoint (full-parameter and LoRA runs)."""
    from esft.methods.es.trainer import replayed
    from esft.models import load_model
    from esft.tasks.conciseness import embedded_rows

    data = tmp_path / "data"
    write_jsonl(data / "test.jsonl", embedded_rows("blog")["test"][:4])
    runs = {"full": {"population": 4, "sigma": 0.2, "alpha": 0.5, "iterations": 3, "seed": 1},
            "lora": {"population": 4, "sigma": 0.2, "alpha": 0.5, "iterations": 3, "seed": 1,
                     "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "up_proj"]}}}
    common = ["--base", str(base / "base"), "--data", f"conciseness={data}",
              "--tasks-cfg", json.dumps({"conciseness": TASK_CFG})]
    for name, cfg in runs.items():
        main(_train_args(base, cfg, tmp_path / name))
    main(["test-curve", *common, "--runs", *(str(tmp_path / n / "run.jsonl") for n in runs),
          "--cfg", json.dumps({"generation_batch_size": 4, "every": 2}),
          "--out", *(str(tmp_path / n / "curve.jsonl") for n in runs)])
    for name in runs:
        main(["replay", "--base", str(base / "base"), "--run", str(tmp_path / name / "run.jsonl"), "--iterations", "2",
              "--out", str(tmp_path / name / "k2.safetensors")])
        main(["evaluate", *common, "--weights", str(tmp_path / name / "k2.safetensors"),
              str(tmp_path / name / "weights.safetensors"), "--cfg", '{"generation_batch_size": 4}',
              "--out", *(str(tmp_path / name / k / "accuracy.json") for k in ("2", "3"))])
        curve = read_jsonl(tmp_path / name / "curve.jsonl")
        assert [r["iteration"] for r in curve] == [2] * 4 + [3] * 4
        # the one-pass replay's θ_2 and θ_3: the weights `esft replay` rebuilds, and the run's checkpoint
        model, _ = load_model(base / "base")
        for (k, weights), saved in zip(replayed(model, read_jsonl(tmp_path / name / "run.jsonl"), [3, 2]),
                                       ("k2.safetensors", "weights.safetensors")):
            expected = load_file(str(tmp_path / name / saved))
            assert weights.keys() == expected.keys() and all(weights[n].equal(expected[n]) for n in expected), (name, k)
        for k in (2, 3):
            evaluated = [(r["index"], r["completion"], r["score"]) for r in read_jsonl(tmp_path / name / str(k) /
                                                                                          "completions.jsonl")]
            assert [(r["index"], r["completion"], r["score"]) for r in curve if r["iteration"] == k] == evaluated


def test_replay_uses_the_runs_recorded_dtype(base, tmp_path):
    """A bfloat16 run records its dtype; replay without --dtype rebuilds it bitwise, float32 would not."""
    cfg = {"population": 4, "sigma": 0.1, "alpha": 0.05, "iterations": 3, "seed": 4}
    main(_train_args(base, cfg, tmp_path / "run", extra=["--dtype", "bfloat16"]))
    records = read_jsonl(tmp_path / "run" / "run.jsonl")
    assert {(r["dtype"], r["device"]) for r in records} == {("bfloat16", "cpu")}
    trained = tmp_path / "run" / "weights.safetensors"
    replay_args = ["replay", "--base", str(base / "base"), "--run", str(tmp_path / "run" / "run.jsonl")]
    main([*replay_args, "--out", str(tmp_path / "replayed.safetensors")])
    _assert_same_weights(tmp_path / "replayed.safetensors", trained)
    main([*replay_args, "--dtype", "float32", "--out", str(tmp_path / "fp32.safetensors")])
    with pytest.raises(AssertionError):
        _assert_same_weights(tmp_path / "fp32.safetensors", trained)


def test_sequential_stages_draw_independent_noise(base, tmp_path):
    """Noise is keyed on the run's identity: two stages with one es.seed take different steps, the same
    stage twice the same step (byte-identical checkpoints), and replay follows the recorded run id."""
    cfg = {"population": 4, "sigma": 0.1, "alpha": 0.05, "iterations": 1, "seed": 0}
    for name, run_id in (("a", "es/sequential/1-x"), ("b", "es/sequential/2-y"), ("c", "es/sequential/1-x")):
        main(_train_args(base, cfg, tmp_path / name, extra=["--run-id", run_id]))
    assert read_jsonl(tmp_path / "a" / "run.jsonl")[0]["run_id"] == "es/sequential/1-x"
    a, b = (load_file(str(tmp_path / n / "weights.safetensors")) for n in "ab")
    assert all(not a[n].equal(b[n]) for n in a)
    assert (tmp_path / "a" / "weights.safetensors").read_bytes() == (tmp_path / "c" / "weights.safetensors").read_bytes()
    main(["replay", "--base", str(base / "base"), "--run", str(tmp_path / "b" / "run.jsonl"),
          "--out", str(tmp_path / "replayed.safetensors")])
    _assert_same_weights(tmp_path / "replayed.safetensors", tmp_path / "b" / "weights.safetensors")


@pytest.mark.parametrize("budget, expected", [({"max_rollouts": 20}, 3), ({"max_tokens": 1}, 1),
                                              ({"max_prompt_tokens": 1}, 1)])
def test_budget_stops_at_the_same_iteration_every_time(base, tmp_path, budget, expected):
    """2 train rows × 4 members = 8 rollouts per iteration: 20 rollouts end the run after the third."""
    cfg = {"population": 4, "sigma": 0.1, "alpha": 0.05, "iterations": 10, "seed": 5, **budget}
    runs = []
    for name in ("first", "second"):
        main(_train_args(base, cfg, tmp_path / name))
        runs.append(read_jsonl(tmp_path / name / "run.jsonl"))
    assert len(runs[0]) == len(runs[1]) == expected
    assert [r["rollouts"] for r in runs[0]] == [8] * expected
    assert [r["tokens"] for r in runs[0]] == [r["tokens"] for r in runs[1]]
    assert all(r["prompt_tokens"] > 0 and r["reward_mean"] == r["fitness_mean"] for r in runs[0])
    _assert_same_weights(tmp_path / "first" / "weights.safetensors", tmp_path / "second" / "weights.safetensors")
