"""The vLLM ES engine on CPU: a stand-in engine (vLLM's fused names and padding, built by our mapping and
checked against a hand-written oracle of vLLM's layout)
against esft's own Hugging Face path, bit for bit. vLLM itself is never imported here."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from esft.errors import EsftError
from esft.es.config import ESConfig
from esft.es.fitness import TaskFitness
from esft.es.noise import tensor_noise
from esft.es.population import Population
from esft.es.trainer import ESTrainer, trainable
from esft.es.vllm_trainer import VllmESTrainer, engine_memory
from esft.es.vllm_worker import EngineES, ESWorkerExtension
from esft.io import read_jsonl
from esft.rollout import generate, stop_ids
from esft.rollout.vllm_backend import VllmEngine, row_seed
from esft.rollout.vllm_names import fuse, fused_layout, unfuse
from esft.tasks import get_task
from esft.tasks.conciseness import embedded_rows

GIB = 1 << 30


def _model(kind: str, dtype: torch.dtype) -> torch.nn.Module:
    """A small randomly initialised model of each architecture: tied Qwen3, tied Qwen2 (q/k/v biases),
    untied Llama with attention biases."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    shape = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
    config = {"qwen3": lambda: Qwen3Config(**shape, head_dim=12, tie_word_embeddings=True),
              "qwen2": lambda: Qwen2Config(**shape, tie_word_embeddings=True),
              "llama": lambda: LlamaConfig(**shape, attention_bias=True, tie_word_embeddings=False)}[kind]()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    with torch.no_grad():  # biases and norms start at 0/1: give every tensor distinct values
        for p in model.parameters():
            p.add_(torch.randn(p.shape).to(dtype) * 0.02)
    return model.eval()


def _layout(model):
    return fused_layout(model.config, {n: p.shape for n, p in model.named_parameters()})


def _fused(model, layout) -> dict[str, torch.Tensor]:
    return fuse({n: p.detach() for n, p in model.named_parameters()}, layout)


class StandInWorker(ESWorkerExtension):
    """vLLM's worker as the extension sees it: `model_runner.model.named_parameters()`, `parallel_config`."""

    def __init__(self, engine: dict[str, torch.Tensor], tp: int = 1) -> None:
        params = {n: torch.nn.Parameter(t, requires_grad=False) for n, t in engine.items()}  # shares storage
        self.model_runner = SimpleNamespace(model=SimpleNamespace(named_parameters=lambda: iter(params.items())))
        self.parallel_config = SimpleNamespace(tensor_parallel_size=tp, pipeline_parallel_size=1)


class StandInLLM:
    """`vllm.LLM` on CPU: fused engine tensors (our layout), an HF model that reads them in place for
    generation, collective_rpc onto a StandInWorker; counts prefix-cache resets."""

    def __init__(self, model, tokenizer) -> None:
        layout = _layout(model)
        self.engine = _fused(model, layout)
        for name, view in unfuse(self.engine, layout).items():  # the model now computes from the engine's storage
            module, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(module), leaf, torch.nn.Parameter(view, requires_grad=False))
        if model.config.tie_word_embeddings:
            model.lm_head.weight = model.get_input_embeddings().weight
        self.model, self.tokenizer, self.layout = model, tokenizer, layout
        self.worker = StandInWorker(self.engine)
        self.resets = 0

    def collective_rpc(self, method, args=(), kwargs=None):
        return [getattr(self.worker, method)(*args, **(kwargs or {}))]

    def reset_prefix_cache(self) -> bool:
        self.resets += 1
        return True

    def generate(self, prompts, params, use_tqdm=True):
        assert all(p.temperature == 0 and p.stop_token_ids == stop_ids(self.model, self.tokenizer) for p in params)
        gens = generate(self.model, self.tokenizer, [p["prompt_token_ids"] for p in prompts], params[0].max_tokens,
                        len(prompts))
        return [SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids)]) for ids in gens.ids]


def standin_engine(model, tokenizer) -> VllmEngine:
    llm = StandInLLM(model, tokenizer)
    return VllmEngine(llm, SimpleNamespace, tokenizer, stop_ids(model, tokenizer), llm.layout)


OPTIONS = dict(antithetic=True, sigma_scale={"model.norm.weight": 2.0}, alpha_scale={"model.embed_tokens.weight": 0.5})


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["qwen3", "qwen2", "llama"])
def test_engine_members_restore_and_update_equal_esfts_own(kind, dtype, tmp_path):
    hf = _model(kind, dtype)
    layout = _layout(hf)
    engine = _fused(hf, layout)
    before = {n: t.clone() for n, t in engine.items()}
    es = EngineES(engine, layout, 7, **OPTIONS)
    reference = Population(trainable(hf), 7, **OPTIONS)
    theta = {n: p.detach().to(torch.float32, copy=True) for n, p in hf.named_parameters()}
    for member in (0, 3):
        es.perturb(2, member, 0.01)
        reference.perturb(2, member, 0.01)
        # (a) the engine holds exactly the fused HF model perturbed by esft's own Population
        expected = _fused(hf, layout)
        assert all(torch.equal(engine[n], expected[n]) for n in engine), (kind, dtype, member)
        # ... which is θ + σ·(±ε) formed in fp32 from noise keyed on the HF name, rounded once to the dtype
        views = unfuse(engine, layout)
        for name in ("model.layers.1.self_attn.k_proj.weight", "model.layers.0.mlp.up_proj.weight"):
            eps = tensor_noise(theta[name], 7, 2, member // 2, name) * (-1 if member % 2 else 1)
            assert torch.equal(views[name], (theta[name] + 0.01 * eps).to(dtype))
    es.restore()
    reference.restore()
    assert all(torch.equal(engine[n], before[n]) for n in engine)  # (b) bit for bit, padding rows included
    # (c) the update from the fp32 master, written into the fused tensors and exported under HF names
    weights = [0.5, -1.0, 0.25, 2.0]
    rows = es.update(3, weights, 0.01, None, False)
    reference.update(3, weights, 0.01)
    assert list(es.population.master) == list(reference.master)
    assert all(torch.equal(es.population.master[n], reference.master[n]) for n in reference.master)
    expected = _fused(hf, layout)
    assert all(torch.equal(engine[n], expected[n]) for n in engine)
    es.save_weights(str(tmp_path / "w.safetensors"), "float32")
    exported = load_file(str(tmp_path / "w.safetensors"))
    assert set(exported) == set(reference.master) and all(torch.equal(exported[n], reference.master[n])
                                                          for n in exported)
    drift = {r["parameter"]: r["drift_sq"] for r in rows}
    assert set(drift) == set(reference.master) and drift["model.norm.weight"] > 0
    assert es.runtime() == {"dtype": str(dtype).removeprefix("torch."), "device": "cpu"}


def test_worker_extension_refuses_tensor_parallel_and_loads_hf_checkpoints(tmp_path):
    from esft.runs import save_weights

    hf = _model("llama", torch.float32)
    layout = [vars(s) for s in _layout(hf)]
    engine = _fused(hf, _layout(hf))
    with pytest.raises(EsftError, match=r"tensor and pipeline parallel size 1, got \(2, 1\)"):
        StandInWorker(engine, tp=2).esft_setup(layout, 0, {})
    trained = {n: p.detach() + 1.0 for n, p in hf.named_parameters()}
    save_weights(tmp_path / "w.safetensors", trained)
    StandInWorker(engine).esft_load_weights(str(tmp_path / "w.safetensors"), layout)
    views = unfuse(engine, _layout(hf))
    assert all(torch.equal(views[n], trained[n]) for n in trained)
    save_weights(tmp_path / "bad.safetensors", {**trained, "extra.weight": torch.zeros(1)})
    with pytest.raises(EsftError, match=r"unknown \['extra.weight'\]"):
        StandInWorker(engine).esft_load_weights(str(tmp_path / "bad.safetensors"), layout)


@pytest.fixture()
def lively(tiny_model, tokenizer):
    """The micro model with larger weights and two stop ids (as Qwen's chat models have), so completions
    end at lengths that differ between members."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tiny_model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3, generator=gen)
    tiny_model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(",")]
    return tiny_model


def _trainers(model, tokenizer, cfg: ESConfig, state_dir=None):
    """(HF trainer, engine trainer) of the same run, each on its own copy of `model`."""
    task, rows = get_task("conciseness"), embedded_rows()["train"]
    run_id = "es/single/1-conciseness"
    hf = ESTrainer(copy.deepcopy(model), TaskFitness(task, rows, tokenizer, 8, 8), len(rows), cfg, run_id=run_id)
    engine = standin_engine(copy.deepcopy(model), tokenizer)
    on_engine = VllmESTrainer(engine, TaskFitness(task, rows, tokenizer, 8, 8), len(rows), cfg, state_dir=state_dir,
                              run_id=run_id)
    return hf, on_engine


def _outputs(trainer, out: Path):
    trainer.write_outputs(out)
    timing = ("seconds", "tokens_per_s")
    records = [{k: v for k, v in r.items() if k not in timing} for r in read_jsonl(out / "run.jsonl")]
    return load_file(str(out / "weights.safetensors")), records, pd.read_parquet(out / "drift.parquet")


def test_training_on_the_engine_is_the_hf_run_bit_for_bit(lively, tokenizer, tmp_path):
    cfg = ESConfig(population=4, sigma=0.05, alpha=0.02, iterations=3, generation_batch_size=8, antithetic="signed",
                   group_sigma={"norm": 2.0}, backend="vllm")
    hf, on_engine = _trainers(lively, tokenizer, cfg)
    hf.train()
    on_engine.train()
    weights, records, drift = _outputs(hf, tmp_path / "hf")
    weights_v, records_v, drift_v = _outputs(on_engine, tmp_path / "vllm")
    assert any(len(set(r["fitness"])) > 1 for r in records)  # members differed: θ moved for a reason
    assert records_v == records
    assert set(weights_v) == set(weights) and all(torch.equal(weights_v[n], weights[n]) for n in weights)
    pd.testing.assert_frame_equal(drift_v, drift)
    # every weight write dropped the prefix cache: 4 members + 1 restore per iteration, and the update
    assert on_engine.engine.llm.resets == 3 * (4 + 1 + 1)


def test_a_killed_engine_run_resumes_to_the_same_weights(lively, tokenizer, tmp_path):
    cfg = ESConfig(population=4, sigma=0.05, alpha=0.02, iterations=3, generation_batch_size=8, checkpoint_every=1,
                   backend="vllm")
    _, full = _trainers(lively, tokenizer, cfg)
    full.train()
    _, killed = _trainers(lively, tokenizer, cfg, state_dir=tmp_path / "state")
    step = killed.step

    def killed_at_iteration_2(iteration: int):
        if iteration == 2:
            raise KeyboardInterrupt
        return step(iteration)

    killed.step = killed_at_iteration_2
    with pytest.raises(KeyboardInterrupt):
        killed.train()
    assert (tmp_path / "state" / "state.safetensors").exists()  # written by the worker
    _, resumed = _trainers(lively, tokenizer, cfg, state_dir=tmp_path / "state")
    resumed.train()
    weights, records, _ = _outputs(full, tmp_path / "full")
    weights_r, records_r, _ = _outputs(resumed, tmp_path / "resumed")
    assert records_r == records and all(torch.equal(weights_r[n], weights[n]) for n in weights)
    assert not (tmp_path / "state" / "state.safetensors").exists()


def test_evaluation_on_the_engine_equals_the_hf_model(lively, tokenizer, tmp_path):
    from esft.evaluate.accuracy import evaluate_tasks
    from esft.tasks.prepare import prepare_task

    cfgs = {"boolq": {"source": "synthetic", "seed": 4, "n_train": 2, "n_test": 5, "max_new_tokens": 5}}
    prepare_task("boolq", cfgs["boolq"], tmp_path / "boolq")
    dirs = {"boolq": tmp_path / "boolq"}
    engine = standin_engine(copy.deepcopy(lively), tokenizer)
    metrics, completions = evaluate_tasks(lively, tokenizer, dirs, cfgs, 3)
    assert evaluate_tasks(engine, tokenizer, dirs, cfgs, 3) == (metrics, completions)
    assert len({len(c["completion_ids"]) for c in completions}) > 1  # rows stopped at different lengths


def test_sampled_generation_seeds_each_row_and_needs_a_seed(tokenizer):
    seen = []
    llm = SimpleNamespace(generate=lambda prompts, params, use_tqdm: seen.extend(params) or
                          [SimpleNamespace(outputs=[SimpleNamespace(token_ids=[5, tokenizer.eos_token_id, 9])])] * 2)
    engine = VllmEngine(llm, SimpleNamespace, tokenizer, [tokenizer.eos_token_id], [])
    gens = engine.generate([[1, 2], [3]], 4, temperature=0.7, seed=11)
    assert gens.n_tokens == [2, 2] and gens.ids == [[5, tokenizer.eos_token_id]] * 2
    assert [p.seed for p in seen] == [row_seed(11, i) for i in range(2)]
    assert seen[0].seed != seen[1].seed and seen[0].stop_token_ids == [tokenizer.eos_token_id]
    with pytest.raises(EsftError, match="needs a seed"):
        engine.generate([[1]], 4, temperature=0.7)


def test_memory_plan_beside_vllm_names_the_options():
    from esft.rollout.vllm_names import Shard

    layout = [Shard("model.embed_tokens.weight", "model.embed_tokens.weight", 0, 1 << 28, (1 << 28, 4))]  # 2**30 values

    def cfg(utilization: float, **placement: str) -> ESConfig:
        return ESConfig.from_dict({"backend": "vllm", "vllm": {"gpu_memory_utilization": utilization}, **placement})

    # master 4 GiB + θ_0 (bf16) 2 GiB + workspace 8 GiB, beside vLLM's 90% of 80 GiB (less 5% headroom)
    with pytest.raises(EsftError, match=r"needs 14\.0 GiB .* leaves 4\.0 GiB of 80\.0 GiB; set es\.master_device: "
                                        r"cpu \(frees 4\.0 GiB\), or es\.theta0_device: cpu \(frees 2\.0 GiB\), or a "):
        engine_memory(layout, "bfloat16", cfg(0.9), 80 * GIB)
    assert engine_memory(layout, "bfloat16", cfg(0.7), 80 * GIB).endswith("of 20.00 GiB left by vLLM")
    line = engine_memory(layout, "bfloat16", cfg(0.9, master_device="cpu", theta0_device="cpu"), None)
    assert line == "ES state beside vLLM: master 0.00 GiB, θ_0 0.00 GiB, workspace 12.00 GiB"


def test_backend_vllm_without_vllm_is_one_line_naming_the_extra(monkeypatch, base, tmp_path):
    from esft.evaluate.accuracy import load_evaluated
    from esft.training import TrainJob, train

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    job = TrainJob(method="es", task="conciseness", base=str(base / "base"), data=base / "data",
                   task_cfg={"max_new_tokens": 4}, cfg={"population": 2, "iterations": 1, "backend": "vllm"},
                   out=tmp_path / "run")
    with pytest.raises(EsftError, match=r"^backend vllm needs the vllm package, which is not installed: "
                                        r"pip install 'esft\[gpu\]'$"):
        train(job)
    with pytest.raises(EsftError, match=r"pip install 'esft\[gpu\]'"):
        load_evaluated(base / "base", None, "float32", "cpu", {"generation_batch_size": 4, "backend": "vllm"}, [])
    model, _ = load_evaluated(base / "base", None, "float32", "cpu", {"generation_batch_size": 4}, [])  # hf by default
    assert isinstance(model, torch.nn.Module)


def test_a_prefix_cache_that_cannot_reset_stops_the_run(tmp_path):
    """vLLM's reset_prefix_cache returns False while blocks are held: generating then would reuse KV computed
    with the previous weights, so the write raises instead of going on."""
    weights = tmp_path / "weights.safetensors"
    save_file({}, str(weights))  # its header is read before the write
    llm = SimpleNamespace(collective_rpc=lambda method, args: [None], reset_prefix_cache=lambda: False)
    engine = VllmEngine(llm, SimpleNamespace, None, [], [])
    with pytest.raises(EsftError, match=r"could not reset its prefix cache after esft_load_weights"):
        engine.load_weights(weights)
    llm.reset_prefix_cache = lambda: True
    engine.load_weights(weights)


def test_max_model_len_is_the_longest_request_unless_set(monkeypatch, base, tokenizer):
    """`vllm.max_model_len: null` must not hand vLLM the model's own maximum (Qwen3-4B: 262,144 tokens, whose
    KV cache does not fit): the engine gets the longest prompt of the tasks it serves plus that task's
    max_new_tokens; a set length shorter than that is refused."""
    from esft.rollout import encode_prompts
    from esft.rollout.vllm_backend import VllmOptions, open_engine

    built = []
    fake = SimpleNamespace(LLM=lambda **kw: built.append(kw) or SimpleNamespace(), SamplingParams=SimpleNamespace)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    short = [[{"role": "user", "content": "hi"}]]
    long = [[{"role": "user", "content": "a much longer question than the other one"}], short[0]]
    n_long = len(encode_prompts(tokenizer, long[:1])[0])
    assert n_long > len(encode_prompts(tokenizer, short)[0]) + 20
    open_engine(base / "base", "float32", VllmOptions(), [(short, 50), (long, 7)])
    assert built[-1]["max_model_len"] == max(n_long + 7, len(encode_prompts(tokenizer, short)[0]) + 50)
    open_engine(base / "base", "float32", VllmOptions(max_model_len=4096), [(long, 7)])
    assert built[-1]["max_model_len"] == 4096
    with pytest.raises(EsftError, match=rf"vllm.max_model_len 8 is shorter than .* \({n_long + 7}\)"):
        open_engine(base / "base", "float32", VllmOptions(max_model_len=8), [(long, 7)])


@pytest.mark.parametrize("kind", ["qwen3", "qwen2", "llama"])
def test_stand_in_engine_tensors_are_vllms_layout_written_by_hand(kind):
    """The stand-in engine is built with esft's own `fuse`; this oracle is not: vLLM's tensors of these models,
    written out from the HF ones by hand: q, k, v stacked in that order into qkv_proj (weights and biases),
    gate then up into gate_up_proj, the vocabulary padded with zero rows to a multiple of 64 (100 -> 128),
    and no lm_head when it is tied to the embedding."""
    hf = {n: p.detach() for n, p in _model(kind, torch.float32).named_parameters()}

    def padded(t):
        return torch.cat([t, torch.zeros(128 - t.shape[0], *t.shape[1:])])

    expected = {"model.embed_tokens.weight": padded(hf["model.embed_tokens.weight"]), "model.norm.weight":
                hf["model.norm.weight"]}
    if kind == "llama":
        expected["lm_head.weight"] = padded(hf["lm_head.weight"])
    for i in range(2):
        a, m = f"model.layers.{i}.self_attn", f"model.layers.{i}.mlp"
        expected[f"{a}.qkv_proj.weight"] = torch.cat([hf[f"{a}.{x}_proj.weight"] for x in "qkv"])
        if kind != "qwen3":  # Qwen2 and this Llama have q/k/v biases
            expected[f"{a}.qkv_proj.bias"] = torch.cat([hf[f"{a}.{x}_proj.bias"] for x in "qkv"])
        if kind == "qwen3":
            expected.update({f"{a}.{x}_norm.weight": hf[f"{a}.{x}_norm.weight"] for x in "qk"})
        expected[f"{m}.gate_up_proj.weight"] = torch.cat([hf[f"{m}.gate_proj.weight"], hf[f"{m}.up_proj.weight"]])
        names = [f"{a}.o_proj.weight", f"{m}.down_proj.weight", f"model.layers.{i}.input_layernorm.weight",
                 f"model.layers.{i}.post_attention_layernorm.weight"] + ([f"{a}.o_proj.bias"] if kind == "llama" else [])
        expected.update({n: hf[n] for n in names})
    engine = StandInLLM(_model(kind, torch.float32), None).engine
    assert sorted(engine) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(engine[name], tensor), name
