"""ES options: step kinds, antithetic forms, per-group multipliers, schedules, and config/schema sync."""

from __future__ import annotations

from dataclasses import fields

import jsonschema
import pytest
import torch
import yaml

from esft.methods.es import ESConfig, Population, shape_fitness
from esft.methods.es.config import LoRAConfig
from esft.methods.es.shaping import member_weights
from esft.methods.es.trainer import apply_update, build_population
from esft.noise import tensor_noise
from esft.params import param_group
from esft.rollout.vllm_backend import VllmOptions

from conftest import REPO


def _vector_pop(seed=5, dim=64, **kw):
    return Population({"w": torch.nn.Parameter(torch.zeros(dim))}, seed, **kw)


def test_nes_step_divides_by_sigma():
    weights, alpha, sigma = [1.0, -2.0, 0.5, 0.0], 0.1, 0.02
    standard, nes = _vector_pop(), _vector_pop()
    standard.update(3, weights, alpha)
    nes.update(3, weights, alpha, sigma=sigma)
    eps = [tensor_noise(torch.zeros(64), 5, 3, m, "w") for m in range(4)]
    expected = alpha / 4 * sum(w * e for w, e in zip(weights, eps))
    torch.testing.assert_close(standard.master["w"], expected, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(nes.master["w"], expected / sigma, rtol=1e-6, atol=1e-7)


def test_antithetic_members_share_one_draw_with_opposite_signs():
    pop = _vector_pop(antithetic=True)
    for k in range(3):
        plus, minus = pop.perturbation(7, 2 * k, "w", 0.1), pop.perturbation(7, 2 * k + 1, "w", 0.1)
        assert torch.equal(plus, -minus)
        assert torch.equal(plus, 0.1 * tensor_noise(torch.zeros(64), 5, 7, k, "w"))
    assert not torch.equal(pop.direction(7, 0, "w"), pop.direction(7, 2, "w"))


def test_paired_raw_nes_is_the_minibatch_es_estimator():
    """ĝ = 1/(2Pσ) Σ (F⁺ₖ − F⁻ₖ) εₖ, and θ moves by α·ĝ."""
    fitness, alpha, sigma = [3.0, 1.0, -2.0, 0.5, 4.0, 4.0], 0.3, 0.05
    pop = _vector_pop(antithetic=True)
    pop.update(2, member_weights(fitness, "raw", "paired"), alpha, sigma=sigma)
    pairs = len(fitness) // 2
    g_hat = sum((fitness[2 * k] - fitness[2 * k + 1]) * tensor_noise(torch.zeros(64), 5, 2, k, "w")
                for k in range(pairs)) / (2 * pairs * sigma)
    torch.testing.assert_close(pop.master["w"], alpha * g_hat, rtol=1e-6, atol=1e-7)


def test_mirrored_shapes_all_members_and_paired_shapes_differences():
    fitness = [3.0, 1.0, -2.0, 0.5, 4.0, 6.0]
    assert member_weights(fitness, "zscore", "mirrored") == shape_fitness(fitness, "zscore")
    # differences 2, −2.5, −2 rank as 1, −1, 0: pairs get (±½·rank)
    assert member_weights(fitness, "rank", "paired") == [0.5, -0.5, -0.5, 0.5, 0.0, -0.0]
    # mirrored: a pair contributes (w⁺ − w⁻)·ε — check through the update
    z = shape_fitness(fitness, "zscore")
    pop = _vector_pop(antithetic=True)
    pop.update(0, z, alpha=1.0)
    expected = sum((z[2 * k] - z[2 * k + 1]) * tensor_noise(torch.zeros(64), 5, 0, k, "w") for k in range(3)) / 6
    torch.testing.assert_close(pop.master["w"], expected, rtol=1e-6, atol=1e-7)


def test_signed_shapes_the_signed_rewards_as_ea4llm_eq_10():
    """EA4LLM eq. (10): the signed rewards sⱼ·rⱼ are ranked together and the step is Σⱼ shape(s·r)ⱼ·ε_k(j),
    which differs from weighting each pair by w⁺ − w⁻ (mirrored); with raw shaping both are Σ (r⁺ − r⁻)ε."""
    fitness = [3.0, 1.0, -2.0, 0.5, 4.0, 6.0]
    signed = [3.0, -1.0, -2.0, -0.5, 4.0, -6.0]
    ranks = shape_fitness(signed, "rank")  # 4, 2, 1, 3, 5, 0 of 5 → 0.6, -0.2, -0.6, 0.2, 1, -1
    assert ranks == pytest.approx([0.6, -0.2, -0.6, 0.2, 1.0, -1.0])
    weights = member_weights(fitness, "rank", "signed")
    assert weights == pytest.approx([0.6, 0.2, -0.6, -0.2, 1.0, 1.0])
    pop = _vector_pop(antithetic=True)
    pop.update(0, weights, alpha=1.0)
    expected = sum((ranks[2 * k] + ranks[2 * k + 1]) * tensor_noise(torch.zeros(64), 5, 0, k, "w")
                   for k in range(3)) / 6
    torch.testing.assert_close(pop.master["w"], expected, rtol=1e-6, atol=1e-7)
    assert weights != pytest.approx(member_weights(fitness, "rank", "mirrored"))
    raw = [member_weights(fitness, "raw", a) for a in ("signed", "mirrored")]
    assert [w[0] - w[1] for w in raw] == [2.0, 2.0]


def test_nes_divides_by_sigma_only_and_nes_group_by_each_groups_noise_scale():
    """EA4LLM eq. (14): θ += α/(Nσ) Σ wᵢεᵢ even where σ_g scales a group's noise; nes_group divides by σ·σ_g."""
    names = ("model.norm.weight", "model.layers.0.mlp.up_proj.weight")
    weights, alpha, sigma = [1.0, -2.0, 0.5, 0.0], 0.1, 0.02
    moved = {}
    for step in ("nes", "nes_group"):
        params = {n: torch.nn.Parameter(torch.zeros(8)) for n in names}
        pop = Population(params, 5, sigma_scale={names[0]: 0.5})
        cfg = ESConfig(population=4, sigma=sigma, alpha=alpha, step=step, group_sigma={"norm": 0.5})
        apply_update(pop, cfg, 3, weights, alpha, sigma)
        moved[step] = pop.master
    for n, group in zip(names, (0.5, 1.0)):
        eps = [tensor_noise(torch.zeros(8), 5, 3, m, n) for m in range(4)]
        step = alpha / 4 * sum(w * e for w, e in zip(weights, eps)) / sigma
        torch.testing.assert_close(moved["nes"][n], step, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(moved["nes_group"][n], step / group, rtol=1e-6, atol=1e-7)


def _arch_models():
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    shape = dict(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, tie_word_embeddings=False)
    return {
        "qwen2": Qwen2ForCausalLM(Qwen2Config(**shape)),
        "qwen3": Qwen3ForCausalLM(Qwen3Config(head_dim=8, **shape)),
        "llama": LlamaForCausalLM(LlamaConfig(**shape)),
    }


def test_groups_resolve_from_qwen2_qwen3_llama_names():
    expected = {
        "model.embed_tokens.weight": "emb", "lm_head.weight": "head", "model.norm.weight": "norm",
        "model.layers.0.input_layernorm.weight": "norm", "model.layers.0.post_attention_layernorm.weight": "norm",
        "model.layers.0.self_attn.q_proj.weight": "attn", "model.layers.0.self_attn.o_proj.weight": "attn",
        "model.layers.0.mlp.gate_proj.weight": "mlp", "model.layers.0.mlp.down_proj.weight": "mlp",
    }
    for arch, model in _arch_models().items():
        groups = {n: param_group(n) for n, _ in model.named_parameters()}
        for name, group in expected.items():
            assert groups[name] == group, (arch, name)
        assert set(groups.values()) == {"emb", "attn", "mlp", "norm", "head"}, arch
        if arch == "qwen2":
            assert groups["model.layers.0.self_attn.q_proj.bias"] == "attn"
        if arch == "qwen3":
            assert groups["model.layers.0.self_attn.q_norm.weight"] == "norm"
    # peft adapter names keep their module's group
    assert param_group("base_model.model.model.layers.3.mlp.up_proj.lora_B.default.weight") == "mlp"
    with pytest.raises(ValueError, match="cannot tell"):
        param_group("transformer.h.0.c_attn.weight")


def test_group_multipliers_scale_perturbation_and_step():
    model = _arch_models()["llama"]
    cfg = ESConfig(population=2, group_sigma={"attn": 3.0, "norm": 0.5}, group_alpha={"mlp": 4.0, "emb": 0.25})
    _, pop = build_population(model, cfg)
    theta0 = {n: t.clone() for n, t in pop.master.items()}
    sigma_g = {"attn": 3.0, "norm": 0.5}
    alpha_g = {"mlp": 4.0, "emb": 0.25}
    for name in pop.master:
        eps = tensor_noise(pop.master[name], cfg.seed, 1, 0, name)
        assert torch.equal(pop.perturbation(1, 0, name, 0.01), (0.01 * sigma_g.get(param_group(name), 1.0)) * eps)
    pop.update(1, [1.0, -1.0], alpha=0.1)
    for name, theta in pop.master.items():
        step = 0.1 / 2 * (tensor_noise(theta, cfg.seed, 1, 0, name) - tensor_noise(theta, cfg.seed, 1, 1, name))
        torch.testing.assert_close(theta - theta0[name], alpha_g.get(param_group(name), 1.0) * step,
                                   rtol=1e-5, atol=1e-7)


def test_step_decay_schedules():
    cfg = ESConfig(alpha=0.1, sigma=0.01, alpha_decay=0.5, alpha_decay_every=3, sigma_decay=0.9, sigma_decay_every=2)
    assert [cfg.alpha_at(t) for t in range(7)] == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]
    assert [cfg.sigma_at(t) for t in (0, 1, 2, 5)] == pytest.approx([0.01, 0.01, 0.009, 0.01 * 0.9**2])
    constant = ESConfig(alpha=0.1)
    assert {constant.alpha_at(t) for t in range(50)} == {0.1}


@pytest.mark.parametrize("bad, match", [
    ({"antithetic": "signed", "population": 5}, "even population"),
    ({"antithetic": "mirror"}, "antithetic"),
    ({"step": "adam"}, "step"),
    ({"fitness": "kl"}, "fitness"),
    ({"group_alpha": {"ffn": 2.0}}, "unknown group"),
    ({"group_sigma": {"attn": 0.0}}, "> 0"),
    ({"alpha_decay": 0.0}, "alpha_decay"),
    ({"sigma_decay_every": 0}, "sigma_decay_every"),
    ({"text_length": 1}, "text_length must be >= 2"),
    ({"lora": {"order": "AA"}}, "order"),
    ({"lora": {"rank": 4}}, "unknown es.lora option"),
    ({"backend": "sglang"}, "es.backend must be hf or vllm"),
    ({"backend": "vllm", "mode": "batched"}, "es.backend vllm evaluates members in place"),
    ({"backend": "vllm", "fitness": "loglik"}, "use mode inplace, fitness task and no lora"),
    ({"backend": "vllm", "lora": {}}, "use mode inplace, fitness task and no lora"),
    ({"vllm": {"gpu_memory_utilization": 0}}, r"vllm.gpu_memory_utilization must be in \(0, 1\]"),
    ({"vllm": {"max_model_len": 0}}, "vllm.max_model_len must be >= 1"),
    ({"vllm": {"swap_space": 4}}, r"unknown vllm option\(s\) \['swap_space'\]"),
    ({"vllm": {"kv_cache_memory_bytes": 0}}, "vllm.kv_cache_memory_bytes must be >= 1"),
])
def test_config_rejects_bad_options(bad, match):
    with pytest.raises(ValueError, match=match):
        ESConfig.from_dict(bad)


def _es_schema():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text(encoding="utf-8"))
    return schema["$defs"]["es"]


def test_schema_mirrors_the_config_dataclasses():
    props = _es_schema()["properties"]
    assert set(props) == {f.name for f in fields(ESConfig)}
    assert set(props["lora"]["properties"]) == {f.name for f in fields(LoRAConfig)}
    assert set(props["vllm"]["properties"]) == {f.name for f in fields(VllmOptions)}
    full = {"population": 8, "sigma": 0.01, "alpha": 0.005, "iterations": 3, "batch_size": None, "shaping": "rank",
            "step": "nes", "antithetic": "paired", "group_alpha": {"emb": 0.5}, "group_sigma": {"norm": 2.0},
            "alpha_decay": 0.5, "alpha_decay_every": 10, "sigma_decay": 0.9, "sigma_decay_every": 5,
            "fitness": "loglik", "loglik_average": "token", "text_length": 64, "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj"], "order": "BA",
                                          "normalize": True},
            "temperature": 0.0, "top_p": 1.0, "mode": "inplace", "rank": 2, "members_per_pass": None,
            "max_rollouts": 100, "max_tokens": None, "max_prompt_tokens": 500, "seed": 1, "generation_batch_size": 8,
            "checkpoint_every": 2, "master_device": "cpu", "theta0_device": "model", "backend": "hf",
            "vllm": {"gpu_memory_utilization": 0.7, "max_model_len": 2048, "enable_prefix_caching": False,
                     "enforce_eager": True, "kv_cache_memory_bytes": 1 << 30}}
    jsonschema.validate(full, _es_schema())
    assert ESConfig.from_dict(full).to_dict() == full
    for bad in ({"antithetic": "both"}, {"group_alpha": {"ffn": 1.0}}, {"lora": {"order": "AC"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, _es_schema())


def test_embedded_default_keeps_plain_es():
    from esft.config import load_config

    cfg = ESConfig.from_dict(load_config(REPO / "config" / "config.yaml", REPO / "config" / "schema.yaml")["es"])
    assert (cfg.step, cfg.antithetic, cfg.fitness, cfg.lora) == ("standard", "none", "task", None)
    assert cfg.group_alpha == cfg.group_sigma == {} and cfg.alpha_decay == cfg.sigma_decay == 1.0


def test_drift_is_exact_and_theta0_costs_the_model_dtype(tiny_model):
    """θ_0 is stored in bf16 for a bf16 model (exact: the master starts as its cast), drift in fp32."""
    from esft.methods.es.trainer import ESTrainer

    model = tiny_model.to(torch.bfloat16)
    trainer = ESTrainer(model, None, 1, ESConfig(population=4, sigma=0.01, alpha=1e-4, iterations=3, fitness="random"))
    start = {n: t.clone() for n, t in trainer.population.master.items()}
    assert all(t.dtype == torch.bfloat16 for t in trainer.drift.theta0.values())
    trainer.train()
    last = [d for d in trainer.drift.rows if d["iteration"] == 2]
    assert {d["parameter"] for d in last} == set(start)
    for d in last:
        expected = float(((trainer.population.master[d["parameter"]] - start[d["parameter"]]) ** 2).sum())
        assert d["drift_sq"] == pytest.approx(expected, rel=1e-6)
    assert trainer.records[-1]["drift_sq"] > 0
