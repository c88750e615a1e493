"""Every stage command stops on bad input with one line naming the input and what was expected.

Missing paths, garbage checkpoints, config slices the schema rejects and rows of the wrong type end in
`EsftError` (or a one-line usage error), never in a traceback from deep inside a library. No case trains:
each stops where its input is read, at most after loading the micro base model.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from string import Template

import pytest

from conftest import REPO
from esft.cli import main

TASKS = {"countdown": {"source": "synthetic", "seed": 0, "n_train": 2, "n_test": 2, "max_new_tokens": 4}}
MMLU = {"source": "synthetic", "seed": 0, "n": 2, "prompt_style": "short", "max_new_tokens": 4}
WRONG_TASKS = '\'{"countdown": {"max_new_tokens": "4"}}\''


@pytest.fixture(scope="module")
def paths(base, tmp_path_factory) -> Iterator[dict[str, str]]:
    """Good and bad inputs by name: $base, $data (countdown rows), $bad (row 2 has "numbers": "1 2"), $good,
    $garbage and $empty (weights), $missing (a path that does not exist), $norows (an empty test.jsonl),
    $nomodel (an empty directory), $run, ... Transformers' progress bars are off: stderr then holds the error
    line alone."""
    import pandas as pd
    from transformers.utils import logging as hf_logging

    from esft.io import read_jsonl, write_json, write_jsonl
    from esft.models import load_model
    from esft.runs import save_weights
    from esft.tasks.prepare import prepare_task

    root = tmp_path_factory.mktemp("bad-input")
    data, bad = root / "data" / "countdown", root / "bad" / "countdown"
    prepare_task("countdown", TASKS["countdown"], data)
    rows = read_jsonl(data / "test.jsonl")
    rows[1]["numbers"] = "1 2"
    write_jsonl(bad / "test.jsonl", rows)
    write_jsonl(bad / "train.jsonl", rows)
    write_jsonl(root / "norows" / "countdown" / "test.jsonl", [])
    (root / "nomodel").mkdir()
    model, _ = load_model(base / "base")
    save_weights(root / "good.safetensors", {n: p.detach() for n, p in model.named_parameters()})
    (root / "garbage.safetensors").write_bytes(b"not a checkpoint, " * 8)
    (root / "empty.safetensors").write_bytes(b"")
    (root / "list.yaml").write_text("[1, 2]\n")
    (root / "empty.csv").write_text("")
    write_jsonl(root / "run.jsonl", [{"iteration": 0}])
    write_json(root / "accuracy.json", {"countdown": {"accuracy": 0.5, "n": 2, "tokens": 4}})
    # drift run directories: garbage weights; good weights without drift.parquet; a garbage drift.parquet
    for name, weights in (("garbage", "garbage"), ("noparquet", "good"), ("badparquet", "good")):
        (root / "runs" / name).mkdir(parents=True)
        (root / "runs" / name / "weights.safetensors").write_bytes((root / f"{weights}.safetensors").read_bytes())
    (root / "runs" / "badparquet" / "drift.parquet").write_bytes(b"not parquet")
    pd.DataFrame({"a": [1]}).to_csv(root / "table.csv", index=False)
    hf_logging.disable_progress_bar()
    yield {"base": str(base / "base"), "data": str(data), "bad": str(bad), "good": str(root / "good.safetensors"),
            "garbage": str(root / "garbage.safetensors"), "empty": str(root / "empty.safetensors"),
            "missing": str(root / "missing"), "list": str(root / "list.yaml"), "emptycsv": str(root / "empty.csv"),
            "csv": str(root / "table.csv"), "run": str(root / "run.jsonl"), "accuracy": str(root / "accuracy.json"),
            "runs": str(root / "runs"), "out": str(root / "out"), "tasks": shlex.quote(json.dumps(TASKS)),
            "norows": str(root / "norows" / "countdown"), "nomodel": str(root / "nomodel")}
    hf_logging.enable_progress_bar()


TRAIN = "train --method $method --task countdown --run-id $method/single/1-countdown --out $out/train"
TRAIN_CFG = {"es": '{"population": "8"}', "lbes": '{"population": "8"}', "grpo": '{"learning_rate": "3e-6"}',
             "adamw": '{"lr": "1e-3"}'}
EVALUATE = "evaluate --tasks-cfg $tasks --out $out/accuracy.json"
CURVE = '\'{"generation_batch_size": 4, "every": 1}\''
REWARDS_OUT = "--curve-out $out/c.csv --out $out/p.csv"
KL = "kl --tasks-cfg $tasks --completions $out/kl.jsonl --out $out/kl.json"
PAIRS = "--methods es grpo --out $out/pairs.csv"
INTERPOLATE = f"interpolate {PAIRS} --tasks-cfg $tasks --cfg '{{\"grid\": [0, 1]}}'"
PROBE = f"probe {PAIRS} --tasks-cfg $tasks --cfg '{{\"scales\": [1], \"random_directions\": 0}}'"
PROBE_HOLDOUT = f"probe-holdout {PAIRS} --cfg '{{\"scales\": [1], \"random_directions\": 0}}'"
HOLDOUT_CFG = "--holdout-cfg $holdout"
TABLE = "--csv $out/t.csv --md $out/t.md"

# (stage command, bad input, arguments, what the one line must say)
CASES = [
    ("check-config", "missing file", "check-config $missing/config.yaml", "$missing/config.yaml: no such file"),
    ("check-config", "not a mapping", "check-config $list", "$list: expected a YAML mapping, got list"),
    ("prepare-task", "empty --cfg", "prepare-task --task countdown --cfg '{}' --out $out/p",
     "--cfg: config error: tasks.countdown: 'source' is a required property"),
    ("prepare-task", "wrong-typed --cfg", "prepare-task --task countdown --out $out/p --cfg "
     "'{\"source\": \"synthetic\", \"n_train\": \"2\", \"n_test\": 2, \"max_new_tokens\": 4}'",
     "--cfg: config error: tasks.countdown.n_train = '2' is not allowed; allowed: integer >= 1"),
    ("prepare-task", "--cfg not JSON", "prepare-task --task countdown --cfg '{source' --out $out/p",
     "argument --cfg: not a JSON object"),
    ("prepare-task", "missing --cfg file", "prepare-task --task countdown --cfg $missing/cfg.yaml --out $out/p",
     "argument --cfg: $missing/cfg.yaml: No such file or directory"),
    ("base-model", "wrong-typed --cfg", "base-model --cfg '{\"source\": 3}' --out $out/b",
     "--cfg: config error: model.source = 3 is not allowed; allowed: string"),
    ("base-model", "missing --held-out", "base-model --cfg '{\"source\": \"tiny\"}' "
     "--held-out $missing/countdown/test.jsonl "
     "--out $out/b", "$missing/countdown/test.jsonl: no such file"),
    ("base-model", "wrong-typed row", "base-model --cfg '{\"source\": \"tiny\"}' --held-out $bad/test.jsonl "
     "--out $out/b",
     "$bad/test.jsonl: row 2: field 'numbers' must be list, got str"),
    *[case for method in ("es", "grpo", "lbes", "adamw") for case in [
        (f"train {method}", "missing base dir", f"{TRAIN} --base $missing/base --data $data --task-cfg $tasks1 "
         "--cfg '{}'",
         "$missing/base: no such base-model directory"),
        (f"train {method}", "garbage --init", f"{TRAIN} --base $base --init $garbage --data $data --task-cfg $tasks1 "
         "--cfg '{}'", "$garbage: not a safetensors file (Error while deserializing header: header too large"),
        (f"train {method}", "empty --init", f"{TRAIN} --base $base --init $empty --data $data --task-cfg $tasks1 "
         "--cfg '{}'", "$empty: not a safetensors file"),
        (f"train {method}", "missing --init", f"{TRAIN} --base $base --init $missing/w.safetensors --data $data "
         "--task-cfg $tasks1 --cfg '{}'", "$missing/w.safetensors: no such file"),
        (f"train {method}", "missing data dir", f"{TRAIN} --base $base --data $missing/countdown --task-cfg $tasks1 "
         "--cfg '{}'", "$missing/countdown/train.jsonl: no such file (expected countdown rows"),
        (f"train {method}", "wrong-typed row", f"{TRAIN} --base $base --data $bad --task-cfg $tasks1 --cfg '{{}}'",
         "$bad/train.jsonl: row 2: field 'numbers' must be list, got str"),
        (f"train {method}", "wrong-typed --cfg", f"{TRAIN} --base $base --data $data --task-cfg $tasks1 "
         f"--cfg '{TRAIN_CFG[method]}'", f"--cfg: config error: {method}."),
        (f"train {method}", "empty --task-cfg", f"{TRAIN} --base $base --data $data --task-cfg '{{}}' --cfg '{{}}'",
         "--task-cfg: config error: tasks.countdown: 'max_new_tokens' is a required property"),
    ]],
    ("train adamw", "missing --corpus", f"{TRAIN.replace('$method', 'adamw')} --base $base --data $data "
     "--task-cfg $tasks1 --cfg '{}' --corpus $missing/corpus.jsonl", "$missing/corpus.jsonl: no such file"),
    ("prepare-corpus", "empty --cfg", "prepare-corpus --cfg '{}' --out $out/c.jsonl",
     "--cfg: config error: corpus: 'dataset' is a required property"),
    ("replay", "missing run log", "replay --base $base --run $missing/run.jsonl --out $out/r.safetensors",
     "$missing/run.jsonl: no such file (expected the run's run.jsonl)"),
    ("replay", "missing base dir", "replay --base $missing/base --run $run --out $out/r.safetensors",
     "$missing/base: no such base-model directory"),
    ("replay", "garbage --init", "replay --base $base --init $garbage --run $run --out $out/r.safetensors",
     "$garbage: not a safetensors file"),
    ("evaluate", "missing base dir", f"{EVALUATE} --base $missing/base --data countdown=$data --cfg $gbs",
     "$missing/base: no such base-model directory"),
    ("evaluate", "garbage weights", f"{EVALUATE} --base $base --weights $garbage --data countdown=$data --cfg $gbs",
     "$garbage: not a safetensors file"),
    ("evaluate", "empty weights", f"{EVALUATE} --base $base --weights $empty --data countdown=$data --cfg $gbs",
     "$empty: not a safetensors file (Error while deserializing header: header too small"),
    ("evaluate", "missing data dir", f"{EVALUATE} --base $base --data countdown=$missing/countdown --cfg $gbs",
     "$missing/countdown/test.jsonl: no such file"),
    ("evaluate", "wrong-typed row", f"{EVALUATE} --base $base --data countdown=$bad --cfg $gbs",
     "$bad/test.jsonl: row 2: field 'numbers' must be list, got str"),
    ("evaluate", "no rows", f"{EVALUATE} --base $base --data countdown=$norows --cfg $gbs",
     "$norows/test.jsonl: no rows (expected countdown rows"),
    ("evaluate", "empty --cfg", f"{EVALUATE} --base $base --data countdown=$data --cfg '{{}}'",
     "--cfg: config error: evaluate: 'generation_batch_size' is a required property"),
    ("evaluate", "wrong-typed --cfg", f"{EVALUATE} --base $base --data countdown=$data "
     "--cfg '{\"generation_batch_size\": \"8\"}'", "--cfg: config error: evaluate.generation_batch_size = '8'"),
    ("evaluate", "wrong-typed --tasks-cfg", f"evaluate --base $base --data countdown=$data --tasks-cfg {WRONG_TASKS} "
     "--cfg $gbs --out $out/a.json", "--tasks-cfg: config error: tasks.countdown.max_new_tokens = '4'"),
    ("collect-accuracy", "missing metrics", "collect-accuracy --metrics base=$missing/a.json --out $out/a.csv",
     "$missing/a.json: no such file"),
    ("collect-accuracy", "garbage metrics", "collect-accuracy --metrics base=$garbage --out $out/a.csv",
     "$garbage:1: not valid JSON"),
    ("test-curve", "missing base dir", "test-curve --base $missing/base --runs $run --data countdown=$data "
     f"--tasks-cfg $tasks --cfg {CURVE} --out $out/t.jsonl", "$missing/base: no such base-model directory"),
    ("test-curve", "missing run log", "test-curve --base $base --runs $missing/run.jsonl --data countdown=$data "
     f"--tasks-cfg $tasks --cfg {CURVE} --out $out/t.jsonl", "$missing/run.jsonl: no such file (expected a run's run.jsonl)"),
    ("test-curve", "wrong-typed --cfg", "test-curve --base $base --runs $run --data countdown=$data --tasks-cfg $tasks "
     "--cfg '{\"generation_batch_size\": 4, \"every\": \"1\"}' --out $out/t.jsonl", "--cfg: config error: evaluate.every"),
    ("prompt-rewards", "missing completions", "prompt-rewards --base $missing/c.jsonl "
     f"--data countdown=$data --tasks-cfg $tasks {REWARDS_OUT}", "$missing/c.jsonl: no such file"),
    ("prompt-rewards", "missing data dir", "prompt-rewards --base $run --data countdown=$missing/countdown "
     f"--tasks-cfg $tasks {REWARDS_OUT}", "$missing/countdown/test.jsonl: no such file"),
    ("prompt-rewards", "wrong-typed row", "prompt-rewards --base $run --data countdown=$bad "
     f"--tasks-cfg $tasks {REWARDS_OUT}", "$bad/test.jsonl: row 2: field 'numbers'"),
    ("prompt-rewards", "wrong-typed --tasks-cfg", "prompt-rewards --base $run --data countdown=$data "
     f"--tasks-cfg {WRONG_TASKS} {REWARDS_OUT}", "--tasks-cfg: config error: tasks.countdown.max_new_tokens"),
    ("accuracy-curves", "missing base accuracy", "accuracy-curves --base-accuracy $missing/a.json "
     "--runs es/single/1-countdown=$run --points es/single/1-countdown@final=$accuracy --out $out/c.csv",
     "$missing/a.json: no such file (expected the base model's accuracy.json)"),
    ("accuracy-curves", "missing run log", "accuracy-curves --base-accuracy $accuracy "
     "--runs es/single/1-countdown=$missing/run.jsonl --points es/single/1-countdown@final=$accuracy --out $out/c.csv",
     "$missing/run.jsonl: no such file (expected a run's run.jsonl)"),
    ("kl", "missing base dir", f"{KL} --base $missing/base --weights $good --data countdown=$data --cfg '{{}}'",
     "$missing/base: no such base-model directory"),
    ("kl", "garbage weights", f"{KL} --base $base --weights $garbage --data countdown=$data --cfg '{{}}'",
     "$garbage: not a safetensors file"),
    ("kl", "garbage reference", f"{KL} --base $base --reference $empty --weights $good --data countdown=$data "
     "--cfg '{}'", "$empty: not a safetensors file"),
    ("kl", "missing data dir", f"{KL} --base $base --weights $good --data countdown=$missing/countdown --cfg '{{}}'",
     "$missing/countdown/test.jsonl: no such file"),
    ("kl", "wrong-typed row", f"{KL} --base $base --weights $good --data countdown=$bad --cfg '{{}}'",
     "$bad/test.jsonl: row 2: field 'numbers'"),
    ("kl", "wrong-typed --cfg", f"{KL} --base $base --weights $good --data countdown=$data --cfg '{{\"seed\": -1}}'",
     "--cfg: config error: evaluate.kl.seed = -1 is not allowed; allowed: integer >= 0"),
    ("kl", "empty --tasks-cfg", "kl --base $base --weights $good --data countdown=$data --tasks-cfg '{}' --cfg '{}' "
     "--completions $out/kl.jsonl --out $out/kl.json", "--tasks-cfg: config error: tasks = {} is not allowed"),
    ("collect-kl", "missing KL file", "collect-kl --pairs a:base=$missing/kl.json --out $out/kl.csv",
     "$missing/kl.json: no such file"),
    ("holdout-data", "empty --cfg", "holdout-data --benchmark mmlu --cfg '{}' --out $out/h.jsonl",
     "--cfg: config error: holdout.benchmarks.mmlu: 'source' is a required property"),
    ("holdout-data", "wrong-typed --cfg", "holdout-data --benchmark mmlu --out $out/h.jsonl "
     "--cfg '{\"source\": \"synthetic\", \"seed\": 0, \"n\": \"2\"}'",
     "--cfg: config error: holdout.benchmarks.mmlu.n"),
    ("holdout-snapshot", "empty --cfg", "holdout-snapshot --benchmark ifeval --cfg '{}' --out $out/s",
     "--cfg: config error: holdout.benchmarks.ifeval: 'source' is a required property"),
    ("holdout", "empty --cfg", "holdout --base $base --benchmark mmlu --cfg '{}' --out $out/h.json",
     "--cfg: config error: holdout.benchmarks.mmlu: 'source' is a required property"),
    ("holdout", "missing base dir", "holdout --base $missing/base --benchmark mmlu --cfg $mmlu --data $run "
     "--out $out/h.json", "$missing/base: no such base-model directory"),
    ("holdout", "garbage weights", "holdout --base $base --weights $garbage --benchmark mmlu --cfg $mmlu --data $run "
     "--out $out/h.json", "$garbage: not a safetensors file"),
    ("holdout", "missing rows", "holdout --base $base --benchmark mmlu --cfg $mmlu --data $missing/mmlu.jsonl "
     "--out $out/h.json", "$missing/mmlu.jsonl: no such file (expected the rows written by `esft holdout-data`)"),
    ("holdout", "missing --nltk-data", "holdout --base $base --benchmark ifeval --out $out/h.json "
     "--nltk-data $missing/nltk "
     "--cfg '{\"source\": \"synthetic\", \"seed\": 0, \"n\": 2}' --data $run", "is not in $missing/nltk"),
    ("collect-holdout", "missing record", "collect-holdout --results base/mmlu=$missing/mmlu.json --out $out/h.csv",
     "$missing/mmlu.json: no such file"),
    ("norms", "missing base dir", "norms --base $missing/base --checkpoints a=$good --out $out/n.csv",
     "$missing/base: no such base-model directory"),
    ("norms", "base dir without a model", "norms --base $nomodel --checkpoints a=$good --out $out/n.csv",
     "$nomodel: not a base-model directory (expected model.json"),
    ("norms", "garbage weights", "norms --base $base --checkpoints a=$garbage --out $out/n.csv",
     "$garbage: not a safetensors file"),
    ("norms", "missing weights", "norms --base $base --checkpoints a=$missing/w.safetensors --out $out/n.csv",
     "$missing/w.safetensors: no such file"),
    ("geometry-deltas", "missing base dir", f"geometry-deltas {PAIRS} --base $missing/base "
     "--pairs single/1-countdown=$good,$good", "$missing/base: no such base-model directory"),
    ("geometry-deltas", "empty weights", f"geometry-deltas {PAIRS} --base $base "
     "--pairs single/1-countdown=$good,$empty",
     "$empty: not a safetensors file"),
    *[case for stage, section, command, wrong in (
        ("interpolate", "interpolation", INTERPOLATE, '{"grid": "0 1"}'),
        ("probe", "probes", PROBE, '{"scales": [1], "random_directions": -1}'))
      for case in [
        (stage, "missing base dir", f"{command} --base $missing/base --pairs single/1-countdown=$good,$good "
         "--data countdown=$data", "$missing/base: no such base-model directory"),
        (stage, "garbage weights", f"{command} --base $base --pairs single/1-countdown=$garbage,$good "
         "--data countdown=$data", "$garbage: not a safetensors file"),
        (stage, "missing data dir", f"{command} --base $base --pairs single/1-countdown=$good,$good "
         "--data countdown=$missing/countdown", "$missing/countdown/test.jsonl: no such file"),
        (stage, "wrong-typed row", f"{command} --base $base --pairs single/1-countdown=$good,$good "
         "--data countdown=$bad",
         "$bad/test.jsonl: row 2: field 'numbers'"),
        (stage, "wrong-typed --cfg", f"{command.split(' --cfg ')[0]} --cfg '{wrong}' --base $base "
         "--pairs single/1-countdown=$good,$good --data countdown=$data", f"--cfg: config error: geometry.{section}."),
        (stage, "wrong-typed --tasks-cfg", f"{command} --tasks-cfg {WRONG_TASKS} --base $base "
         "--pairs single/1-countdown=$good,$good --data countdown=$data", "--tasks-cfg: config error: tasks.countdown"),
    ]],
    ("probe-holdout", "wrong-typed --cfg", f"probe-holdout {PAIRS} --cfg '{{\"random_directions\": -1}}' {HOLDOUT_CFG} "
     "--base $base --pairs single/1-countdown=$good,$good", "--cfg: config error: geometry.probes.random_directions"),
    ("probe-holdout", "wrong-typed --holdout-cfg", f"{PROBE_HOLDOUT} --holdout-cfg $holdout0 --base $base "
     "--pairs single/1-countdown=$good,$good",
     "--holdout-cfg: config error: holdout.batch_size = 0 is not allowed; allowed: integer >= 1"),
    ("probe-holdout", "missing base dir", f"{PROBE_HOLDOUT} {HOLDOUT_CFG} --base $missing/base "
     "--pairs single/1-countdown=$good,$good --data mmlu=$run", "$missing/base: no such base-model directory"),
    ("probe-holdout", "garbage weights", f"{PROBE_HOLDOUT} {HOLDOUT_CFG} --base $base "
     "--pairs single/1-countdown=$good,$garbage --data mmlu=$run", "$garbage: not a safetensors file"),
    ("probe-holdout", "missing rows", f"{PROBE_HOLDOUT} {HOLDOUT_CFG} --base $base "
     "--pairs single/1-countdown=$good,$good --data mmlu=$missing/mmlu.jsonl", "$missing/mmlu.jsonl: no such file"),
    *[("drift", bad, f"drift --runs es/single/1-countdown=$runs/{run} --series $out/s.csv --fits $out/f.csv "
       "--params $out/p.csv --kinds $out/k.csv", f"$runs/{run}/{said}")
      for bad, run, said in (("missing run dir", "none", "weights.safetensors: no such file"),
                             ("garbage weights", "garbage", "weights.safetensors: not a safetensors file"),
                             ("missing drift.parquet", "noparquet", "drift.parquet: no such file"),
                             ("garbage drift.parquet", "badparquet", "drift.parquet: not a parquet file"))],
    ("figure", "missing input", "figure accuracy --inputs $missing/accuracy.csv --out $out/f.png",
     "$missing/accuracy.csv: no such file"),
    ("figure", "empty input", "figure kl --inputs $emptycsv --out $out/f.png", "$emptycsv: empty"),
    ("figure", "missing run log", "figure training --inputs es/single/1-countdown=$missing/run.jsonl --out $out/f.png",
     "$missing/run.jsonl: no such file"),
    ("figure", "wrong-typed --cfg", "figure probes --inputs $csv --cfg '{\"random_band\": \"yes\"}' --out $out/f.png",
     "--cfg: config error: figures.random_band = 'yes' is not allowed; allowed: boolean"),
    ("table", "missing input", f"table accuracy --input $missing/accuracy.csv {TABLE}",
     "$missing/accuracy.csv: no such file"),
    ("table", "wrong-typed --cfg", f"table accuracy --input $csv --cfg '{{\"float_format\": \"3\"}}' {TABLE}",
     "--cfg: config error: tables.float_format = '3' is not allowed"),
    ("table", "missing run log", "table single-task --input $csv --runs es/single/1-countdown=$missing/run.jsonl "
     f"{TABLE}",
     "$missing/run.jsonl: no such file"),
    ("findings", "missing input", f"findings --methods es grpo --deltas $missing/deltas.csv --cfg '{{}}' {TABLE}",
     "$missing/deltas.csv: no such file"),
    ("findings", "wrong-typed --cfg", f"findings --methods es grpo --cfg '{{\"gain_min\": \"x\"}}' {TABLE}",
     "--cfg: config error: geometry.findings.gain_min = 'x' is not allowed; allowed: number"),
]


def _substitute(text: str, paths: dict[str, str], method: str) -> str:
    extra = {"method": method, "tasks1": shlex.quote(json.dumps(TASKS["countdown"])),
             "gbs": shlex.quote(json.dumps({"generation_batch_size": 4})), "mmlu": shlex.quote(json.dumps(MMLU)),
             **{name: shlex.quote(json.dumps({"batch_size": size, "benchmarks": {"mmlu": MMLU}}))
                for name, size in (("holdout", 2), ("holdout0", 0))}}
    return Template(text).substitute({**paths, **extra})


@pytest.mark.parametrize(("stage", "bad", "args", "said"), CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_stage_stops_on_bad_input_in_one_line(stage, bad, args, said, paths, capsys, caplog):
    """Exit status != 0, exactly one line (the logged EsftError or argparse's error), naming the input."""
    method = stage.split()[1] if stage.startswith("train ") else "es"
    argv = shlex.split(_substitute(args, paths, method))
    caplog.clear()
    with pytest.raises(SystemExit) as exc:
        main(["--log-level", "ERROR", *argv])
    assert exc.value.code not in (0, None)
    err = capsys.readouterr().err
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    lines += [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert _substitute(said, paths, method) in lines[0]


def test_stage_command_error_is_one_line_on_stderr(tmp_path):
    """Outside pytest's log capture: the process prints the error as one stderr line, without a traceback
    (a stage that imports no torch, to keep it quick: every EsftError takes the same way out)."""
    (tmp_path / "config.yaml").write_text("experiment: [1]\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "esft.cli", "check-config", str(tmp_path / "config.yaml"),
                           "--schema", str(REPO / "config/schema.yaml")], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "config error: <top level>: 'runtime' is a required property" in proc.stderr


def test_every_stage_command_has_a_bad_input_case():
    """A new stage command needs its bad inputs here (nltk-data reads nothing)."""
    from esft.cli import build_parser

    stages = set(next(a for a in build_parser()._actions if a.dest == "stage").choices)
    assert stages - {"nltk-data"} == {case[0].split()[0] for case in CASES}


def test_every_parser_has_its_own_defaults():
    """A stage fills a config slice's defaults into the dict it was given: two parsers (two `main` calls in one
    process) never share a default."""
    from esft.cli import build_parser

    argv = ["table", "holdout", "--input", "h.csv", "--csv", "t.csv", "--md", "t.md"]
    first, second = (build_parser().parse_args(argv) for _ in range(2))
    assert first.cfg == second.cfg == {} and first.cfg is not second.cfg and first.runs is not second.runs
