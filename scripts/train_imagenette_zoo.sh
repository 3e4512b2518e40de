#!/usr/bin/env bash
# Train the shipped imagenette zoo: ResNet50, DSNet50 and DS2Net50 with one identical recipe and
# seed, side by side (one thread each, so they share the cores evenly and finish together).
# Resumable: run it again after an interruption.
# Usage: scripts/train_imagenette_zoo.sh [DATA] [RUNS] [EPOCHS]
#   EPOCHS (optional) overrides the recipe's 12; on a finished run it continues with a cosine warm
#   restart to EPOCHS (how the shipped weights were made: 12, then continued to 18).
set -euo pipefail
data=${1:-${DSNET_DATA:-../shared/data}/imagenette}
runs=${2:-runs/imagenette}
epochs=${3:+--epochs $3}
mkdir -p "$runs"
for model in resnet50 dsnet50 ds2net50; do
  # shellcheck disable=SC2086
  python -m dsnet.train --model "$model" --recipe imagenette --data "$data" --out "$runs/$model" \
    --seed 0 --threads 1 --resume --export imagenette $epochs >> "$runs/$model.log" 2>&1 &
done
wait
python -m dsnet.train --plot "$runs"/{resnet50,dsnet50,ds2net50}/log.jsonl --out "$runs/figure4.png"
