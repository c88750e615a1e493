"""One 4B model on one GPU: the memory plan, the host-memory master and θ_0, and the checkpoint dtype."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from esft.errors import EsftError
from esft.methods.es.memory import GIB, plan_memory
from esft.methods.es.population import Population
from esft.runs import Drift, offload, save_weights

from conftest import REPO

H100 = 80 * 10**9  # bytes an 80 GB card reports, about 74.5 GiB


def _qwen3_4b(dtype: torch.dtype):
    """Qwen3-4B-Instruct-2507's shape on the meta device: no weights are allocated."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    cfg = Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                      max_position_embeddings=262144, dtype=str(dtype).removeprefix("torch."))
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype)


@pytest.fixture(scope="module")
def qwen3_4b():
    """ES loads it in bf16."""
    return _qwen3_4b(torch.bfloat16)


@pytest.fixture(scope="module")
def qwen3_4b_fp32():
    """GRPO trains fp32 weights."""
    return _qwen3_4b(torch.float32)


def plan(model, **kw):
    trainable = dict(model.named_parameters())
    # the paper's ES: 200 prompts per generation batch, 1024 new tokens; prompts of up to 300 tokens
    return plan_memory(model, trainable, rows=200, prompt_tokens=300, new_tokens=1024, capacity=H100, **kw)


def test_4b_plan_terms(qwen3_4b):
    p = plan(qwen3_4b)
    n = sum(t.numel() for t in qwen3_4b.parameters())
    assert 4.0e9 < n < 4.1e9
    assert 0 <= p.term("weights").nbytes - 2 * n < 4096  # bf16 weights and the rotary buffers
    assert p.term("master").nbytes == 4 * n and p.term("theta0").nbytes == 2 * n
    # K and V of 36 layers × 8 heads × 128 dims in bf16, for 200 rows of 300 + 1024 tokens
    assert p.term("kv_cache").nbytes == 200 * 1324 * 2 * 36 * 8 * 128 * 2
    assert p.term("workspace").nbytes == 2 * 4 * 151936 * 2560  # the embedding is the largest tensor


def test_4b_on_one_80gb_gpu_needs_the_master_in_host_memory(qwen3_4b):
    with pytest.raises(EsftError, match=r"memory plan: .* GiB on the device exceeds the usable .*; set "
                                        r"es_300.master_device: cpu \(frees 15.0 GiB\), or es_300.theta0_device"):
        plan(qwen3_4b).check("es_300")
    fits = plan(qwen3_4b, master_device="cpu", theta0_device="cpu")
    fits.check("es")
    assert fits.host_bytes == 6 * sum(t.numel() for t in qwen3_4b.parameters())
    assert 50 * GIB < fits.device_bytes < fits.usable
    assert any("on device" in line for line in fits.lines())


def test_plan_without_a_gpu_checks_nothing(tiny_model):
    p = plan_memory(tiny_model, dict(tiny_model.named_parameters()), rows=4, prompt_tokens=10, new_tokens=5)
    p.check("es")
    assert p.capacity is None and p.device_bytes > 0


def test_host_master_and_theta0_give_the_same_run(tiny_model):
    """Master and θ_0 in host memory: every write and update bit for bit as with them on the model's device
    (on CPU both placements are the same memory; on CUDA the arithmetic stays on the device)."""
    params = dict(tiny_model.named_parameters())
    start = {n: p.detach().clone() for n, p in params.items()}
    results = {}
    for where in ("model", "cpu"):
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(start[n])
        pop = Population(params, seed=3, antithetic=True, master_device=where)
        drift = Drift(params, where)
        pop.perturb(0, 1, 0.1)
        member = {n: p.detach().clone() for n, p in params.items()}
        pop.update(0, [1.0, -0.5, 0.25, 0.0], 0.01)
        results[where] = member, {n: t.clone() for n, t in pop.master.items()}, drift.measure(0, pop.master)
        assert all(not t.is_pinned() for t in pop.master.values())  # pinning only for CUDA models
    (m0, w0, d0), (m1, w1, d1) = results["model"], results["cpu"]
    assert all(torch.equal(m0[n], m1[n]) and torch.equal(w0[n], w1[n]) for n in m0) and d0 == d1 > 0


def test_offload_copies():
    t = torch.arange(4.0)
    for where in ("model", "cpu"):
        copy = offload(t, where)
        assert torch.equal(copy, t) and copy.data_ptr() != t.data_ptr()
    with pytest.raises(EsftError, match="unknown placement 'gpu'"):
        offload(t, "gpu")


def test_checkpoint_dtype(tmp_path):
    weights = {"a.weight": torch.randn(3, 5), "b.bias": torch.randn(5)}
    save_weights(tmp_path / "fp32.safetensors", weights)
    save_file(weights, str(tmp_path / "plain.safetensors"), metadata={"format": "pt"})
    # the default is the fp32 file it always was, byte for byte
    assert (tmp_path / "fp32.safetensors").read_bytes() == (tmp_path / "plain.safetensors").read_bytes()
    save_weights(tmp_path / "bf16.safetensors", weights, "bfloat16")
    bf16 = load_file(str(tmp_path / "bf16.safetensors"))
    assert all(bf16[n].dtype == torch.bfloat16 and torch.equal(bf16[n], w.to(torch.bfloat16)) for n, w in weights.items())
    with safe_open(str(tmp_path / "bf16.safetensors"), "pt") as fh:
        assert fh.metadata() == {"format": "pt"}
    with pytest.raises(EsftError, match="unknown checkpoint dtype 'int8'"):
        save_weights(tmp_path / "x.safetensors", weights, "int8")


def test_4b_population_pass_plans_its_own_rows_and_member_weights(qwen3_4b):
    """lowrank and batched hold one pass's KV cache (members × prompts rows) and that pass's member weights."""
    n = sum(t.numel() for t in qwen3_4b.parameters())
    per_row = 1324 * 2 * 36 * 8 * 128 * 2
    low = plan(qwen3_4b, mode="lowrank", members=1)  # es.generation_batch_size 200: 1 member × 200 prompts
    assert low.term("kv_cache").nbytes == 200 * per_row and "1 members × 200 prompts" in low.term("kv_cache").note
    assert 0 < low.term("members").nbytes < GIB // 2
    stacked = plan_memory(qwen3_4b, dict(qwen3_4b.named_parameters()), rows=6 * 10, prompt_tokens=300,
                          new_tokens=1024, capacity=H100, mode="batched", members=6)
    assert stacked.term("kv_cache").nbytes == 60 * per_row
    assert stacked.term("members").nbytes == 2 * 6 * 2 * n
    assert stacked.term("workspace").nbytes == (6 + 1) * 4 * 151936 * 2560
    with pytest.raises(EsftError, match="a smaller es.generation_batch_size"):
        stacked.check("es")


def test_check_memory_plans_the_configured_pass(tiny_model, tokenizer, caplog):
    """es.generation_batch_size bounds the rows of a population pass: 11 rows → 2 members × 5 prompts."""
    from esft.methods.es import ESConfig
    from esft.methods.es.fitness import TaskFitness
    from esft.methods.es.run import check_memory
    from esft.tasks import get_task

    rows = [{"prompt": f"Say {i}", "target": "x"} for i in range(5)]
    fitness = TaskFitness(get_task("conciseness"), rows, tokenizer, 7, generation_batch_size=11)
    caplog.set_level("INFO", logger="esft.memory")
    for mode, note in [("batched", "2 members × 5 prompts per pass"), ("inplace", "5 rows per pass")]:
        caplog.clear()
        cfg = ESConfig(population=6, mode=mode, generation_batch_size=11)
        check_memory(tiny_model, cfg, fitness, len(rows), 7, "es")
        kv = next(r.getMessage() for r in caplog.records if "kv_cache" in r.getMessage())
        assert note in kv, kv


# --- GRPO ---------------------------------------------------------------------------------------
def _paper_grpo(**overrides):
    from esft.methods.grpo.trainer import GRPOSettings

    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text(encoding="utf-8"))
    return GRPOSettings.from_dict({**paper["grpo"], **overrides}), paper["tasks"]["countdown"]["max_new_tokens"]


def grpo_plan(model, **overrides):
    from esft.methods.grpo.memory import plan_grpo

    s, new_tokens = _paper_grpo(**overrides)
    # prompts of up to 300 tokens, as for ES above
    return plan_grpo(model, optim=s.optim, gradient_checkpointing=s.gradient_checkpointing, bf16=s.bf16,
                     micro_batch=s.per_device_train_batch_size,
                     generation_rows=s.generation_rows, prompt_tokens=300, completion_tokens=new_tokens,
                     capacity=H100)


def test_grpo_4b_plan_terms(qwen3_4b_fp32):
    n = sum(t.numel() for t in qwen3_4b_fp32.parameters())
    p = grpo_plan(qwen3_4b_fp32, optim="adamw_torch")
    assert 0 <= p.term("weights").nbytes - 4 * n < 4096 and p.term("optimizer").nbytes == 8 * n
    assert p.term("step_buffer").nbytes == 4 * n and p.term("gradients").nbytes == 4 * n
    # 80 completions per generate call (10 prompts × 8), KV of 36 layers × 8 heads × 128 dims in bf16 for
    # 300 + 1024 tokens
    assert p.term("kv_cache").nbytes == 80 * 1324 * 2 * 36 * 8 * 128 * 2
    eight = grpo_plan(qwen3_4b_fp32).term("optimizer").nbytes  # the paper config: adamw_8bit
    assert 2.55 * n < eight < 2.65 * n  # 1 byte per moment, fp32 scales per 256 entries, fp32 states of the embedding
    assert grpo_plan(qwen3_4b_fp32, optim="adamw_torch_fused").term("step_buffer").nbytes == 0
    full = grpo_plan(qwen3_4b_fp32, gradient_checkpointing=False).term("activations").nbytes
    checkpointed = grpo_plan(qwen3_4b_fp32).term("activations").nbytes
    assert 40 * GIB < full and checkpointed < 8 * GIB
    assert grpo_plan(qwen3_4b_fp32, bf16=False).term("kv_cache").nbytes == 2 * p.term("kv_cache").nbytes


def test_grpo_4b_paper_config_fits_one_80gb_gpu(qwen3_4b_fp32):
    """config/paper.yaml's grpo section (bf16, gradient checkpointing, 8-bit AdamW) fits an H100; AdamW's fp32
    moments do not, whichever kernel, and the error names the options to change."""
    fits = grpo_plan(qwen3_4b_fp32)
    fits.check("grpo")
    assert 45 * GIB < fits.device_bytes < fits.usable and fits.peak_phase == "backward"
    assert any("(at its peak, backward)" in line for line in fits.lines())
    for optim in ("adamw_torch", "adamw_torch_fused"):
        with pytest.raises(EsftError, match=r"grpo.optim: adamw_8bit \(bitsandbytes, the gpu extra; frees about 20.2"):
            grpo_plan(qwen3_4b_fp32, optim=optim).check("grpo")
    with pytest.raises(EsftError, match=r"grpo.gradient_checkpointing: true \(activations 5"):
        grpo_plan(qwen3_4b_fp32, gradient_checkpointing=False).check("grpo")
    with pytest.raises(EsftError, match=r"grpo.optim: adamw_torch_fused \(frees the 15.0 GiB step buffer\)"):
        grpo_plan(qwen3_4b_fp32, optim="adamw_torch").check("grpo")


def test_grpo_plan_without_a_gpu_checks_nothing(tiny_model):
    from esft.methods.grpo.memory import plan_grpo

    p = plan_grpo(tiny_model, optim="adamw_torch", gradient_checkpointing=True, bf16=False, micro_batch=8,
                  generation_rows=8, prompt_tokens=12, completion_tokens=4)
    p.check("grpo")
    assert p.capacity is None and p.device_bytes > 0 and not any("bf16" in t.note for t in p.terms)


def test_pinned_host_copies_are_planned_at_the_allocators_power_of_two(qwen3_4b):
    """PyTorch's pinned host allocator rounds each allocation up to a power of two: Qwen3-4B's fp32 master
    (15 GiB of tensors) takes about 21 GiB and θ_0 about 10.6, so a plan of the raw sizes (22.5 GiB) would
    miss 9 GiB per process."""
    p = plan(qwen3_4b, master_device="cpu", theta0_device="cpu", pinned=True)
    n = sum(t.numel() for t in qwen3_4b.parameters())
    embedding = 151936 * 2560
    assert p.term("master").nbytes == sum(1 << (4 * t.numel() - 1).bit_length() for t in qwen3_4b.parameters())
    assert 2 * GIB == 1 << (4 * embedding - 1).bit_length()  # 1.45 GiB -> 2 GiB
    assert 20.5 * GIB < p.term("master").nbytes < 21.5 * GIB and 10.2 * GIB < p.term("theta0").nbytes < 11 * GIB
    assert 31 * GIB < p.host_bytes < 32.5 * GIB and "pinned" in p.term("master").note
    unpinned = plan(qwen3_4b, master_device="cpu", theta0_device="cpu")  # a CPU run: plain host tensors
    assert unpinned.term("master").nbytes == 4 * n and unpinned.host_bytes == 6 * n


def test_grpo_8bit_plan_keeps_32bit_states_for_the_embedding(qwen3_4b_fp32):
    """transformers' Trainer registers every nn.Embedding with bitsandbytes for 32-bit Adam states: the tied
    389M-entry embedding of Qwen3-4B keeps 8 bytes per entry (3.1 GB), the other matrices about 2."""
    embedding = 151936 * 2560
    n = sum(t.numel() for t in qwen3_4b_fp32.parameters())
    eight = grpo_plan(qwen3_4b_fp32).term("optimizer").nbytes
    assert 8 * embedding == 3_111_649_280
    assert 8 * embedding + 2 * (n - embedding) < eight < 8 * embedding + 2.04 * (n - embedding)
    with pytest.raises(EsftError, match=rf"adamw_8bit \(bitsandbytes, the gpu extra; frees about "
                                        rf"{(8 * n - eight) / GIB:.1f} GiB"):
        grpo_plan(qwen3_4b_fp32, optim="adamw_torch").check("grpo")
