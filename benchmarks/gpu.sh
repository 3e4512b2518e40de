#!/usr/bin/env bash
# README's GPU measurements in one go on a CUDA machine (under 10 minutes): fp32 eager (PyTorch's
# default TF32 convolutions, and without TF32 as on GPUs before Ampere), the setting dsnet.train uses on
# CUDA (fp16 autocast + channels_last), and torch.compile'd models (training step only: compiling
# takes most of the time, so it runs last).
#   benchmarks/gpu.sh [OUT]    environment: PYTHON (python), DEVICE (cuda), ROUNDS (30), BATCH (64),
#                              LIMIT_FACTOR (1; the time limits below are sized for an H200)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu-benchmarks}
mkdir -p "$out"
run() {  # run SECONDS NAME [benchmarks/models.py options]
  local limit=$1 name=$2; shift 2
  timeout "$((limit * ${LIMIT_FACTOR:-1}))" "${PYTHON:-python}" benchmarks/models.py --device "${DEVICE:-cuda}" \
    --rounds "${ROUNDS:-30}" --train-batch "${BATCH:-64}" "$@" 2>&1 | tee "$out/$name.txt"
}
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > "$out/gpu.txt" 2>&1
run 150 fp32
run 90 fp32-ieee --train-only --ieee-fp32
run 120 amp-channels-last --amp --channels-last
run 230 compile-fp32 --train-only --compile
