"""benchmarks/base_knowledge.py: the graded form's opening is forced, and an ungraded warm-start form of the
right answer counts as known while it scores 0 as the model's own answer."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from esft.io import write_jsonl
from esft.rollout import Generations

ROWS = [{"problem": "What is 23 + 5?", "answer": "28"}, {"problem": "What is 47 - 4?", "answer": "43"},
        {"problem": "What is 61 + 2?", "answer": "63"}]


def test_known_counts_ungraded_forms_after_the_forced_opening(monkeypatch, tmp_path, tiny_model, tokenizer):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import base_knowledge

    opening = tokenizer("\\boxed{", add_special_tokens=False)["input_ids"]
    seen = []

    def fake_generate(model, tok, prompts, max_new_tokens, batch_size):
        forced = prompts[0][-len(opening):] == opening
        seen.append(forced)
        # own answers: the plain form (scores 0); forced: the plain form's rest, a graded answer, a wrong one
        texts = ["= 28}", "43}", "about 12}"] if forced else ["\\boxed{= 28}", "\\boxed{43}", "\\boxed{about 63}"]
        return Generations(texts=texts, ids=[[0]] * 3, n_tokens=[1] * 3)

    monkeypatch.setattr(base_knowledge, "generate", fake_generate)
    write_jsonl(tmp_path / "test.jsonl", ROWS)
    out = base_knowledge.known_answers(tiny_model, tokenizer, "math", tmp_path / "test.jsonl", 8)
    assert seen == [False, True]
    assert out["forced_prefix"] == "\\boxed{" and out["n"] == 3
    assert out["accuracy"] == pytest.approx(1 / 3)   # only "\boxed{43}" is graded right
    assert out["known"] == pytest.approx(2 / 3)      # "\boxed{= 28}" (ungraded, right) and "\boxed{43}"; not 12
    json.dumps(out)
