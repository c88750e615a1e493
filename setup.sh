#!/usr/bin/env bash
# Set up esft in ./.venv and make `snakemake --profile slurm` work from this directory.
# TORCH_SPEC chooses the torch build installed first (default torch==2.13.0: the CUDA build from PyPI
# on Linux, or a local CPU wheel where one is provided); TORCH_SPEC= (empty) leaves the choice to pip.
# ESFT_EXTRAS chooses the extras: test, plus gpu (bitsandbytes for grpo.optim adamw_8bit, as in
# config/paper.yaml, and vLLM) where nvidia-smi finds a GPU; ESFT_EXTRAS=test,gpu forces them.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
TORCH_SPEC=${TORCH_SPEC-torch==2.13.0}
if [ -n "$TORCH_SPEC" ]; then python -m pip install -q "$TORCH_SPEC"; fi
if [ -z "${ESFT_EXTRAS:-}" ]; then
  ESFT_EXTRAS=test
  if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then ESFT_EXTRAS=test,gpu; fi
fi
python -m pip install -q -e ".[$ESFT_EXTRAS]"
# Snakemake resolves `--profile NAME` in ./NAME (among others): link the shipped profiles there.
for name in slurm local; do
  [ -e "$name" ] || ln -s "profiles/$name" "$name"
done
echo "esft is set up with extras [$ESFT_EXTRAS]: run '. .venv/bin/activate' then 'snakemake --cores 2'"
