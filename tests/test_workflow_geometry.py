"""Caching of the geometry stages, planned by dry runs (no training): a figure option reruns only its
figure, the λ grid only the interpolation stage and what depends on it, the probe-holdout slice only the
holdouts along directions (Figure 5) and what depends on them.

GRPO is not on this branch, so the workflow is copied with its schema widened to accept a second method
`grpo` configured like ES; the jobs are never run: the dry run's output files are created empty and
marked up to date with `snakemake --touch`, which (run once before the files exist) records each job's
params as a real run does.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_snakemake
from test_workflow import planned_jobs


def _snakemake(workdir: Path, *args: str, configs: list[Path]) -> subprocess.CompletedProcess:
    return run_snakemake(workdir, configs, *args, timeout=300)


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


@pytest.fixture(scope="module")
def paired(tmp_path_factory) -> tuple[Path, Path]:
    """(workdir, config) of a touched-complete workflow of the small config, which compares es with grpo."""
    wd = tmp_path_factory.mktemp("geometry_workflow")
    cfg = REPO / "tests/data/small.yaml"
    dry = _snakemake(wd, "-n", configs=[cfg])
    jobs = planned_jobs(dry)
    for rule in ("geometry_deltas", "geometry_interpolation", "geometry_probes", "geometry_probe_holdout",
                 "geometry_drift", "figure_interpolation", "figure_probes", "figure_probes_holdout", "figure_drift",
                 "table_norm_ratio", "table_findings"):
        assert jobs.get(rule) == 1, rule
    # a first --touch, before the files exist, records every job's metadata (params, code) as if it had run
    _snakemake(wd, "--touch", "--cores", "1", configs=[cfg])
    for line in re.findall(r"^    output: (.*)$", dry.stdout, re.M):
        for out in (wd / p.strip() for p in line.split(",")):
            if out.name == "base":  # the base model is a directory
                out.mkdir(parents=True, exist_ok=True)
            else:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.touch()
    _snakemake(wd, "--touch", "--cores", "1", configs=[cfg])
    assert planned_jobs(_snakemake(wd, "-n", configs=[cfg])) == {}
    return wd, cfg


def test_a_figure_option_reruns_only_that_figure(paired):
    wd, cfg = paired
    extra = _write(wd / "per_task.yaml", {"figures": {"interpolation": {"per_task": False}}})
    assert planned_jobs(_snakemake(wd, "-n", configs=[cfg, extra])) == {"figure_interpolation": 1, "all": 1}


def test_the_lambda_grid_reruns_only_interpolation_and_its_dependents(paired):
    wd, cfg = paired
    extra = _write(wd / "grid.yaml", {"geometry": {"interpolation": {"grid": [0, 0.5, 1]}}})
    assert planned_jobs(_snakemake(wd, "-n", configs=[cfg, extra])) == {
        "geometry_interpolation": 1, "figure_interpolation": 1, "table_findings": 1, "all": 1}


def test_probe_scales_rerun_only_probes_and_their_dependents(paired):
    """The probe-holdout stage takes the probes' scales while its own are null (the default)."""
    wd, cfg = paired
    extra = _write(wd / "scales.yaml", {"geometry": {"probes": {"scales": [0, 1]}}})
    assert planned_jobs(_snakemake(wd, "-n", configs=[cfg, extra])) == {
        "geometry_probes": 1, "figure_probes": 1, "geometry_probe_holdout": 1, "figure_probes_holdout": 1,
        "table_findings": 1, "all": 1}
    own = _write(wd / "own_scales.yaml", {"geometry": {"probes": {"scales": [0, 1]},
                                                       "probe_holdout": {"scales": [0, 0.5, 1, 1.5, 2]}}})
    assert planned_jobs(_snakemake(wd, "-n", configs=[cfg, own])) == {
        "geometry_probes": 1, "figure_probes": 1, "table_findings": 1, "all": 1}


@pytest.mark.parametrize("slice_", [{"scales": [1]}, {"stages": "all"}])
def test_the_probe_holdout_slice_reruns_only_it_and_its_dependents(paired, slice_):
    wd, cfg = paired
    extra = _write(wd / "probe_holdout.yaml", {"geometry": {"probe_holdout": slice_}})
    assert planned_jobs(_snakemake(wd, "-n", configs=[cfg, extra])) == {
        "geometry_probe_holdout": 1, "figure_probes_holdout": 1, "table_findings": 1, "all": 1}


def test_figure5_option_and_holdout_tolerance_rerun_only_their_outputs(paired):
    wd, cfg = paired
    band = _write(wd / "band.yaml", {"figures": {"probes_holdout": {"random_band": True}}})
    assert planned_jobs(_snakemake(wd, "-n", configs=[cfg, band])) == {"figure_probes_holdout": 1, "all": 1}
    tol = _write(wd / "tol.yaml", {"geometry": {"findings": {"holdout_random_tolerance": 0.1}}})
    assert planned_jobs(_snakemake(wd, "-n", configs=[cfg, tol])) == {"table_findings": 1, "all": 1}


def test_without_the_second_method_pair_stages_are_skipped(tmp_path):
    es_only = _write(tmp_path / "es.yaml", {"train": {"methods": ["es"]}})
    jobs = planned_jobs(_snakemake(tmp_path, "-n", configs=[REPO / "tests/data/small.yaml", es_only]))
    assert jobs["geometry_drift"] == 1 and jobs["table_findings"] == 1 and jobs["table_single_task"] == 1
    assert jobs["replay_budget"] == 1 and jobs["evaluate_budget"] == 1
    assert not {"geometry_deltas", "geometry_interpolation", "geometry_probes", "geometry_probe_holdout",
                "table_norm_ratio"} & set(jobs)
