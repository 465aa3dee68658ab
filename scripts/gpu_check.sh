#!/usr/bin/env bash
# The GPU checks in one go: install carried wheels (optional), run the GPU tests, the sampler benchmark and the
# weight-sync benchmark (gloo on the machine's cores; NCCL where there are 3 GPUs), and the real recipes at full
# depth (tests/test_recipes_run_at_real_shapes.py with FLEXGRPO_REAL_SHAPES_FULL_DEPTH=1; 3 GPUs).
#   scripts/gpu_check.sh [WHEEL_DIR]
# WHEEL_DIR: a folder of wheels to install offline first (pip --no-index --find-links).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -ge 1 ]]; then
  if [[ ! -d "$1" ]]; then
    echo "wheel folder '$1' does not exist" >&2
    exit 2
  fi
  shopt -s nullglob
  wheels=("$1"/*.whl)
  if (( ${#wheels[@]} )); then
    python -m pip install --no-index --find-links "$1" "${wheels[@]}"
  fi
fi

export FLEXGRPO_CACHE="${FLEXGRPO_CACHE:-$PWD/.cache/flexgrpo}"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible'; print(torch.cuda.get_device_name())"

echo "== GPU tests (pytest -m gpu)"
python -m pytest -m gpu -q -p no:cacheprovider tests

echo "== sampler overhead: flexgrpo SDE rollout vs diffusers Euler loop, SD3.5-M size, bf16, 512 px"
python benchmarks/bench_sampler_overhead.py

echo "== weight sync over gloo, each rank on cores of its own (the dev machine's 2 cores are shared by 3 ranks)"
python benchmarks/bench_weight_sync.py --repeats 7

echo "== weight sync: bucketed publish vs a raw NCCL broadcast, 2 receivers (one rank per GPU)"
if python -c "import sys, torch; sys.exit(torch.cuda.device_count() < 3)"; then
  python benchmarks/bench_weight_sync.py --device cuda
else
  echo "skipped: NCCL needs one GPU per rank (3); run it on CPU: python benchmarks/bench_weight_sync.py"
fi

echo "== the real recipes at full depth: random weights in the published architectures, one step each (untested)"
# Needs one GPU per role (3): on fewer, the judge's vLLM engine would take its memory share of a GPU the policy
# roles use. The full-depth builds take ~80 GB of disk together (FLUX.1-dev and its T5-XXL alone ~33 GB, bf16).
if python -c "import sys, torch; sys.exit(torch.cuda.device_count() < 3)"; then
  FLEXGRPO_REAL_SHAPES_FULL_DEPTH=1 python -m pytest -q -p no:cacheprovider tests/test_recipes_run_at_real_shapes.py
else
  echo "skipped: one GPU per role needed (3); on CPU: python -m pytest tests/test_recipes_run_at_real_shapes.py"
fi
