"""Copy a labelled image folder as small WebP squares, to carry it to a remote GPU machine.

Each image becomes exactly what the training cache holds (``dsnet.data.labelled.decode_square``: shorter
side resized to SIZE, centre square), re-encoded lossy, in the ImageFolder layout that
``python -m dsnet.evidence.train --data`` reads. Imagenette's train split at 146 px, quality 80: 35 MB.

    python scripts/pack_images.py ../shared/data/imagenette/train .data/imagenette/train
    python scripts/pack_images.py ../shared/data/imagenette/val .data/imagenette/val --per-class 100
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from dsnet.data.labelled import decode_square, limit_per_class, scan_labelled


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--size", type=int, default=146, help="the training cache size (imagenette recipe: 146)")
    p.add_argument("--quality", type=int, default=80)
    p.add_argument("--per-class", type=int, help="keep the first N images of each class")
    args = p.parse_args()
    items = limit_per_class(scan_labelled(args.src), args.per_class)
    total = 0
    for it in tqdm(items, unit="img"):
        out = args.dst / it.wnid / f"{it.path.stem}.webp"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(decode_square(it.path, args.size).permute(1, 2, 0).numpy()).save(
            out, "WEBP", quality=args.quality
        )
        total += out.stat().st_size
    print(f"{len(items)} images, {total / 2**20:.1f} MB in {args.dst}")


if __name__ == "__main__":
    main()
