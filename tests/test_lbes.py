"""LBES: correlation fitness, the variance/top-bottom filter, the NES update from keyed noise, run logs,
replay, resume after SIGKILL, budgets and config errors."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from dataclasses import fields

import jsonschema
import pytest
import torch
import yaml

from esft.cli import main
from esft.errors import EsftError
from esft.io import read_jsonl
from esft.methods.es.lbes import CorrelationFitness, LBESConfig, LBESTrainer, pearson, select
from esft.noise import tensor_noise
from esft.runs import COMMON_FIELDS, run_seed
from esft.tasks.conciseness import Conciseness, embedded_rows

from conftest import REPO, sigkill_once_saved
from test_es_resume import _assert_same_weights, _moved, _train_args

LBES = {"population": 4, "sigma": 0.1, "alpha": 0.05, "iterations": 6, "batch_size": None, "n_samples": 6,
        "temperature": 1.0, "k_var": 2, "k": 2, "seed": 1, "checkpoint_every": 2}


class Digits(Conciseness):
    """A reward that varies a lot between sampled completions of an untrained model."""

    def reward(self, completion, row):
        return float(sum(map(ord, completion)) % 5)


class Flat(Conciseness):
    def reward(self, completion, row):
        return 1.0


def _trainer(model, tokenizer, task, run_id="lbes/single/1-conciseness", **overrides):
    cfg = LBESConfig.from_dict({**LBES, **overrides})
    return LBESTrainer(model, tokenizer, task, embedded_rows()["train"], cfg, max_new_tokens=8, run_id=run_id)


# --- fitness ------------------------------------------------------------------------------------
def test_fitness_is_the_pooled_pearson_correlation():
    """Per-member log-likelihoods chosen by hand (the 'model' is the member's list of log-likelihoods)."""
    fit = CorrelationFitness(pad_id=0, batch_size=4)
    fit.keep([[1, 2, 3], [1, 4], [1, 5, 6, 7], [1, 8]], [1, 1, 2, 1], [1.0, 0.0, 0.0, 0.0])
    fit.loglik = lambda model: model
    members = [[-1.0, -2.0, -3.0, -2.0], [-2.0, -1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0],
               [-5.0, -3.0, -1.0, -3.0]]
    values = [fit(m, [0], i) for i, m in enumerate(members)]
    # x = (1,0,0,0): x − x̄ = (.75,−.25,−.25,−.25), Σ = .75; member 0: y − ȳ = (1,0,−1,0), Σ = 2, Σxy = 1
    assert values[0][0] == pytest.approx(1 / math.sqrt(1.5), rel=1e-12)
    assert values[1][0] == pytest.approx(-1.0, rel=1e-12)
    assert math.isnan(values[2][0])  # constant log-likelihoods: undefined
    assert values[3][0] == pytest.approx(-1 / math.sqrt(1.5), rel=1e-12)
    assert {tokens for _, tokens in values} == {3 + 2 + 4 + 2}  # every prefilled token
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0) and pearson([1], [1]) is None


def test_fitness_scores_the_kept_completions_only(tiny_model, tokenizer):
    """The member's log-likelihoods are the mean over completion tokens, prompt masked."""
    from esft.rollout import score_sequences

    seqs, starts = [[5, 6, 7, 8, 9], [5, 6, 10], [11, 12, 13, 14]], [3, 2, 1]
    fit = CorrelationFitness(tokenizer.pad_token_id, batch_size=2)
    fit.keep(seqs, starts, [2.0, 0.0, 1.0])
    expected = [s / n for s, n in score_sequences(tiny_model, seqs, starts, tokenizer.pad_token_id, 3)]
    assert fit.loglik(tiny_model) == pytest.approx(expected, rel=1e-6)
    value, tokens = fit(tiny_model, [0], 0)
    assert value == pytest.approx(pearson([2.0, 0.0, 1.0], expected), rel=1e-6) and tokens == 12



def test_member_scores_do_not_depend_on_generation_batch_size(tiny_model, tokenizer):
    """Kept completions prefilled 1, 3 or all at a time, each batch padded to its own longest row: the same
    log-likelihoods and fitness up to float rounding (attention over a wider padded batch may round the
    last bit differently), and the same prefilled tokens."""
    seqs = [[5, 6, 7, 8, 9], [5, 6, 10], [11, 12, 13, 14], [15, 16], [5, 17, 18, 19, 20, 21, 22], [23, 24, 25]]
    starts, rewards = [3, 2, 1, 1, 4, 2], [2.0, 0.0, 1.0, 3.0, 0.5, 1.5]
    scores = []
    for batch_size in (1, 3, len(seqs)):
        fit = CorrelationFitness(tokenizer.pad_token_id, batch_size)
        fit.keep(seqs, starts, rewards)
        scores.append((fit.loglik(tiny_model), *fit(tiny_model, [0], 0)))
    for loglik, value, tokens in scores[1:]:
        assert loglik == pytest.approx(scores[0][0], rel=1e-6, abs=0)
        assert value == pytest.approx(scores[0][1], rel=1e-4) and tokens == scores[0][2] == 24


# --- filter -------------------------------------------------------------------------------------
def test_filter_keeps_highest_variance_prompts_and_their_top_and_bottom_k():
    rewards = [
        dict(enumerate([1.0, 1.0, 1.0, 1.0])),  # no variance: never kept
        dict(enumerate([0.0, 1.0, 0.0, 1.0])),  # variance .25
        dict(enumerate([0.0, 0.5, 0.5, 0.5])),  # variance .1875
        dict(enumerate([1.0, 0.0, 1.0, 0.0])),  # variance .25, tie with prompt 1: lower position first
        {0: 3.0, 2: 0.0},                       # variance 2.25, only 2 scorable samples: enough for k=1 only
    ]
    # ranked by reward, ties to the lower sample index: prompt 1 is 1, 3, 0, 2 and prompt 3 is 0, 2, 1, 3
    assert select(rewards, k_var=1, k=1) == [(4, 0), (4, 2)]
    assert select(rewards, k_var=2, k=1) == [(1, 1), (1, 2), (4, 0), (4, 2)]
    assert select(rewards, k_var=3, k=1) == [(1, 1), (1, 2), (3, 0), (3, 3), (4, 0), (4, 2)]
    assert select(rewards, k_var=9, k=2) == [(p, j) for p in (1, 2, 3) for j in range(4)]
    # five samples ranked 1, 2, 3, 4, 0: top-2 are 1 and 2, bottom-2 are 4 and 0
    assert select([dict(enumerate([0.0, 0.5, 0.5, 0.5, 0.5]))], 1, 2) == [(0, 0), (0, 1), (0, 2), (0, 4)]
    assert select([dict(enumerate([2.0] * 8))] * 3, 3, 1) == []


def test_equal_rewards_keep_nothing_but_the_iteration_counts(tiny_model, tokenizer):
    rows = embedded_rows()["train"]
    trainer = LBESTrainer(tiny_model, tokenizer, Flat(), rows * 3, LBESConfig.from_dict({**LBES, "batch_size": 2}),
                          max_new_tokens=8)
    theta0 = {n: t.clone() for n, t in trainer.population.master.items()}
    records = trainer.train()
    assert [r["iteration"] for r in records] == list(range(LBES["iterations"]))
    assert {r["status"] for r in records} == {"nothing kept"}
    assert all(r["kept"] == [] and r["shaped"] == [0.0] * 4 and r["rollouts"] == 2 * 6 for r in records)
    assert all(r["tokens"] > 0 and r["prompt_tokens"] > 0 and r["drift_sq"] == 0.0 for r in records)
    assert len({tuple(r["prompts"]) for r in records}) > 1  # the minibatch seeds advance
    for n, t in trainer.population.master.items():
        assert torch.equal(t, theta0[n]), n


def test_undefined_correlations_give_no_update(tiny_model, tokenizer):
    trainer = _trainer(tiny_model, tokenizer, Digits(), iterations=2)
    trainer.scorer.loglik = lambda model: [-1.0] * len(trainer.scorer.sequences)
    theta0 = {n: t.clone() for n, t in trainer.population.master.items()}
    records = trainer.train()
    assert {r["status"] for r in records} == {"correlation undefined"}
    assert all(r["undefined_members"] == [0, 1, 2, 3] and r["fitness"] == [0.0] * 4 for r in records)
    for n, t in trainer.population.master.items():
        assert torch.equal(t, theta0[n]), n


# --- the update ---------------------------------------------------------------------------------
def test_update_is_the_nes_step_on_z_scored_correlations(tiny_model, tokenizer):
    """θ₁ − θ₀ = α/(λσ) Σ zᵢεᵢ with ε from the keyed noise and z the population z-scores, and the
    scored sequences are the sampled token ids themselves."""
    trainer = _trainer(tiny_model, tokenizer, Digits())
    theta0 = {n: t.clone() for n, t in trainer.population.master.items()}
    gens, _ = trainer.sample(0, [0, 1])  # seeded: the step samples the same completions
    record = trainer.step(0)
    assert record["status"] == "scored" and len(record["kept"]) == 8
    n = LBES["n_samples"]
    prompts = trainer.prompt_ids
    assert trainer.scorer.sequences == [prompts[p] + gens.ids[p * n + j] for p, j in record["kept"]]
    # the logged rewards, recomputed from the decoded sampled tokens by the reward's own definition
    # (character codes mod 5), not by the trainer's reward call
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in gens.ids]
    by_hand = [[float(sum(ord(c) for c in texts[p * n + j]) % 5) for j in range(n)] for p in range(2)]
    assert record["sample_rewards"] == by_hand and len({r for rs in by_hand for r in rs}) > 1
    # the kept completions: per prompt, the k best and k worst of the hand rewards (ties: lower index is better)
    for p in range(2):
        ranked = sorted(range(n), key=lambda j: (-by_hand[p][j], j))
        assert sorted(j for q, j in record["kept"] if q == p) == sorted(ranked[:2] + ranked[-2:])
    assert (record["rollouts"], record["tokens"]) == (2 * n, gens.total_tokens)
    prefilled = 4 * sum(map(len, trainer.scorer.sequences))  # every member prefills every kept sequence
    assert record["prompt_tokens"] == n * (len(prompts[0]) + len(prompts[1])) + prefilled

    f = record["fitness"]
    mean = sum(f) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in f) / 4)  # population std, denominator N
    z = [(v - mean) / std for v in f]
    assert record["shaped"] == pytest.approx(z, rel=1e-12)
    seed = run_seed(LBES["seed"], "lbes/single/1-conciseness")
    alpha, sigma = LBES["alpha"], LBES["sigma"]
    for name, theta in trainer.population.master.items():
        step = sum(zi * tensor_noise(theta0[name], seed, 0, i, name) for i, zi in enumerate(z))
        torch.testing.assert_close(theta - theta0[name], alpha / (4 * sigma) * step, rtol=1e-5, atol=1e-7)
    assert record["config"]["step"] == "nes" and record["config"]["shaping"] == "zscore"


def test_members_score_the_perturbed_model(tiny_model, tokenizer):
    """Member i's fitness is the correlation under θ + σεᵢ (checked against perturbing by hand)."""
    trainer = _trainer(tiny_model, tokenizer, Digits())
    record = trainer.step(0)
    theta1 = {n: t.clone() for n, t in trainer.population.master.items()}
    scorer = trainer.scorer
    params = dict(tiny_model.named_parameters())
    seed, sigma = run_seed(LBES["seed"], "lbes/single/1-conciseness"), LBES["sigma"]
    for member in (0, 3):
        with torch.no_grad():
            for name, p in params.items():  # θ₀ + σε from θ₁ and the logged update
                p.copy_(trainer.drift.theta0[name] + sigma * tensor_noise(theta1[name], seed, 0, member, name))
        assert pearson(scorer.rewards, scorer.loglik(tiny_model)) == pytest.approx(record["fitness"][member], rel=1e-5)


# --- runs: log, replay, resume, budget ------------------------------------------------------------
def _lbes_args(base, cfg, out, state=None, log_level="WARNING"):
    return _train_args(base, cfg, out, state, extra=["--method", "lbes", "--run-id", "lbes/single/1-conciseness"],
                       log_level=log_level)


def test_run_log_and_replay_rebuild_the_weights_bitwise(base, tmp_path):
    cfg = {**LBES, "antithetic": "signed"}
    main(_lbes_args(base, cfg, tmp_path / "run"))
    trained = tmp_path / "run" / "weights.safetensors"
    assert _moved(trained, base) > 0
    records = read_jsonl(tmp_path / "run" / "run.jsonl")
    assert len(records) == cfg["iterations"]
    for r in records:
        assert set(COMMON_FIELDS) <= set(r)
        assert r["rollouts"] == 2 * cfg["n_samples"] and 0 < r["tokens"] < r["prompt_tokens"]
        assert r["lbes"] == LBESConfig.from_dict(cfg).to_dict() and r["config"]["antithetic"] == "signed"
    assert any(r["status"] == "scored" for r in records)
    main(["replay", "--base", str(base / "base"), "--run", str(tmp_path / "run" / "run.jsonl"),
          "--out", str(tmp_path / "replayed.safetensors")])
    _assert_same_weights(tmp_path / "replayed.safetensors", trained)


def test_sigkill_then_restart_equals_an_uninterrupted_run(base, tmp_path, caplog):
    cfg = {**LBES, "iterations": 40}
    main(_lbes_args(base, cfg, tmp_path / "full"))
    state, out = tmp_path / "state", tmp_path / "killed"
    sigkill_once_saved(_lbes_args(base, cfg, out, state), state / "state.safetensors")
    assert not (out / "weights.safetensors").exists()
    with caplog.at_level(logging.INFO, logger="esft.methods.es.trainer"):
        main(_lbes_args(base, cfg, out, state, log_level="INFO"))
    assert any("resumed from" in r.getMessage() for r in caplog.records)
    _assert_same_weights(out / "weights.safetensors", tmp_path / "full" / "weights.safetensors")
    assert read_jsonl(out / "run.jsonl") == [
        {**r, "seconds": a["seconds"], "tokens_per_s": a["tokens_per_s"]}
        for r, a in zip(read_jsonl(tmp_path / "full" / "run.jsonl"), read_jsonl(out / "run.jsonl"))]


@pytest.mark.slow  # ~30 s on 2 shared cores, nearly all of it starting the 2 ranks
def test_two_gloo_ranks_equal_one_process_bit_for_bit(base, tmp_path):
    """Members sharded over 2 torchrun ranks: every rank samples the same completions (same seed, same θ)
    and scores its block; the weights equal a single-process run's."""
    cfg = {**LBES, "population": 5, "iterations": 3}
    main(_lbes_args(base, cfg, tmp_path / "one"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    "-m", "esft.cli", *_lbes_args(base, cfg, tmp_path / "two")], check=True, env=env, timeout=240,
                   cwd=tmp_path, stdout=subprocess.DEVNULL)
    _assert_same_weights(tmp_path / "two" / "weights.safetensors", tmp_path / "one" / "weights.safetensors")
    assert [r["fitness"] for r in read_jsonl(tmp_path / "two" / "run.jsonl")] == \
        [r["fitness"] for r in read_jsonl(tmp_path / "one" / "run.jsonl")]


@pytest.mark.parametrize("budget", [{"max_rollouts": 30}, {"max_tokens": 150}])
def test_budget_stops_at_the_same_iteration_twice(tiny_model, tokenizer, budget):
    init = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    stops = []
    for _ in range(2):
        with torch.no_grad():
            for n, p in tiny_model.named_parameters():
                p.copy_(init[n])
        records = _trainer(tiny_model, tokenizer, Digits(), iterations=20, **budget).train()
        key, bound = next(iter(budget.items()))
        total = sum(r[key.removeprefix("max_")] for r in records)
        assert total >= bound and total - records[-1][key.removeprefix("max_")] < bound
        stops.append((len(records), [r["fitness"] for r in records]))
    assert stops[0] == stops[1] and stops[0][0] < 20


# --- config -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg, message", [
    ({"n_samples": 1}, "lbes.n_samples"),
    ({"temperature": 0.0}, "lbes.temperature"),
    ({"k_var": 0}, "lbes.k_var"),
    ({"k": 0}, "lbes.k"),
    ({"k": 5, "n_samples": 8}, "2k <= n_samples"),
    ({"mode": "batched"}, "lbes.mode"),
    ({"generation_batch_size": 0}, "lbes.generation_batch_size"),
    ({"population": 1}, "lbes.population"),
    ({"sigma": 0.0}, "lbes.sigma"),
    ({"batch_size": 0}, "lbes.batch_size"),
    ({"antithetic": "signed", "population": 5}, "lbes.antithetic"),
    ({"antithetic": "both"}, "lbes.antithetic"),
    ({"max_rollouts": 0}, "lbes.max_rollouts"),
    ({"max_tokens": 0}, "lbes.max_tokens"),
    ({"checkpoint_every": 0}, "lbes.checkpoint_every"),
    ({"iterations": -1}, "lbes.iterations"),
    ({"shaping": "rank"}, r"unknown lbes option\(s\) \['shaping'\]"),
])
def test_config_errors_name_the_key(cfg, message):
    with pytest.raises(EsftError, match=message):
        LBESConfig.from_dict(cfg)


def test_lbes_takes_no_corpus(base, tmp_path, caplog):
    with pytest.raises(SystemExit):
        main(_train_args(base, LBES, tmp_path / "run", extra=["--method", "lbes", "--corpus", "x.jsonl"]))
    assert "no --corpus" in caplog.text


def test_schema_mirrors_the_lbes_config():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text(encoding="utf-8"))["$defs"]["lbes"]
    assert set(schema["properties"]) == {f.name for f in fields(LBESConfig)}
    full = {"population": 8, "sigma": 0.01, "alpha": 0.005, "iterations": 3, "batch_size": None, "n_samples": 4,
            "temperature": 0.7, "k_var": 3, "k": 2, "antithetic": "paired", "mode": "inplace", "max_rollouts": 100,
            "max_tokens": None, "seed": 1, "generation_batch_size": 8, "checkpoint_every": 2, "master_device": "cpu",
            "theta0_device": "cpu"}
    jsonschema.validate(full, schema)
    assert LBESConfig.from_dict(full).to_dict() == full
    jsonschema.validate({}, schema)
    for bad in ({"mode": "batched"}, {"temperature": 0}, {"n_samples": 1}, {"shaping": "zscore"}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    assert json.loads(json.dumps(LBESConfig().es_config().to_dict()))["step"] == "nes"


def test_torchrun_ranks_score_rank_0s_samples(tmp_path):
    """Under torchrun only rank 0's samples are logged, so every rank must score its members on those:
    rank 1, whose own sampling would draw other completions, logs exactly rank 0's records."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "records"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                    str(Path(__file__).with_name("lbes_distributed_worker.py")), str(out)], check=True, env=env,
                   timeout=240, cwd=tmp_path)
    ranks = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1] and len(ranks[0]) == 2
    assert all(r["status"] == "scored" and len(set(r["fitness"])) > 1 for r in ranks[0])
