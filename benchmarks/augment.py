"""The training augmentation on the CPU: dsnet.evidence.train's per-image path against dsnet.data.augment's batched one.

Both make one epoch's worth of batches (the recipe's 112 px random-resized crops + flips from the
146 px cache of N random images, batch 128), interleaved rounds, medians:
- per image: ``TensorImages`` + torchvision v2 ``RandomResizedCrop`` / ``RandomHorizontalFlip`` in a
  DataLoader (no workers: the same core count for both), as ``python -m dsnet.evidence.train`` does;
- batched: ``dsnet.data.augment.epoch_draws`` + ``resized_crops`` (two matrix products per batch), as
  ``python -m dsnet.evidence.seedstudy`` does on the device.

    python benchmarks/augment.py [--images 2048] [--rounds 5] [--threads 2] [--json docs/augment-cpu.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dsnet.core.provenance import artifact_header
from dsnet.data.augment import epoch_draws, resized_crops
from dsnet.data.labelled import TensorImages, train_transform
from dsnet.evidence.train import RECIPES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe = RECIPES["imagenette"]
    size, batch, scale = recipe.eval_resize, recipe.batch_size, (recipe.min_scale, 1.0)
    images = torch.randint(
        0, 256, (args.images, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    labels = list(range(args.images))
    dataset = TensorImages(images, labels, train_transform(recipe.train_crop, scale))

    def per_image(seed: int) -> None:
        loader = DataLoader(
            dataset,
            batch_size=batch,
            shuffle=True,
            drop_last=True,
            num_workers=0,
            generator=torch.Generator().manual_seed(seed),
        )
        for _ in loader:
            pass

    def batched(seed: int) -> None:
        draws = epoch_draws(args.images, seed, size, size, scale)
        for k in range(args.images // batch):
            sl = slice(k * batch, (k + 1) * batch)
            resized_crops(images[draws.order[sl]], draws.boxes[sl], draws.flip[sl], recipe.train_crop)

    times: dict[str, list[float]] = {"per_image": [], "batched": []}
    for r in range(args.rounds + 1):  # round 0 warms up
        for name, fn in (("per_image", per_image), ("batched", batched)):
            started = time.perf_counter()
            fn(r)
            if r:
                times[name].append(time.perf_counter() - started)
    n = args.images // batch * batch
    result = {
        name: {"median_seconds": round(statistics.median(t), 3), "images_per_second": round(n / statistics.median(t))}
        for name, t in times.items()
    }
    result["batched_over_per_image_speed"] = round(
        result["batched"]["images_per_second"] / result["per_image"]["images_per_second"], 2
    )
    out = {
        **artifact_header(argv, "benchmarks/augment.py"),
        "threads": args.threads,
        "images": n,
        "batch": batch,
        "rounds": args.rounds,
        "torch": str(torch.__version__),
        **result,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
