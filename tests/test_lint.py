"""The snakemake-workflows catalog checks: `snakemake --lint` finds nothing and `snakefmt --check` passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env)


def test_snakemake_lint_is_clean():
    proc = _run("snakemake", "--lint")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Congratulations" in out, out[-3000:]


def test_snakefmt_check_passes():
    proc = _run("snakefmt", "--check", ".")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
