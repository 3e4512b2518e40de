#!/usr/bin/env bash
# The seed study on one GPU machine in one time-boxed call (issue 19, part 2): the shipped imagenette
# zoo (scripts/train_imagenette_zoo.sh, exactly the shipped recipe) for several seeds at once, six
# processes side by side. The first seed runs at normal CPU priority, each later one at a lower
# one (nice +10 per seed), so the first finishes first. After GUARD seconds everything still
# running is stopped, and what finished is packed into OUT, one tar per run (each under 16 MiB):
#   OUT/seed<N>-<model>.tar: seed<N>/<model>.safetensors (final weights, model state only; present
#   only if the run finished), seed<N>/manifest.json (its entry: SHA-256, provenance), the run's
#   seed<N>/<model>/log.jsonl and the tail of its output seed<N>/<model>.log; an unfinished run also
#   carries seed<N>/<model>/last.pt (resumable with --resume) while the total stays under MAX_MB.
#   OUT/seeds.json: per run, finished or not, epochs done, seconds.
# Unpack the tars into one folder (e.g. runs/imagenette-seeds) and evaluate with
# scripts/eval_seeds.sh (python -m dsnet.evaluate --runs).
#   scripts/gpu_seeds.sh DATA RUNS OUT    environment: SEEDS ("1 2"), GUARD (540 s), EPOCHS (the
#   recipe's 60), TRAIN_ARGS ("--threads 1 --workers 3": 16 cores for six processes, the shipped run's
#   3 loader workers, so each seed's augmentation draws are made the way seed 0's were), MAX_MB (60)
set -uo pipefail
cd "$(dirname "$0")/.."
data=$1 runs=$2 out=$3
guard=${GUARD:-540}
export TRAIN_ARGS=${TRAIN_ARGS:---threads 1 --workers 3}
mkdir -p "$runs" "$out"
started=$(date +%s)
niceness=0
for seed in ${SEEDS:-1 2}; do
  # timeout signals its whole process group: the script, its trainers and their loader workers
  SEED=$seed timeout -k 10 "$guard" nice -n "$niceness" scripts/train_imagenette_zoo.sh "$data" "$runs/seed$seed" \
    ${EPOCHS:+"$EPOCHS"} > "$runs/seed$seed.out" 2>&1 &
  niceness=$((niceness + 10))
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do  # progress every 30 s: the last epoch of every run
  sleep 5
  if [ $(( ($(date +%s) - started) % 30 )) -lt 5 ]; then
    line="$(( $(date +%s) - started )) s:"
    for log in "$runs"/seed*/*/log.jsonl; do
      [ -f "$log" ] && line+=" $(basename "$(dirname "$(dirname "$log")")")/$(basename "$(dirname "$log")")=$(wc -l < "$log")"
    done
    echo "$line"
  fi
done
wait
echo "stopped after $(( $(date +%s) - started )) s (guard $guard s)"
python - "$runs" "$out" "${MAX_MB:-60}" "$(( $(date +%s) - started ))" "$guard" <<'EOF'
import io, json, sys, tarfile
from pathlib import Path
runs, out, max_mb, seconds, guard = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
summary = {"seconds": seconds, "guard": guard, "runs": {}}
budget = max_mb * 2**20
plans = []
for seed_dir in sorted(runs.glob("seed*")):
    if not seed_dir.is_dir():
        continue
    for model in ("resnet50", "dsnet50", "ds2net50"):
        run = seed_dir / model
        log = run / "log.jsonl"
        weights = seed_dir / f"{model}.safetensors"
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        finished = weights.is_file()
        text = seed_dir / f"{model}.log"
        tail = text.read_bytes()[-20000:] if text.is_file() else b""
        files = [p for p in (weights, seed_dir / "manifest.json", log) if p.is_file()]
        summary["runs"][f"{seed_dir.name}/{model}"] = {
            "finished": finished, "epochs": len(rows), "train_seconds": round(sum(r["epoch_seconds"] for r in rows)),
            "last": rows[-1] if rows else None}
        plans.append((finished, seed_dir, model, files, tail))
# finished runs first; then unfinished ones may add last.pt while the total stays under MAX_MB
total = 0
for finished, seed_dir, model, files, tail in sorted(plans, key=lambda p: not p[0]):
    ckpt = seed_dir / model / "last.pt"
    size = sum(p.stat().st_size for p in files) + len(tail)
    if not finished and ckpt.is_file() and total + size + ckpt.stat().st_size < budget:
        files.append(ckpt)
        size += ckpt.stat().st_size
    if not files and not tail:
        continue
    total += size
    summary["runs"][f"{seed_dir.name}/{model}"]["returned"] = [str(p.relative_to(runs)) for p in files]
    tar_path = out / f"{seed_dir.name}-{model}.tar"
    with tarfile.open(tar_path, "w") as tar:
        for p in files:
            tar.add(p, arcname=str(p.relative_to(runs)))
        info = tarfile.TarInfo(f"{seed_dir.name}/{model}.log")
        info.size = len(tail)
        tar.addfile(info, io.BytesIO(tail))
    print(f"{tar_path.name}: {tar_path.stat().st_size / 2**20:.1f} MiB "
          f"({'finished' if finished else 'unfinished'}, {summary['runs'][f'{seed_dir.name}/{model}']['epochs']} epochs)")
summary["returned_mib"] = round(total / 2**20, 1)
(out / "seeds.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps({k: {kk: v[kk] for kk in ("finished", "epochs", "train_seconds")} for k, v in summary["runs"].items()}))
EOF
