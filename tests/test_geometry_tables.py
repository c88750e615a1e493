"""Update norms and the accuracy table, on hand-made inputs with known answers."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from esft.evaluate.accuracy import collect_accuracy
from esft.geometry.norms import update_norms
from esft.io import write_json
from esft.params import param_group
from esft.plots.tables import accuracy_matrix


def test_update_norms_total_and_per_group(tmp_path):
    theta0 = {"model.embed_tokens.weight": torch.zeros(2, 2), "model.layers.0.mlp.up_proj.weight": torch.ones(3),
              "model.norm.weight": torch.ones(1)}
    moved = {"model.embed_tokens.weight": torch.tensor([[3.0, 0.0], [0.0, 0.0]]),
             "model.layers.0.mlp.up_proj.weight": torch.tensor([1.0, 1.0, 5.0]), "model.norm.weight": torch.ones(1)}
    save_file(moved, str(tmp_path / "w.safetensors"))
    row = update_norms(theta0, {"ckpt": tmp_path / "w.safetensors"}).iloc[0]
    assert row["update_norm"] == pytest.approx(5.0)
    assert row["update_norm_emb"] == pytest.approx(3.0)
    assert row["update_norm_mlp"] == pytest.approx(4.0)
    assert row["update_norm_norm"] == 0.0
    assert row["relative_norm"] == pytest.approx(5.0 / math.sqrt(4.0))


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("model.embed_tokens.weight", "emb"),
        ("lm_head.weight", "head"),
        ("model.layers.3.self_attn.q_proj.weight", "attn"),
        ("model.layers.3.self_attn.q_norm.weight", "norm"),
        ("model.layers.3.mlp.gate_proj.weight", "mlp"),
        ("model.layers.3.post_attention_layernorm.weight", "norm"),
        ("model.norm.weight", "norm"),
        ("model.layers.0.self_attn.o_proj.bias", "attn"),
    ],
)
def test_param_groups_of_qwen_and_llama_names(name, group):
    assert param_group(name) == group


def test_unknown_parameter_group_is_an_error():
    with pytest.raises(ValueError, match="cannot tell the group"):
        param_group("vision_tower.patch.weight")


def test_accuracy_matrix_orders_base_first(tmp_path):
    files = {}
    for label, acc in [("es/sequential/2-math", 0.5), ("base", 0.1), ("es/sequential/1-countdown", 0.3)]:
        write_json(tmp_path / f"{label.replace('/', '_')}.json", {"math": {"accuracy": acc, "n": 10, "tokens": 40},
                                                                 "countdown": {"accuracy": acc / 2, "n": 10, "tokens": 50}})
        files[label] = tmp_path / f"{label.replace('/', '_')}.json"
    long = collect_accuracy(files)
    assert list(long.columns) == ["checkpoint", "seed", "method", "schedule", "stage", "trained_task", "eval_task",
                                  "accuracy", "n", "n_tokens"]
    assert long["seed"].isna().all()  # labels without seed-S/
    assert set(long["n_tokens"]) == {40, 50}
    wide = accuracy_matrix(long)
    assert list(wide["stage"]) == [0, 1, 2]
    assert list(wide["trained_task"]) == ["-", "countdown", "math"]
    assert list(wide["math"]) == [0.1, 0.3, 0.5]
    assert isinstance(wide, pd.DataFrame) and set(wide.columns) >= {"countdown", "math"}
