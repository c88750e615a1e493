"""Shared fixtures: a tiny untrained model and its tokenizer, built in memory (no downloads)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    from esft.models import build_tokenizer

    return build_tokenizer()


@pytest.fixture()
def tiny_model(tokenizer):
    """A freshly initialised (not warm-started) micro model, deterministic from its seed."""
    from esft.models import TinyModelConfig, build_tiny_model

    cfg = TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=16, warmstart_steps=0)
    return build_tiny_model(cfg, tokenizer).eval()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """An untrained micro base-model directory and the conciseness train split (rewards vary with θ)."""
    from esft.io import write_jsonl
    from esft.models import build_base_model
    from esft.tasks.conciseness import embedded_rows

    root = tmp_path_factory.mktemp("micro-base")
    build_base_model("tiny", root / "base", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                                 warmstart_steps=0, warmstart_rows_per_task=2,
                                                 warmstart_tasks=["conciseness"]))
    (root / "data").mkdir()
    write_jsonl(root / "data" / "train.jsonl", embedded_rows()["train"])
    return root


@pytest.fixture(scope="session")
def nltk_data(tmp_path_factory):
    """NLTK's English punkt_tab written offline (IFEval scoring needs it) and put on NLTK's data path."""
    from esft.evaluate.punkt import use_nltk_data, write_punkt_tab

    root = tmp_path_factory.mktemp("nltk") / "nltk_data"
    write_punkt_tab(root)
    use_nltk_data(root)
    return root


def sigkill_once_saved(args: list[str], saved: Path) -> int:
    """Run `esft <args>` in a subprocess and SIGKILL it as soon as `saved` (its resume state) exists."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "esft.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not saved.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before its first checkpoint could be interrupted"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode


def findings_defaults() -> dict:
    """geometry.findings thresholds as the schema fills them in (every key `esft findings` reads)."""
    import yaml

    schema = yaml.safe_load((REPO / "config/schema.yaml").read_text(encoding="utf-8"))
    return {k: v["default"] for k, v in schema["properties"]["geometry"]["properties"]["findings"]["properties"].items()}


PAPER_TWIN = [REPO / "config" / "paper.yaml", REPO / "config" / "twins" / "paper.yaml"]
"""The paper's config with its offline twin layered on it: the end-to-end run the suite shares."""


def run_snakemake(workdir: Path, configs: list[Path], *args: str, check: bool = True,
                  timeout: int = 900) -> subprocess.CompletedProcess:
    """Snakemake on the layered `configs` in `workdir`, with this interpreter's `esft` on PATH (rules call it)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
           "--configfile", *map(str, configs), *args]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="session")
def paper_twin(tmp_path_factory) -> Path:
    """The workdir of one complete run of the paper twin (the costliest run of the suite, done once): the
    workflow's end-to-end checks (test_workflow.py) and the twin's own (test_real_configs.py) read it."""
    workdir = tmp_path_factory.mktemp("paper_twin")
    start = time.perf_counter()
    run_snakemake(workdir, PAPER_TWIN, "--cores", "2")
    print(f"paper twin: {time.perf_counter() - start:.0f} s")
    return workdir
