"""One image, every model of a zoo: ``python -m dsnet.evidence.explain IMAGE --out fig.png --json out.json``."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from dsnet.cam.images import ImageError, open_image
from dsnet.cam.service import METHODS, CamResult, TargetPolicy, comparison, explain
from dsnet.core.provenance import artifact_header
from dsnet.data.labelled import wnid_of
from dsnet.evidence.cli import refused
from dsnet.zoo.loader import DEFAULT_MODELS, ZooError, load_or_skip


def result_json(r: CamResult) -> dict:
    """Everything of a result but its pixel arrays (the PNG carries those)."""
    d = {k: v for k, v in dataclasses.asdict(r).items() if k not in ("view", "cam", "overlay")}
    d["cam_shape"] = list(r.cam.shape)
    return d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dsnet.evidence.explain", description=__doc__)
    p.add_argument("image", type=Path)
    p.add_argument("--zoo", default="imagenette")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated zoo model names")
    p.add_argument("--method", default="gradcam", choices=list(METHODS))
    p.add_argument(
        "--target",
        default="top1",
        help='"top1" (each model\'s own), "label" (the true class, from a <wnid>/ folder or a <wnid>_ file '
        "name), or a class name/index",
    )
    p.add_argument("--opacity", type=float, default=0.5)
    p.add_argument("--metrics", action="store_true", help="add focus and faithfulness numbers (slower)")
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    p.add_argument("--out", type=Path, help="side-by-side PNG")
    p.add_argument("--json", type=Path, help="results as JSON")
    args = p.parse_args(argv)

    try:
        target = TargetPolicy.parse(args.target, wnid_of(args.image))
        image = open_image(args.image)
        models = load_or_skip(args.zoo, args.models.split(","), args.device)
        if not models:
            raise ZooError(f"no model of zoo {args.zoo!r} is available")
        results = explain(image, models, args.method, target, args.opacity, args.metrics)
    except (ImageError, ZooError, ValueError) as e:
        return refused(e)
    for r in results:
        top = ", ".join(f"{t.name} {100 * t.probability:.1f}%" for t in r.top5)
        print(
            f"{r.model:<10} explains {r.explained.name!r} ({100 * r.explained.probability:.1f}%) "
            f"in {r.seconds * 1000:.0f} ms | top-5: {top}"
        )
        if r.faithfulness:
            f = r.faithfulness
            print(
                f"{'':<10} focus: top-10% mass {f.top10_mass:.3f}, entropy {f.entropy:.3f} · faithfulness: "
                f"confidence change {f.confidence_change:+.3f}, ROAD {f.road:+.3f}"
            )
    if args.out:
        comparison(results).save(args.out)
        print(f"wrote {args.out}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    **artifact_header(argv, "dsnet.evidence.explain"),
                    "image": str(args.image),
                    "zoo": args.zoo,
                    "method": args.method,
                    "results": [result_json(r) for r in results],
                },
                indent=1,
            )
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
