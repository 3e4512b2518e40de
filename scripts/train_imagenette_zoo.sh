#!/usr/bin/env bash
# Train the shipped imagenette zoo: ResNet50, DSNet50 and DS2Net50 with one identical recipe and
# seed, side by side (one thread each, so they share the cores evenly and finish together).
# Resumable: run it again after an interruption. Usage: scripts/train_imagenette_zoo.sh [DATA] [RUNS]
set -euo pipefail
data=${1:-${DSNET_DATA:-../shared/data}/imagenette}
runs=${2:-runs/imagenette}
mkdir -p "$runs"
for model in resnet50 dsnet50 ds2net50; do
  python -m dsnet.train --model "$model" --recipe imagenette --data "$data" --out "$runs/$model" \
    --seed 0 --threads 1 --resume --export imagenette > "$runs/$model.log" 2>&1 &
done
wait
python -m dsnet.train --plot "$runs"/{resnet50,dsnet50,ds2net50}/log.jsonl --out "$runs/figure4.png"
