"""The AdamW pretraining baseline (esft.methods.adamw): its objective is ES's loglik, it learns, it is a function of
its seed, resumes bitwise after SIGKILL, stops at a token budget, follows ES's minibatches and stays a peer."""

from __future__ import annotations

import json
import signal
from dataclasses import fields

import pytest
import yaml
from safetensors.torch import load_file

from esft.cli import main
from esft.errors import EsftError
from esft.io import read_jsonl, write_jsonl
from esft.methods.adamw import AdamWRun, AdamWSettings
from esft.methods.es.fitness import CorpusFitness
from esft.rollout.scoring import encode_texts
from esft.runs import COMMON_FIELDS, minibatch

from conftest import REPO, sigkill_once_saved

TEXTS = [f"the cat sat on mat {i}. the dog ran." for i in range(8)]
FAST = {"lr": 0.01, "iterations": 6, "batch_size": 3, "seed": 2}


def _corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    write_jsonl(path, [{"text": t} for t in TEXTS])
    return path


def _train_args(base, method, cfg, out, corpus, state=None, run_id=None):
    args = ["--threads", "1", "--log-level", "WARNING", "train", "--method", method, "--task", "conciseness",
            "--base", str(base / "base"), "--data", str(base / "data"), "--task-cfg", '{"max_new_tokens": 8}',
            "--cfg", json.dumps(cfg), "--corpus", str(corpus), "--out", str(out),
            "--run-id", run_id or f"{method}/single/1-conciseness"]
    return args + (["--state-dir", str(state)] if state else [])


def test_settings_validate_and_schedule_the_learning_rate():
    s = AdamWSettings(lr=1.0, warmup=2, schedule="cosine", min_lr_ratio=0.1, iterations=12)
    assert [s.lr_at(t) for t in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert s.lr_at(11) == pytest.approx(0.1) and 0.1 < s.lr_at(6) < 1.0
    assert AdamWSettings(lr=1.0, schedule="linear", iterations=5).lr_at(4) == 0.0
    assert AdamWSettings.from_dict({"betas": [0.9, 0.95]}).to_dict()["betas"] == [0.9, 0.95]
    with pytest.raises(EsftError, match="unknown adamw option"):
        AdamWSettings.from_dict({"learning_rate": 1e-3})
    with pytest.raises(EsftError, match="betas"):
        AdamWSettings(betas=(0.9, 1.0))


def test_schema_mirrors_the_settings():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text(encoding="utf-8"))["$defs"]["adamw"]
    assert set(schema["properties"]) == {f.name for f in fields(AdamWSettings)}
    assert all(p.get("description") for p in schema["properties"].values())


def test_loss_is_es_loglik_and_decreases(tiny_model, tokenizer):
    """Step 0 logs −(ES's loglik fitness) of the initial weights on its minibatch, and the tiny corpus is
    learnt: the loss falls by more than a nat per token, micro-batched gradients and all."""
    fitness = CorpusFitness(TEXTS, tokenizer, batch_size=8)
    first = minibatch(1, 0, len(TEXTS), 4)
    loglik0, tokens0 = fitness(tiny_model, first, member=0)
    whole0 = fitness(tiny_model, range(len(TEXTS)), member=0)[0]
    settings = AdamWSettings(lr=0.01, iterations=60, batch_size=4, micro_batch_size=3, seed=1)
    records = AdamWRun(tiny_model, encode_texts(TEXTS, tokenizer), tokenizer.pad_token_id, settings).train()
    assert all(f in r for r in records for f in COMMON_FIELDS)
    assert records[0]["prompts"] == first and records[0]["prompt_tokens"] == tokens0
    assert records[0]["loss"] == pytest.approx(-loglik0, rel=1e-5) == -records[0]["reward_mean"]
    assert {(r["rollouts"], r["tokens"]) for r in records} == {(0, 0)}  # nothing is generated
    losses = [r["loss"] for r in records]
    assert losses[-1] < losses[0] - 1.0, losses
    assert fitness(tiny_model, range(len(TEXTS)), member=0)[0] > whole0 + 1.0


def _same_weights(a, b):
    wa, wb = load_file(str(a)), load_file(str(b))
    return wa.keys() == wb.keys() and all(wa[n].dtype == wb[n].dtype and wa[n].equal(wb[n]) for n in wa)


def test_two_runs_give_byte_identical_weights_and_another_seed_does_not(base, tmp_path):
    corpus = _corpus(tmp_path)
    for name, seed in (("a", 2), ("b", 2), ("c", 3)):
        main(_train_args(base, "adamw", {**FAST, "seed": seed}, tmp_path / name, corpus))
    weights = {n: (tmp_path / n / "weights.safetensors").read_bytes() for n in "abc"}
    assert weights["a"] == weights["b"] != weights["c"]
    runs = {n: read_jsonl(tmp_path / n / "run.jsonl") for n in "ac"}
    assert [r["loss"] for r in runs["a"]] == [r["loss"] for r in read_jsonl(tmp_path / "b" / "run.jsonl")]
    assert [r["prompts"] for r in runs["a"]] != [r["prompts"] for r in runs["c"]]
    assert {(r["method"], r["dtype"], r["device"]) for r in runs["a"]} == {("adamw", "float32", "cpu")}


def test_sigkill_then_restart_equals_an_uninterrupted_run(base, tmp_path):
    corpus = _corpus(tmp_path)
    cfg = {**FAST, "iterations": 200, "checkpoint_every": 2, "warmup": 3, "schedule": "cosine",
           "max_grad_norm": 1.0, "weight_decay": 0.1}
    main(_train_args(base, "adamw", cfg, tmp_path / "full", corpus))
    state, out = tmp_path / "state", tmp_path / "killed"
    returncode = sigkill_once_saved(_train_args(base, "adamw", cfg, out, corpus, state), state / "state.safetensors")
    assert returncode == -signal.SIGKILL and not (out / "weights.safetensors").exists()
    main(_train_args(base, "adamw", cfg, out, corpus, state))
    assert _same_weights(out / "weights.safetensors", tmp_path / "full" / "weights.safetensors")
    full, resumed = read_jsonl(tmp_path / "full" / "run.jsonl"), read_jsonl(out / "run.jsonl")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full] and len(full) == 200
    assert not (state / "state.safetensors").exists()


def test_budget_stops_at_the_same_step_every_time(base, tmp_path):
    corpus = _corpus(tmp_path)
    runs = []
    for name in ("first", "second"):
        main(_train_args(base, "adamw", {**FAST, "iterations": 50, "max_prompt_tokens": 200}, tmp_path / name, corpus))
        runs.append(read_jsonl(tmp_path / name / "run.jsonl"))
    scored = [r["prompt_tokens"] for r in runs[0]]
    assert runs[0] == [{**r, "seconds": a["seconds"]} for r, a in zip(runs[1], runs[0])]
    assert sum(scored[:-1]) < 200 <= sum(scored) and len(scored) < 50
    assert _same_weights(tmp_path / "first" / "weights.safetensors", tmp_path / "second" / "weights.safetensors")


def test_follows_the_es_runs_minibatches_and_starts_at_its_loss(base, tmp_path):
    """With minibatches_of: es, AdamW scores the texts ES's run of the same stage scores at every iteration;
    at iteration 0 both hold the base weights, so ES's centre loss equals AdamW's first loss. ES counts the
    centre's scoring in prompt_tokens: N + 1 scorings of the minibatch."""
    corpus = _corpus(tmp_path)
    es = {"population": 4, "sigma": 0.05, "alpha": 0.02, "iterations": 4, "batch_size": 3, "fitness": "loglik",
          "antithetic": "signed", "seed": 7}
    main(_train_args(base, "es", es, tmp_path / "es", corpus))
    adamw = {**FAST, "iterations": 4, "seed": 7}
    main(_train_args(base, "adamw", {**adamw, "minibatches_of": "es"}, tmp_path / "adamw", corpus))
    main(_train_args(base, "adamw", adamw, tmp_path / "own", corpus))
    es_run, adamw_run = read_jsonl(tmp_path / "es" / "run.jsonl"), read_jsonl(tmp_path / "adamw" / "run.jsonl")
    assert [r["prompts"] for r in es_run] == [r["prompts"] for r in adamw_run]
    assert [r["prompts"] for r in read_jsonl(tmp_path / "own" / "run.jsonl")] != [r["prompts"] for r in es_run]
    assert es_run[0]["loss"] == pytest.approx(adamw_run[0]["loss"], rel=1e-6)
    assert all(e["prompt_tokens"] == (es["population"] + 1) * a["prompt_tokens"] for e, a in zip(es_run, adamw_run))
    assert all(e["loss"] > 0 and e["loss"] != -e["fitness_mean"] for e in es_run)


def test_text_length_truncates_what_es_and_adamw_score(base, tmp_path):
    """EA4LLM §4.1 scores texts of 256 tokens: with text_length 9 each (34-character) text keeps 8 characters
    and eos, so 8 tokens are scored per text, by ES's fitness and AdamW's loss alike."""
    corpus = _corpus(tmp_path)
    es = {"population": 2, "sigma": 0.05, "alpha": 0.02, "iterations": 1, "batch_size": 3, "fitness": "loglik",
          "text_length": 9}
    main(_train_args(base, "es", es, tmp_path / "es", corpus))
    main(_train_args(base, "adamw", {**FAST, "iterations": 1, "text_length": 9, "minibatches_of": "es", "seed": 0},
                     tmp_path / "adamw", corpus))
    main(_train_args(base, "adamw", {**FAST, "iterations": 1, "minibatches_of": "es", "seed": 0},
                     tmp_path / "whole", corpus))
    es_run, adamw_run, whole = (read_jsonl(tmp_path / name / "run.jsonl") for name in ("es", "adamw", "whole"))
    assert adamw_run[0]["prompt_tokens"] == 3 * 8 and es_run[0]["prompt_tokens"] == 3 * 3 * 8  # N + 1 scorings
    assert es_run[0]["loss"] == pytest.approx(adamw_run[0]["loss"], rel=1e-6)
    assert whole[0]["prompt_tokens"] == 3 * len(TEXTS[0])  # default 512: every character and eos


def test_refuses_low_precision_weights(base, tmp_path):
    with pytest.raises(SystemExit):
        main([*_train_args(base, "adamw", FAST, tmp_path / "out", _corpus(tmp_path)), "--dtype", "bfloat16"])


def test_accumulated_micro_batches_give_the_full_batch_gradient_and_step(tiny_model, tokenizer):
    """Texts of different lengths in micro-batches of 1, 2 and 3: the loss, each gradient and the AdamW step
    (clipped, decayed) equal the whole batch's. Weighting each part by its own tokens or mean, dropping a
    part, or padding scored as text would fail; so would a gradient off by a constant factor, which Adam's
    first step alone would hide (a large eps keeps the step sensitive to the gradient's scale too)."""
    import copy

    import torch

    texts = ["a", "the cat", "the cat sat on the mat", "a dog ran far away.", "mat"]
    ids = encode_texts(texts, tokenizer)
    assert len({len(r) for r in ids}) == len(texts)
    results = {}
    for micro in (None, 1, 2, 3):
        model = copy.deepcopy(tiny_model)
        run = AdamWRun(model, ids, tokenizer.pad_token_id,
                       AdamWSettings(lr=0.01, eps=1e-3, weight_decay=0.1, max_grad_norm=0.5,
                                     micro_batch_size=micro))
        loss, tokens = run.loss_and_grad(ids)
        grads = {n: p.grad.clone() for n, p in run.params.items()}
        run.optimizer.zero_grad(set_to_none=True)
        record = run.step(0)
        results[micro] = loss, tokens, grads, record, {n: p.detach().clone() for n, p in run.params.items()}
    loss, tokens, grads, record, after = results[None]
    assert tokens == sum(len(r) - 1 for r in ids) and record["grad_norm"] > 0.5  # the clip binds
    for micro in (1, 2, 3):
        m_loss, m_tokens, m_grads, m_record, m_after = results[micro]
        assert (m_loss, m_tokens) == (pytest.approx(loss, rel=1e-6), tokens)
        assert m_record["grad_norm"] == pytest.approx(record["grad_norm"], rel=1e-5)
        for n in grads:
            torch.testing.assert_close(m_grads[n], grads[n], rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(m_after[n], after[n], rtol=1e-4, atol=1e-6)
