#!/usr/bin/env bash
# Train the shipped imagenette zoo: ResNet50, DSNet50 and DS2Net50 with one identical recipe and
# seed, side by side. Resumable: run it again after an interruption.
# Usage: [SEED=N] [TRAIN_ARGS=...] scripts/train_imagenette_zoo.sh [DATA] [RUNS] [EPOCHS]
#   EPOCHS (optional) overrides the recipe's 60.
#   TRAIN_ARGS: more dsnet.evidence.train flags for every model; default "--threads 1" (two CPU cores, three
#   processes sharing them evenly). One GPU: TRAIN_ARGS="--threads 2 --workers 3".
#   SEED: 0 (default) is the shipped zoo: RUNS defaults to runs/imagenette and the weights are exported
#   into checkpoints/imagenette and checkpoints/manifest.json. Any other seed (the seed study) leaves
#   the shipped zoo alone: RUNS defaults to runs/imagenette-seed<N>, and each model is exported as
#   RUNS/<model>.safetensors with its entry in RUNS/manifest.json (a copy of the shipped manifest), the
#   layout `python -m dsnet.evidence.evaluate --runs` reads (RUNS/../<run>/<model>.safetensors).
set -euo pipefail
seed=${SEED:-0}
data=${1:-${DSNET_DATA:-../shared/data}/imagenette}
if [ "$seed" = 0 ]; then runs=${2:-runs/imagenette}; else runs=${2:-runs/imagenette-seed$seed}; fi
epochs=${3:+--epochs $3}
extra=${TRAIN_ARGS:---threads 1}
mkdir -p "$runs"
export_args=(--export imagenette)
if [ "$seed" != 0 ]; then
  [ -f "$runs/manifest.json" ] || cp "$(dirname "$0")/../checkpoints/manifest.json" "$runs/manifest.json"
  export_args+=(--export-dir "$runs" --manifest "$runs/manifest.json")
fi
for model in resnet50 dsnet50 ds2net50; do
  # shellcheck disable=SC2086
  python -m dsnet.evidence.train --model "$model" --recipe imagenette --data "$data" --out "$runs/$model" \
    --seed "$seed" --resume "${export_args[@]}" $epochs $extra >> "$runs/$model.log" 2>&1 &
done
wait
python -m dsnet.evidence.curves "$runs"/{resnet50,dsnet50,ds2net50}/log.jsonl --out "$runs/figure4.png"
