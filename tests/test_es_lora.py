"""ES over LoRA adapters: A and B evolve in alternating phases, never together; merged export."""

from __future__ import annotations

import copy

import pytest
import torch

from esft.methods.es import ESConfig
from esft.methods.es.config import LoRAConfig
from esft.methods.es.fitness import CorpusFitness
from esft.methods.es.lora import wrap_lora
from esft.methods.es.trainer import ESTrainer
from esft.models import load_weights

TEXTS = ["abcabcabc", "cabcab"]


def _cfg(**lora):
    spec = {"r": 4, "alpha": 8.0, "target_modules": ("q_proj", "v_proj", "down_proj"), "order": "BA", **lora}
    return ESConfig(population=6, sigma=0.05, alpha=0.02, iterations=4, fitness="loglik", lora=LoRAConfig(**spec))


def test_adapters_follow_the_config_and_a_is_seeded(tiny_model):
    wrapped = wrap_lora(copy.deepcopy(tiny_model), _cfg().lora, seed=0)
    trainable = {n: p for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj", "down_proj"}
    a = wrapped.base_model.model.model.layers[0].self_attn.q_proj
    assert a.lora_A["default"].weight.shape[0] == 4 and a.scaling["default"] == 2.0
    assert torch.count_nonzero(a.lora_B["default"].weight) == 0
    again = wrap_lora(copy.deepcopy(tiny_model), _cfg().lora, seed=0)
    other = wrap_lora(copy.deepcopy(tiny_model), _cfg().lora, seed=1)
    for (n, p), (_, q), (_, r) in zip(wrapped.named_parameters(), again.named_parameters(), other.named_parameters()):
        assert torch.equal(p, q), n
        if ".lora_A." in n:
            assert not torch.equal(p, r), n


@pytest.mark.parametrize("order", ["BA", "AB"])
def test_phases_alternate_and_never_move_both(tiny_model, tokenizer, order):
    cfg = _cfg(order=order)
    trainer = ESTrainer(tiny_model, CorpusFitness(TEXTS, tokenizer, 8), len(TEXTS), cfg)
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    seen = []

    def perturbed(model, indices, member):  # which adapter kinds differ from θ while a member is live
        live = dict(model.named_parameters())
        seen.append({n.split(".lora_")[1][0] for n, t in trainer.population.master.items() if not torch.equal(live[n], t)})
        return 0.0, 0

    trainer.evaluator.local.fitness = perturbed  # the InplaceEvaluator inside the rank-sharding wrapper
    for it in range(4):
        before = {n: t.clone() for n, t in trainer.population.master.items()}
        seen.clear()
        trainer.population.update(it, [1.0, -1.0, 0.5, 0.0, -0.5, 2.0], 0.1)  # a step of this phase
        trainer.evaluator(it, range(cfg.population), 0.05, [0])
        phase = order[it % 2]
        assert len(seen) == cfg.population, "the recording fitness must see every member"
        assert all(s == {phase} for s in seen), (it, seen)
        moved = {n.split(".lora_")[1][0] for n, t in trainer.population.master.items() if not torch.equal(t, before[n])}
        assert moved == {phase}
    for n, p in trainer.model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n


def test_merged_export_is_hf_loadable_and_matches_the_adapted_model(tiny_model, tokenizer, tmp_path):
    plain = copy.deepcopy(tiny_model)
    cfg = _cfg()
    trainer = ESTrainer(tiny_model, CorpusFitness(TEXTS, tokenizer, 8), len(TEXTS), cfg)
    trainer.train()
    assert any(torch.count_nonzero(t) for n, t in trainer.population.master.items() if ".lora_B." in n)
    trainer.write_outputs(tmp_path)
    load_weights(plain, tmp_path / "weights.safetensors")  # standard names, every parameter present
    ids = torch.tensor([tokenizer("abcab", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, trainer.model(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-5)
    assert sorted(r["phase"] for r in trainer.records) == ["A", "A", "B", "B"]


def test_normalized_lora_step_has_rms_alpha(tiny_model, tokenizer):
    cfg = _cfg(normalize=True)
    trainer = ESTrainer(tiny_model, CorpusFitness(TEXTS, tokenizer, 8), len(TEXTS), cfg)
    before = {n: t.clone() for n, t in trainer.population.master.items()}
    trainer.step(0)
    for n, t in trainer.population.master.items():
        rms = float((t - before[n]).pow(2).mean().sqrt())
        assert rms == pytest.approx(cfg.alpha, rel=1e-4) if ".lora_B." in n else rms == 0.0


def test_embedding_targets_are_refused(tiny_model):
    from esft.errors import EsftError

    cfg = _cfg(target_modules=("q_proj", "embed_tokens"))
    with pytest.raises(EsftError, match="only linear target modules"):
        ESTrainer(tiny_model, None, 1, cfg)
