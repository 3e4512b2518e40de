#!/usr/bin/env bash
# The seed study on one GPU machine in one time-boxed call: python -m dsnet.evidence.seedstudy trains every
# (seed, model) of the shipped imagenette recipe in one process (the data on the GPU, one CUDA graph
# per run, the runs overlapping on their own streams) and drops the highest seeds if the budget
# would not hold them all. Everything lands in OUT as it is made:
#   OUT/study.json     rewritten after every epoch: per run, epochs done, the last log row, capture
#                      errors; at the end the fp16-rounding check and the seeds dropped (if any)
#   OUT/seed<N>-gpu.tar  per finished seed: seed<N>-gpu/<model>.safetensors (fp16, as exported),
#                      seed<N>-gpu/manifest.json (SHA-256, provenance), seed<N>-gpu/<model>/log.jsonl
#   OUT/study.log      the GPU and the study's output
# Back here: scripts/eval_seeds.sh OUT (the full val, per-image correctness, paired tests).
#   scripts/gpu_seeds.sh DATA OUT    environment: SEEDS ("0 1 2 3 4"), BUDGET (420 s for the whole study),
#   LIMIT (BUDGET + 60: the hard stop), PYTHON (python3), STUDY_ARGS (more dsnet.evidence.seedstudy flags)
set -uo pipefail
cd "$(dirname "$0")/.."
data=$1 out=$2
budget=${BUDGET:-420}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$out/study.log" 2>&1
# shellcheck disable=SC2086
timeout -k 10 "${LIMIT:-$((budget + 60))}" "${PYTHON:-python3}" -m dsnet.evidence.seedstudy --data "$data" \
  --runs "${RUNS:-/tmp/seed-runs}" --pack "$out" --seeds ${SEEDS:-0 1 2 3 4} --budget "$budget" \
  --cache-dir "${CACHE:-/tmp/seed-cache}" ${STUDY_ARGS:-} 2>&1 | tee -a "$out/study.log"
echo "exit ${PIPESTATUS[0]}" | tee -a "$out/study.log"
