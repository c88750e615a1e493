#!/usr/bin/env bash
# Set up esft in ./.venv and make `snakemake --profile slurm` work from this directory.
# Pass TORCH_SPEC to choose a torch build, e.g. TORCH_SPEC='torch==2.13.0' for a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if [ -n "${TORCH_SPEC:-}" ]; then python -m pip install "$TORCH_SPEC"; fi
python -m pip install -e '.[test]'
# Snakemake resolves `--profile NAME` in ./NAME (among others): link the shipped profiles there.
for name in slurm local; do
  [ -e "$name" ] || ln -s "profiles/$name" "$name"
done
echo "esft is set up: run '. .venv/bin/activate' then 'snakemake --cores 2'"
