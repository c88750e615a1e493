"""Holdout benchmarks through lm-eval: our generative MMLU task, lm-eval's IFEval scoring with punkt_tab
written offline, the `esft holdout` stage on a micro model, unreachable datasets and the response cache."""

from __future__ import annotations

import importlib.util
import json
import logging

import pandas as pd
import pytest

from esft.cli import main
from esft.errors import EsftError
from esft.evaluate.holdout import RESOURCES, collect_holdout, evaluate_lm, holdout_matrix, run_holdout
from esft.evaluate.holdout_data import ifeval_rows, mmlu_rows, write_holdout_data
from esft.evaluate.punkt import use_nltk_data
from esft.io import read_json, write_jsonl

SHORT = {"source": "synthetic", "n": 6, "seed": 1, "prompt_style": "short", "max_new_tokens": 8}


class FixedLM:
    """An lm-eval LM whose completion of each request is `respond(doc)`; records the prompts it saw."""

    def __new__(cls, respond):
        from lm_eval.api.model import LM

        class _Fixed(LM):
            def __init__(self):
                super().__init__()
                self.prompts: list[str] = []

            def generate_until(self, requests, disable_tqdm=False):
                self.prompts += [r.args[0] for r in requests]
                return [respond(r.doc) for r in requests]

            def loglikelihood(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def loglikelihood_rolling(self, requests, disable_tqdm=False):
                raise NotImplementedError

            def apply_chat_template(self, chat_history, add_generation_prompt=True):
                return "".join(f"<{m['role']}>{m['content']}" for m in chat_history) + "<assistant>"

            def chat_template(self, chat_template=False):
                return "fixed"

            @property
            def tokenizer_name(self):
                return "fixed"

        return _Fixed()


def test_mmlu_cascade_through_our_lm_eval_task(tmp_path):
    """Fixed completions graded by the task YAML: JSON form, `answer: X`, last standalone letter,
    an article "A" that is no answer, and nothing to extract."""
    rows = mmlu_rows(6, seed=3)
    data = tmp_path / "mmlu.jsonl"
    write_jsonl(data, rows)
    letters = "ABCD"

    def respond(doc):
        right, wrong = letters[doc["answer"]], letters[(doc["answer"] + 1) % 4]
        i = rows.index(doc)
        return [f'{{"answer":"{right}"}}', f"Thinking. The answer: {right}", f"I pick {right}.",
                f'{{"answer":"{wrong}"}} or maybe {right}', "A number is small.", "no idea"][i]

    lm = FixedLM(respond)
    record, samples = evaluate_lm(lm, "mmlu", {**SHORT, "n": 6}, data=data)
    by_doc = {s["doc_id"]: s for s in sorted(samples, key=lambda s: s["doc_id"])}
    assert [by_doc[i]["acc"] for i in range(6)] == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert [by_doc[i]["answered"] for i in range(6)] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert record["metrics"]["acc"] == pytest.approx(0.5) and record["n"] == 6
    assert record["task_versions"] == {"esft_mmlu_gen_short": 1.0} and record["use_cache"] is None
    # the stand-in knowledge questions' short prompt, rendered through the chat template
    assert lm.prompts[0].startswith("<user>") and lm.prompts[0].endswith("Answer with the letter.<assistant>")
    paper, _ = evaluate_lm(FixedLM(respond), "mmlu", {**SHORT, "prompt_style": "paper"}, data=data)
    assert paper["task"] == "esft_mmlu_gen" and paper["metrics"]["acc"] == pytest.approx(0.5)


def test_ifeval_scoring_through_lm_eval_with_offline_punkt(tmp_path, nltk_data):
    """lm-eval's own IFEval checks: strict vs loose (first line, asterisks), prompt vs instruction
    level, and sentence counting that needs punkt_tab's abbreviations ("Dr." ends no sentence)."""
    rows = [
        {"key": 1, "prompt": "p1", "instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]},
        {"key": 2, "prompt": "p2", "instruction_id_list": ["punctuation:no_comma", "keywords:existence"],
         "kwargs": [{}, {"keywords": ["sun"]}]},
        {"key": 3, "prompt": "p3", "instruction_id_list": ["length_constraints:number_sentences"],
         "kwargs": [{"relation": "less than", "num_sentences": 3}]},
    ]
    responses = {
        1: "Sure:\nthe sea is very calm and the sky above it is a clear and gentle blue today",  # loose only
        2: "the sun, the sky",  # keyword yes, comma no
        3: "Dr. Smith went home. He was tired.",  # two sentences with punkt's abbreviations
    }
    data = tmp_path / "ifeval.jsonl"
    write_jsonl(data, rows)
    record, samples = evaluate_lm(FixedLM(lambda doc: responses[doc["key"]]), "ifeval",
                                  {"source": "synthetic", "n": 3, "seed": 0}, data=data)
    m = record["metrics"]
    assert m["prompt_level_strict_acc"] == pytest.approx(1 / 3)
    assert m["prompt_level_loose_acc"] == pytest.approx(2 / 3)
    assert m["inst_level_strict_acc"] == pytest.approx(2 / 4)
    assert m["inst_level_loose_acc"] == pytest.approx(3 / 4)
    assert record["task_versions"] == {"ifeval": 4.0}
    assert {s["doc_id"]: s["inst_level_strict_acc"] for s in samples} == {0: [False], 1: [False, True], 2: [True]}


def test_stand_in_rows_fit_lm_eval_checkers(tmp_path, nltk_data):
    """Every generated IFEval instruction is one lm-eval knows, with kwargs its checker accepts."""
    from lm_eval.tasks.ifeval.utils import process_results

    for row in ifeval_rows(40, seed=5):
        out = process_results(row, ["a short reply"])
        assert len(out["inst_level_strict_acc"]) == len(row["instruction_id_list"])
    rows = mmlu_rows(30, seed=5)
    assert len({(r["question"], *r["choices"]) for r in rows}) == 30
    assert all(len(r["choices"]) == 4 and r["answer"] in range(4) for r in rows)
    write_holdout_data("mmlu", {"n": 5, "seed": 2}, tmp_path / "m.jsonl")
    assert read_json(tmp_path / "m.manifest.json")["n"] == 5
    assert (tmp_path / "m.jsonl").read_bytes() == write_holdout_data("mmlu", {"n": 5, "seed": 2}, tmp_path / "m2.jsonl").read_bytes()


def test_no_holdout_item_is_a_warmstart_prompt():
    from esft.models import TinyModelConfig, warmstart_examples
    from esft.tasks.knowledge import short_prompt

    cfg = TinyModelConfig(warmstart_rows_per_task=300, warmstart_knowledge_rows=2000)
    seen = {m[-1]["content"] for m, _ in warmstart_examples(cfg, set())}
    assert sum("Answer with the letter." in p for p in seen) == 2000
    assert not {short_prompt(r["question"], r["choices"]) for r in mmlu_rows(500, 21)} & seen
    assert not {r["prompt"] for r in ifeval_rows(32, 22)} & seen


def test_knowledge_questions_split_by_prompt_and_graded_by_the_mmlu_grader():
    """Warm-start and holdout halves never share a prompt; the short prompt's bare-letter answer is graded."""
    import random

    from esft.tasks.knowledge import CATEGORIES, knowledge_rows, part_of, short_prompt

    spec = importlib.util.spec_from_file_location("esft_lm_eval_utils", RESOURCES / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    hold = knowledge_rows(200, random.Random(1), "holdout")
    warm = knowledge_rows(200, random.Random(1), "warmstart")
    prompts = {short_prompt(r["question"], r["choices"]) for r in hold}
    assert len(prompts) == 200 and not prompts & {short_prompt(r["question"], r["choices"]) for r in warm}
    assert all(part_of(p) == "holdout" for p in prompts)
    for r in hold[:20]:
        subject = r["subject"]
        assert r["choices"][r["answer"]] in CATEGORIES[subject]
        assert sum(c in CATEGORIES[subject] for c in r["choices"]) == 1
        assert utils.short_prompt(r).endswith("Answer with the letter.")
        right, wrong = "ABCD"[r["answer"]], "ABCD"[(r["answer"] + 1) % 4]
        assert utils.process_results(r, [right]) == {"acc": 1.0, "answered": 1.0}
        assert utils.process_results(r, [wrong]) == {"acc": 0.0, "answered": 1.0}
        assert utils.process_results(r, ["a cat"]) == {"acc": 0.0, "answered": 0.0}
    assert knowledge_rows(0, random.Random(1), "holdout") == []
    with pytest.raises(EsftError, match="part must be"):
        knowledge_rows(3, random.Random(1), "train")


def test_punkt_tab_written_offline_is_nltks_english_model(nltk_data):
    import nltk

    assert nltk.data.find("tokenizers/punkt_tab/english/")
    tokenizer = nltk.data.load("nltk:tokenizers/punkt/english.pickle")  # what lm-eval's IFEval loads
    assert tokenizer.tokenize("Mr. Brown met Dr. Smith at 5 p.m. on Jan. 3. It rained.") == [
        "Mr. Brown met Dr. Smith at 5 p.m. on Jan. 3.", "It rained."]
    abbrevs = (nltk_data / "tokenizers/punkt_tab/english/abbrev_types.txt").read_text().split("\n")
    assert len(abbrevs) == 156 and {"dr", "mr", "u.s.a", "jan"} <= set(abbrevs)


def test_missing_punkt_tab_is_one_clear_error(tmp_path):
    with pytest.raises(EsftError, match="esft nltk-data --out"):
        use_nltk_data(tmp_path / "empty")


@pytest.fixture(scope="module")
def micro_base(tmp_path_factory):
    from esft.models import build_base_model

    out = tmp_path_factory.mktemp("base")
    build_base_model("tiny", out, {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
                                   "warmstart_steps": 0})
    return out


def test_holdout_stage_writes_records_csv_and_table(tmp_path, micro_base, nltk_data):
    cfgs = {"mmlu": SHORT, "ifeval": {"source": "synthetic", "n": 4, "seed": 2, "max_new_tokens": 8}}
    records = {}
    for bench, cfg in cfgs.items():
        main(["holdout-data", "--benchmark", bench, "--cfg", json.dumps(cfg), "--out", str(tmp_path / f"{bench}.jsonl")])
        out = tmp_path / "holdout" / "base" / f"{bench}.json"
        main(["holdout", "--base", str(micro_base), "--benchmark", bench, "--cfg", json.dumps(cfg),
              "--data", str(tmp_path / f"{bench}.jsonl"), "--nltk-data", str(nltk_data), "--batch-size", "4",
              "--out", str(out)])
        record = read_json(out)
        assert record["lm_eval_version"] and record["n"] == cfg["n"] and record["seeds"]["langdetect_seed"] == 0
        assert len((tmp_path / "holdout" / "base" / f"{bench}.samples.jsonl").read_text().splitlines()) == cfg["n"]
        records[f"base/{bench}"] = out
        records[f"es/sequential/1-chemistry/{bench}"] = out
    assert set(read_json(records["base/ifeval"])["metrics"]) >= {
        "prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc"}
    assert read_json(records["base/ifeval"])["punkt_tab"]["sha256_sorted_lines"]
    main(["collect-holdout", "--results", *(f"{k}={v}" for k, v in records.items()), "--out", str(tmp_path / "h.csv")])
    tidy = pd.read_csv(tmp_path / "h.csv")
    assert list(tidy.columns) == ["checkpoint", "seed", "method", "schedule", "stage", "trained_task", "benchmark",
                                  "metric", "value", "n"]
    assert set(tidy["metric"]) == {"acc", "answered", "prompt_level_strict_acc", "inst_level_strict_acc",
                                   "prompt_level_loose_acc", "inst_level_loose_acc"}
    main(["table", "holdout", "--input", str(tmp_path / "h.csv"), "--csv", str(tmp_path / "t.csv"),
          "--md", str(tmp_path / "t.md"), "--tex", str(tmp_path / "t.tex")])
    table = pd.read_csv(tmp_path / "t.csv")
    assert "\\toprule" in (tmp_path / "t.tex").read_text()  # Table 2 in booktabs LaTeX too
    assert list(table.columns[5:7]) == ["mmlu acc", "ifeval prompt_level_strict_acc"]  # after the keys and seed
    assert list(table["method"]) == ["base", "es"]
    assert holdout_matrix(collect_holdout(records)).shape == (2, 5 + 6)


def test_unreachable_dataset_is_one_clear_message(tmp_path, micro_base, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = {"source": "hf", "dataset": "cais/mmlu", "config_name": "all", "revision": "main"}
    with pytest.raises(SystemExit) as exit_info, caplog.at_level(logging.ERROR):
        main(["holdout", "--base", str(micro_base), "--benchmark", "mmlu", "--cfg", json.dumps(cfg),
              "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 1
    message = caplog.records[-1].getMessage()
    assert "'cais/mmlu'" in message and "revision main" in message and "dataset: parquet" in message
    assert "Traceback" not in message and not (tmp_path / "x.json").exists()
    with pytest.raises(EsftError, match="data_files '/nonexistent.parquet' cannot be loaded"):
        evaluate_lm(FixedLM(lambda doc: ""), "mmlu", {"source": "hf", "dataset": "parquet",
                                                      "data_files": "/nonexistent.parquet"})


HUB = {"mmlu": {"source": "hf", "dataset": "cais/mmlu", "config_name": "all", "revision": "c" * 40,
               "prompt_style": "short", "max_new_tokens": 8},
       "ifeval": {"source": "hf", "dataset": "google/IFEval", "revision": "9" * 40, "max_new_tokens": 8}}


def test_hub_datasets_are_snapshotted_once_and_evaluated_from_disk(tmp_path, micro_base, nltk_data, monkeypatch):
    """`esft holdout-snapshot` saves the evaluated split at the configured revision (the hub loader is
    replaced by stand-in rows in the real schemas: no network); `esft holdout --data` reads only that
    copy, records what it is of, and refuses a snapshot of another revision."""
    import datasets

    calls = []

    def load_dataset(path, name=None, split=None, revision=None, **kwargs):
        calls.append((path, name, split, revision, kwargs))
        rows = mmlu_rows(5, seed=4) if path == "cais/mmlu" else ifeval_rows(4, seed=4)
        return datasets.Dataset.from_list(rows)

    real_load_dataset = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    for bench, cfg in HUB.items():
        snapshot = tmp_path / "holdout" / "data" / bench
        main(["holdout-snapshot", "--benchmark", bench, "--cfg", json.dumps(cfg), "--out", str(snapshot)])
        manifest = read_json(snapshot / "manifest.json")
        split = {"mmlu": "test", "ifeval": "train"}[bench]
        assert calls[-1] == (cfg["dataset"], cfg.get("config_name"), split, cfg["revision"], {})  # token: env only
        assert manifest["revision"] == cfg["revision"] and manifest["split"] == split
        assert manifest["rows"] == len(pd.read_parquet(snapshot / f"{split}.parquet")) == {"mmlu": 5, "ifeval": 4}[bench]

    def local_only(path, *args, **kwargs):  # the evaluating job reads the parquet file, never a hub id
        assert path == "parquet", path
        return real_load_dataset(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", local_only)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for bench, cfg in HUB.items():
        out = tmp_path / "holdout" / "base" / f"{bench}.json"
        main(["holdout", "--base", str(micro_base), "--benchmark", bench, "--cfg", json.dumps(cfg), "--data",
              str(tmp_path / "holdout" / "data" / bench), "--nltk-data", str(nltk_data), "--batch-size", "4",
              "--out", str(out)])
        record = read_json(out)
        assert record["n"] == {"mmlu": 5, "ifeval": 4}[bench] and record["snapshot"]["revision"] == cfg["revision"]
        assert record["dataset"]["dataset_path"] == "parquet"
    with pytest.raises(EsftError, match="the config asks for .*rerun `esft holdout-snapshot`"):
        evaluate_lm(FixedLM(lambda doc: ""), "mmlu", {**HUB["mmlu"], "revision": "main"},
                    data=tmp_path / "holdout" / "data" / "mmlu")


def test_loglikelihood_mmlu_is_lm_evals_own_group_only():
    with pytest.raises(EsftError, match="lm-eval's own `mmlu` group"):
        evaluate_lm(FixedLM(lambda doc: ""), "mmlu", {"source": "synthetic", "n": 2, "seed": 0,
                                                      "protocol": "loglikelihood"})


def test_response_cache_is_never_reused_across_checkpoints(tmp_path, tokenizer, nltk_data):
    """Two models in one process: each gets its own answers (lm-eval's response cache would key them
    by prompt alone), in either order, and nothing is cached on disk."""
    import torch

    from esft.models import TinyModelConfig, build_tiny_model

    cfg = TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=16, warmstart_steps=0)
    a, b = build_tiny_model(cfg, tokenizer).eval(), build_tiny_model(cfg, tokenizer).eval()
    with torch.no_grad():  # b's logits are a's negated: its greedy tokens differ, its prompts do not
        b.model.norm.weight.neg_()

    data = write_holdout_data("mmlu", SHORT, tmp_path / "mmlu.jsonl")

    def responses(m):
        _, samples = run_holdout(m, tokenizer, "mmlu", SHORT, data=data, batch_size=3)
        return [s["response"] for s in sorted(samples, key=lambda s: s["doc_id"])]

    first_a, first_b, again_a = responses(a), responses(b), responses(a)
    assert first_a == again_a and first_a != first_b
    assert not list(tmp_path.rglob("*.db"))
