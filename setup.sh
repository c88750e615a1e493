#!/usr/bin/env bash
# Set up esft in ./.venv and make `snakemake --profile slurm` work from this directory.
# TORCH_SPEC chooses the torch build installed first (default torch==2.13.0: the CUDA build from PyPI
# on Linux, or a local CPU wheel where one is provided); TORCH_SPEC= (empty) leaves the choice to pip.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
TORCH_SPEC=${TORCH_SPEC-torch==2.13.0}
if [ -n "$TORCH_SPEC" ]; then python -m pip install -q "$TORCH_SPEC"; fi
python -m pip install -q -e '.[test]'
# Snakemake resolves `--profile NAME` in ./NAME (among others): link the shipped profiles there.
for name in slurm local; do
  [ -e "$name" ] || ln -s "profiles/$name" "$name"
done
echo "esft is set up: run '. .venv/bin/activate' then 'snakemake --cores 2'"
