"""What does a base model know, apart from the graded format? Per task, two greedy accuracies on the test split.

- `accuracy`: the completion as the model writes it, graded (what `tables/accuracy.md` reports for `base`);
- `known`: the completion after the graded form's opening is forced (the common prefix of the task's graded
  answers: `\\boxed{`, `{"answer":"`), counted right when it is the right answer in the graded form or in any
  of the task's ungraded warm-start forms (`\\boxed{= 12}`, `\\boxed{Yes, it is.}`).

`known` bounds what reward can teach by format alone: a stand-in whose `known` is close to its `accuracy`
has no room for a ten-point gain. One JSON line per task:

    python benchmarks/base_knowledge.py --base results/default/model/base --data results/default/data
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from esft.models import load_model
from esft.rollout import encode_prompts, generate
from esft.tasks import get_task, read_rows


def known_answers(model, tokenizer, task_name: str, test_file: Path, max_new_tokens: int) -> dict[str, float]:
    task = get_task(task_name)
    rows = read_rows(task, test_file)
    prompts = encode_prompts(tokenizer, [task.messages(r) for r in rows])
    free = generate(model, tokenizer, prompts, max_new_tokens, len(prompts)).texts
    prefix = os.path.commonprefix([task.reference(r) for r in rows])
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    forced = generate(model, tokenizer, [p + prefix_ids for p in prompts], max_new_tokens, len(prompts)).texts
    known = [task.score(prefix + text, row) == 1.0 or (prefix + text).strip() in task.plain_answers(row)
             for text, row in zip(forced, rows)]
    return {"accuracy": sum(task.score(t, r) for t, r in zip(free, rows)) / len(rows),
            "known": sum(known) / len(rows), "forced_prefix": prefix, "n": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="base-model directory (results/<exp>/model/base)")
    parser.add_argument("--data", required=True, type=Path, help="prepared data (results/<exp>/data)")
    parser.add_argument("--tasks", nargs="+", default=["countdown", "math", "chemistry", "boolq"])
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, tokenizer = load_model(args.base)
    for name in args.tasks:
        print(json.dumps({"task": name, **known_answers(model, tokenizer, name, args.data / name / "test.jsonl",
                                                         args.max_new_tokens)}), flush=True)


if __name__ == "__main__":
    main()
