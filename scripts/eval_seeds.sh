#!/usr/bin/env bash
# Back here after scripts/gpu_seeds.sh: unpack the returned seeds, check every returned weight file
# against the SHA-256 its run recorded at export, and evaluate the shipped zoo (seed 0) and every
# finished seed on the FULL Imagenette val with per-image correctness, paired bootstrap intervals
# and exact McNemar tests against ResNet50 (python -m dsnet.evidence.evaluate --runs; its JSON keeps
# per_image.correct for every run/model). Unfinished runs (no weights) are listed and skipped.
#   scripts/eval_seeds.sh FILES_AT [RUNS] [VAL] [JSON]
#     FILES_AT  the folder holding seed<N>-<tag>.tar and study.json (the run tool's files_at)
#     RUNS      where to unpack (runs/imagenette-seeds)
#     VAL       ${DSNET_DATA:-../shared/data}/imagenette/val
#     JSON      RUNS/evaluate.json
#   environment: PIPELINE (export: dsnet.evidence.train's preprocessing, as the manifest's metrics; or app)
set -euo pipefail
cd "$(dirname "$0")/.."
src=$1
runs=${2:-runs/imagenette-seeds}
val=${3:-${DSNET_DATA:-../shared/data}/imagenette/val}
json=${4:-$runs/evaluate.json}
mkdir -p "$runs"
for t in "$src"/seed*.tar; do tar -xf "$t" -C "$runs"; done
[ -f "$src/study.json" ] && cp "$src/study.json" "$runs/study.json"
python - "$runs" <<'EOF'
import re
import sys
from pathlib import Path
from dsnet.zoo.manifest import load_manifest
from dsnet.zoo.weights import verify
runs = Path(sys.argv[1])
for seed_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
    entries = load_manifest(seed_dir / "manifest.json").zoo("imagenette").entries if (seed_dir / "manifest.json").is_file() else {}
    for model in ("resnet50", "dsnet50", "ds2net50"):
        path = seed_dir / f"{model}.safetensors"
        if not path.is_file():
            print(f"{seed_dir.name}/{model}: unfinished, no weights (skipped)")
            continue
        entry = entries[model]
        if entry.provenance.get("seed") != int(re.match(r"seed(\d+)", seed_dir.name).group(1)):
            raise SystemExit(f"{path}: the manifest's seed {entry.provenance.get('seed')} is not the folder's")
        verify(path, entry.sha256)  # raises ChecksumError on a damaged transfer
        print(f"{seed_dir.name}/{model}: sha256 ok, seed {entry.provenance['seed']}, {entry.provenance['epochs']} epochs, "
              f"{entry.provenance['train_seconds']} s on {entry.provenance['device']}")
EOF
python -m dsnet.evidence.evaluate --zoo imagenette --data "$val" --runs "$runs" --no-timing --pipeline "${PIPELINE:-export}" \
  --json "$json"
