"""Config validation: mistakes give one line naming the key and what is allowed (shipped configs: test_tasks_config)."""

from __future__ import annotations

import copy

import pytest
import yaml

from conftest import REPO
from esft.config import ConfigError, validate_config

SCHEMA = REPO / "config" / "schema.yaml"


@pytest.fixture()
def default():
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["es"].update(sigmaa=1), "config error: es: unknown key(s) 'sigmaa'; allowed: alpha,"),
        (lambda c: c["es"].update(sigma=-1), "config error: es.sigma = -1 is not allowed; allowed: number > 0"),
        (lambda c: c["es"].update(population="30"), "config error: es.population = '30' is not allowed; allowed: integer >= 2"),
        (lambda c: c["es"].update(shaping="softmax"), "config error: es.shaping = 'softmax' is not allowed; allowed: one of 'zscore', 'rank', 'raw'"),
        (lambda c: c.update(color="red"), "config error: <top level>: unknown key(s) 'color'; allowed: corpus, "),
        (lambda c: c["tasks"].update(bogus={}), "config error: tasks: unknown key 'bogus'; allowed: one of 'countdown',"),
        (lambda c: c["train"]["sequential"].append("mmlu"), "config error: train.sequential: task 'mmlu' is not under tasks"),
        (lambda c: c["train"]["methods"].append("ppo"),
         "config error: train.methods.3 = 'ppo' is not allowed; allowed: string matching ^(es|grpo|lbes|adamw)(_[a-z0-9]+)?$"),
        (lambda c: c["train"]["methods"].append("es_lora"),
         "config error: train.methods lists 'es_lora' but the config has no es_lora: section"),
        (lambda c: c.update(es_lora={"sigmaa": 1}), "config error: es_lora: unknown key(s) 'sigmaa'; allowed: alpha,"),
        (lambda c: c.update(es_lora={"population": 1}),
         "config error: es_lora.population = 1 is not allowed; allowed: integer >= 2"),
        (lambda c: (c["train"].update(methods=["es", "grpo"], processes={"grpo": 2}), c.update(grpo={})),
         "config error: train.processes.grpo = 2: grpo trains in one process"),
        (lambda c: (c["train"].update(methods=["es", "adamw"], processes={"adamw": 2}), c.update(adamw={})),
         "config error: train.processes.adamw = 2: adamw trains in one process"),
        (lambda c: (c["train"].update(methods=["adamw"]), c.update(adamw={"minibatches_of": "es"})),
         "config error: adamw.minibatches_of = 'es' is not allowed; allowed: a method in train.methods (adamw)"),
        (lambda c: c.update(adamw={"betas": [0.9, 1.0]}),
         "config error: adamw.betas.1 = 1.0 is not allowed; allowed: number >= 0 < 1"),
        (lambda c: c.update(adamw={"learning_rate": 1}), "config error: adamw: unknown key(s) 'learning_rate'; allowed: batch_size,"),
        (lambda c: c["train"].update(methods=["es"], processes={"lbes": 2}),
         "config error: train.processes.lbes: 'lbes' is not in train.methods"),
        (lambda c: c["es"].update(master_device="gpu"),
         "config error: es.master_device = 'gpu' is not allowed; allowed: one of 'model', 'cpu'"),
        (lambda c: c["runtime"].update(checkpoint_dtype="bfloat16"),
         "config error: runtime.checkpoint_dtype = 'bfloat16' is not allowed; allowed: one of 'float32'"),
        (lambda c: c.pop("grpo"), "config error: train.methods lists 'grpo' but the config has no grpo: section"),
        (lambda c: c.update(grpo={"learning_rate": 1e-5, "lr": 1}), "config error: grpo: unknown key(s) 'lr'; allowed: beta,"),
        (lambda c: c.update(grpo={"num_generations": 1}), "config error: grpo.num_generations = 1 is not allowed; allowed: integer >= 2"),
        (lambda c: c.update(grpo={"loss_type": "ppo"}), "config error: grpo.loss_type = 'ppo' is not allowed; allowed: one of 'grpo',"),
        (lambda c: c.update(grpo={"carry_optimizer": "yes"}), "config error: grpo.carry_optimizer = 'yes' is not allowed; allowed: boolean"),
        (lambda c: c.update(lbes={"k_var": 0}), "config error: lbes.k_var = 0 is not allowed; allowed: integer >= 1"),
        (lambda c: c.update(lbes={"topk": 2}), "config error: lbes: unknown key(s) 'topk'; allowed: alpha,"),
        (lambda c: c.update(lbes={"temperature": 0}), "config error: lbes.temperature = 0 is not allowed; allowed: number > 0"),
        (lambda c: c["train"].update(overrides={"math": {"lbes": {"n_samples": "8"}}}),
         "config error: train.overrides.math.lbes.n_samples = '8' is not allowed; allowed: integer >= 2"),
        (lambda c: c["runtime"].update(device="tpu"), "config error: runtime.device = 'tpu' is not allowed; allowed: string matching"),
        (lambda c: c.pop("es"), "config error: train.methods lists 'es' but the config has no es: section"),
        (lambda c: c["train"].update(per_method={"es": {"single": ["mmlu"]}}),
         "config error: train.per_method.es.single: task 'mmlu' is not under tasks"),
        (lambda c: c["train"].update(per_method={"es": {"sequential": [], "singel": []}}),
         "config error: train.per_method.es: unknown key(s) 'singel'; allowed: sequential, single"),
        (lambda c: c["tasks"]["math"].update(n_test=0), "config error: tasks.math.n_test = 0 is not allowed; allowed: integer >= 1"),
        (lambda c: c["evaluate"]["kl"].update(temperature=-1),
         "config error: evaluate.kl.temperature = -1 is not allowed; allowed: number >= 0"),
        (lambda c: c["evaluate"]["kl"].update(prompts=3), "config error: evaluate.kl: unknown key(s) 'prompts'; allowed: batch_size,"),
        (lambda c: c["es"].update(backend="sglang"),
         "config error: es.backend = 'sglang' is not allowed; allowed: one of 'hf', 'vllm'"),
        (lambda c: c["es"].update(vllm={"gpu_memory_utilization": 1.5}),
         "config error: es.vllm.gpu_memory_utilization = 1.5 is not allowed; allowed: number > 0 <= 1"),
        (lambda c: c["evaluate"].update(vllm={"tensor_parallel_size": 2}),
         "config error: evaluate.vllm: unknown key(s) 'tensor_parallel_size'; allowed: enable_prefix_caching, "
         "enforce_eager, gpu_memory_utilization, kv_cache_memory_bytes, max_model_len"),
        (lambda c: c["geometry"]["probe_holdout"].update(stages="first"),
         "config error: geometry.probe_holdout.stages = 'first' is not allowed; allowed: one of 'last', 'all'"),
        (lambda c: c["geometry"]["probe_holdout"].update(scales=[-1]),
         "config error: geometry.probe_holdout.scales.0 = -1 is not allowed; allowed: number >= 0"),
    ],
)
def test_errors_name_the_key_and_what_is_allowed(default, mutate, expected):
    config = copy.deepcopy(default)
    mutate(config)
    with pytest.raises(ConfigError) as info:
        validate_config(config, SCHEMA)
    message = str(info.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_valid_config_passes_unchanged(default):
    assert validate_config(copy.deepcopy(default), SCHEMA) == default


def test_kl_defaults_fill_a_missing_section_without_touching_the_schema(default):
    schema = yaml.safe_load(SCHEMA.read_text())
    config = copy.deepcopy(default)
    del config["evaluate"]["kl"]
    validate_config(config, schema)
    assert config["evaluate"]["kl"] == default["evaluate"]["kl"]
    config["evaluate"]["kl"]["seed"] = 5
    again = copy.deepcopy(default)
    del again["evaluate"]["kl"]
    assert validate_config(again, schema)["evaluate"]["kl"]["seed"] == 0


def test_inline_config_slices_are_json():
    """Rules pass slices as JSON; YAML 1.1 would read JSON's exponent floats (5e-07) as strings."""
    import json

    from esft.cli.args import _cfg

    assert _cfg(json.dumps({"alpha": 5e-7, "sigma": 1e-3})) == {"alpha": 5e-7, "sigma": 1e-3}


def test_unpinned_hub_revisions_are_named_at_validation(default, caplog):
    """Every hub model and dataset of the real configs is pinned to a commit sha except MATH (no public pin
    was found); `main` is reported at validation, and the offline configs read no hub revision at all."""
    from esft.config import load_config, unpinned_revisions

    schema = REPO / "config" / "schema.yaml"
    expected = {"paper": [("tasks.math.revision", "main")], "lbes": [], "es_lora": [], "ea4llm": []}
    for name, unpinned in expected.items():
        caplog.clear()
        with caplog.at_level("WARNING", logger="esft.config"):
            cfg = load_config(REPO / "config" / f"{name}.yaml", schema)
        assert unpinned_revisions(cfg) == unpinned, name
        assert ("tasks.math.revision = main" in caplog.text) == bool(unpinned)
        assert not unpinned_revisions(load_config([REPO / "config" / f"{name}.yaml",
                                                   REPO / "config" / "twins" / f"{name}.yaml"], schema))
    assert unpinned_revisions(default) == []
    hub = copy.deepcopy(default)
    hub["model"] = {"source": "Qwen/Qwen3-4B-Instruct-2507", "revision": "main"}
    hub["holdout"]["benchmarks"]["mmlu"] = {"source": "hf", "dataset": "cais/mmlu", "revision": None}
    hub["holdout"]["benchmarks"]["ifeval"] = {"source": "hf", "dataset": "parquet", "data_files": "x.parquet"}
    assert unpinned_revisions(hub) == [("model.revision", "main"), ("holdout.benchmarks.mmlu.revision", None)]
