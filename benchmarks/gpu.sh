#!/usr/bin/env bash
# README's GPU measurements in one go on a CUDA machine (under 10 minutes), the one that decides issue
# #2 first: torch.compile'd models (training step only; compiling three models takes most of the
# time, each prints how long it took), fp32 eager (PyTorch's default TF32 convolutions), the setting
# dsnet.evidence.train uses on CUDA (fp16 autocast + channels_last), and fp32 without TF32 (as on GPUs before
# Ampere).
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
run 330 compile-fp32 --train-only --compile
run 100 fp32
run 90 amp-channels-last --amp --channels-last
run 60 fp32-ieee --train-only --ieee-fp32
