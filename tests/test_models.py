"""The embedded tiny model: offline, deterministic from its seed, HF-loadable, with a working chat template."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from esft.errors import EsftError
from esft.models import TinyModelConfig, build_base_model, load_model
from esft.rollout import encode_prompts, generate

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
         "num_key_value_heads": 1, "head_dim": 16, "warmstart_steps": 5, "warmstart_batch_size": 4,
         "warmstart_rows_per_task": 20}


def test_tokenizer_round_trips_text_and_renders_chat(tokenizer):
    text = "Make 24 from 3 5 8 with \\boxed{3*8}\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_base_model_is_deterministic_and_loadable(tmp_path):
    a = build_base_model("tiny", tmp_path / "a", SMALL)
    b = build_base_model("tiny", tmp_path / "b", SMALL)
    assert a["warmstart_final_loss"] == b["warmstart_final_loss"]
    model_a, tok = load_model(tmp_path / "a")
    model_b, _ = load_model(tmp_path / "b")
    for (n, p), (_, q) in zip(model_a.named_parameters(), model_b.named_parameters()):
        assert torch.equal(p, q), n
    # a different seed gives a different model
    build_base_model("tiny", tmp_path / "c", {**SMALL, "seed": 1})
    model_c, _ = load_model(tmp_path / "c")
    assert not torch.equal(model_c.model.embed_tokens.weight, model_a.model.embed_tokens.weight)
    # checkpoints with standard names load on top of the base
    state = {n: p.detach() + 1.0 for n, p in model_a.named_parameters()}
    save_file(state, str(tmp_path / "w.safetensors"))
    model_w, _ = load_model(tmp_path / "a", tmp_path / "w.safetensors")
    assert torch.equal(model_w.model.embed_tokens.weight, state["model.embed_tokens.weight"])
    ids = encode_prompts(tok, [[{"role": "user", "content": "What is 2 + 2?"}]])
    gens = generate(model_a, tok, ids, max_new_tokens=5)
    assert len(gens.texts) == 1 and 1 <= gens.n_tokens[0] <= 5


def test_warmstart_never_sees_held_out_prompts():
    from esft.models import warmstart_examples

    cfg = TinyModelConfig(warmstart_rows_per_task=200, warmstart_tasks=["math"])
    all_prompts = {m[-1]["content"] for m, _ in warmstart_examples(cfg, set())}
    held_out = set(sorted(all_prompts)[:20])
    kept = {m[-1]["content"] for m, _ in warmstart_examples(cfg, held_out)}
    assert kept and not kept & held_out


def test_warmstart_graded_share_mixes_plain_answers():
    from esft.models import warmstart_examples

    graded = TinyModelConfig(warmstart_rows_per_task=300, warmstart_tasks=["boolq"])
    mixed = TinyModelConfig(warmstart_rows_per_task=300, warmstart_tasks=["boolq"], warmstart_graded_share=0.3)
    graded_forms = {"\\boxed{yes}", "\\boxed{no}"}
    assert all(a in graded_forms for _, a in warmstart_examples(graded, set()))
    answers = [a for _, a in warmstart_examples(mixed, set())]
    share = sum(a in graded_forms for a in answers) / len(answers)
    assert 0.2 < share < 0.4
    # the prompts drawn do not depend on the share
    assert [m for m, _ in warmstart_examples(graded, set())] == [m for m, _ in warmstart_examples(mixed, set())]


def test_warmstart_knowledge_rows_are_graded_and_leave_task_rows_alone():
    from esft.models import warmstart_examples
    from esft.tasks.knowledge import part_of

    plain = TinyModelConfig(warmstart_rows_per_task=100, warmstart_tasks=["math"])
    knowing = TinyModelConfig(warmstart_rows_per_task=100, warmstart_tasks=["math"], warmstart_knowledge_rows=50)
    base, more = warmstart_examples(plain, set()), warmstart_examples(knowing, set())
    extra = [(m, a) for m, a in more if "Answer with the letter." in m[-1]["content"]]
    assert len(extra) == 50 and len(more) == len(base) + 50
    assert all(a in "ABCD" and len(a) == 1 and part_of(m[-1]["content"]) == "warmstart" for m, a in extra)
    # the task rows (and their order among themselves) do not depend on the knowledge rows
    assert sorted(map(repr, base)) == sorted(repr(e) for e in more if e not in extra)


def test_warmstart_cosine_schedule_ends_at_zero_and_constant_is_unchanged(tmp_path):
    """Cosine and constant warm-starts share their first steps' rates; only cosine's decay to 0."""
    from esft.models import _decay

    cosine = TinyModelConfig(warmstart_steps=100, warmstart_schedule="cosine")
    assert _decay(cosine, 0) == 1.0 and _decay(cosine, 50) == pytest.approx(0.5) and _decay(cosine, 100) == 0.0
    assert _decay(TinyModelConfig(warmstart_steps=100), 100) == 1.0
    with pytest.raises(EsftError, match="warmstart_schedule"):
        _decay(TinyModelConfig(warmstart_schedule="linear"), 1)
    a = build_base_model("tiny", tmp_path / "a", SMALL)
    b = build_base_model("tiny", tmp_path / "b", {**SMALL, "warmstart_schedule": "cosine"})
    assert a["warmstart_final_loss"] != b["warmstart_final_loss"]
