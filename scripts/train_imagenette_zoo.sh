#!/usr/bin/env bash
# Train the shipped imagenette zoo: ResNet50, DSNet50 and DS2Net50 with one identical recipe and
# seed, side by side. Resumable: run it again after an interruption.
# Usage: [TRAIN_ARGS=...] scripts/train_imagenette_zoo.sh [DATA] [RUNS] [EPOCHS]
#   EPOCHS (optional) overrides the recipe's 60.
#   TRAIN_ARGS: more dsnet.train flags for every model; default "--threads 1" (two CPU cores, three
#   processes sharing them evenly). One GPU: TRAIN_ARGS="--threads 2 --workers 3".
set -euo pipefail
data=${1:-${DSNET_DATA:-../shared/data}/imagenette}
runs=${2:-runs/imagenette}
epochs=${3:+--epochs $3}
extra=${TRAIN_ARGS:---threads 1}
mkdir -p "$runs"
for model in resnet50 dsnet50 ds2net50; do
  # shellcheck disable=SC2086
  python -m dsnet.train --model "$model" --recipe imagenette --data "$data" --out "$runs/$model" \
    --seed 0 --resume --export imagenette $epochs $extra >> "$runs/$model.log" 2>&1 &
done
wait
python -m dsnet.train --plot "$runs"/{resnet50,dsnet50,ds2net50}/log.jsonl --out "$runs/figure4.png"
