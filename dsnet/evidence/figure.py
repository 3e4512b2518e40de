"""The paper's Figure 5 for any images, and §4.4's "DSNet focuses better" as a measurement.

``python -m dsnet.evidence.figure --images DIR_OR_FILES --out fig5.png [--stats out.csv]``: columns are
images (titled with their class), rows are the input and one row per model. With ``--stats`` every
image of the folder is explained and per-image focus/faithfulness numbers go to a CSV, plus a
per-model summary (mean with a 95 % interval; how often each model's map is the most focused) in
OUT.summary.csv, and OUT.summary.json with the *paired* comparisons: for every number, each model
against ``--baseline`` (resnet50) on the same images, the mean difference with a paired bootstrap
95 % interval and the Wilcoxon signed-rank p (top-1 on those images: exact McNemar), plus the
command, commit, date and seconds per image. ``--from-csv CSV`` recomputes both summaries from a
saved per-image CSV without explaining anything. ``--crop N`` explains at another test size (N px,
the resize scaled with it as ``dsnet.evidence.evaluate --crops`` does: the manifest's resize / crop ratio,
rounded half up; ``--resize R`` sets it instead), so the same images can be measured at several sizes.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from dsnet.cam.images import ImageError, open_image
from dsnet.cam.render import grid
from dsnet.cam.service import METHODS, CamResult, TargetPolicy, explain
from dsnet.data.labelled import IMAGE_SUFFIXES, limit_per_class, scan_labelled, wnid_of
from dsnet.evidence.cli import refused
from dsnet.evidence.stats import compare_accuracy, compare_metric
from dsnet.zoo.loader import DEFAULT_MODELS, load_or_skip
from dsnet.zoo.manifest import load_manifest

STAT_FIELDS = ("top10_mass", "entropy", "confidence_change", "road")


@dataclass(frozen=True)
class ModelSummary:
    model: str
    images: int
    top1_accuracy: float | None  # over images whose label the model knows
    means: dict[str, tuple[float, float]]  # metric -> (mean, half-width of the 95 % interval)
    most_focused: float  # share of images where this model's map has the highest top10_mass


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % Student-t interval (nan for fewer than two values)."""
    from scipy import stats

    if len(values) < 2:
        return (values[0] if values else math.nan), math.nan
    return statistics.fmean(values), float(stats.t.ppf(0.975, len(values) - 1) * stats.sem(values))


def summarise(rows: list[dict]) -> list[ModelSummary]:
    models = list(dict.fromkeys(r["model"] for r in rows))
    by_image: dict[str, dict[str, float]] = {}
    for r in rows:
        by_image.setdefault(r["image"], {})[r["model"]] = r["top10_mass"]
    winners = [max(scores, key=scores.get) for scores in by_image.values() if len(scores) == len(models)]
    out = []
    for m in models:
        mine = [r for r in rows if r["model"] == m]
        labelled = [r for r in mine if r["correct"] != ""]
        out.append(
            ModelSummary(
                m,
                len(mine),
                100 * statistics.fmean(r["correct"] for r in labelled) if labelled else None,
                {f: mean_ci([r[f] for r in mine if r[f] is not None]) for f in STAT_FIELDS},
                winners.count(m) / len(winners) if winners else math.nan,
            )
        )
    return out


def paired(rows: list[dict], baseline: str = "resnet50") -> list[dict]:
    """Each model against ``baseline`` on the images both explained: every number of STAT_FIELDS
    (Wilcoxon signed-rank, paired bootstrap interval of the mean difference, model − baseline) and
    top-1 where the label is known (exact McNemar, points)."""
    by = {(r["image"], r["model"]): r for r in rows}
    images = list(dict.fromkeys(r["image"] for r in rows))
    out = []
    for m in dict.fromkeys(r["model"] for r in rows):
        common = [i for i in images if (i, m) in by and (i, baseline) in by]
        if m == baseline or not common:
            continue
        for f in STAT_FIELDS:
            c = compare_metric([by[i, baseline][f] for i in common], [by[i, m][f] for i in common])
            out.append({"a": baseline, "b": m, "metric": f, **c.as_dict()})
        labelled = [i for i in common if by[i, m]["correct"] != "" and by[i, baseline]["correct"] != ""]
        if labelled:
            c = compare_accuracy(
                [bool(by[i, baseline]["correct"]) for i in labelled], [bool(by[i, m]["correct"]) for i in labelled]
            )
            out.append({"a": baseline, "b": m, "metric": "top1 (points)", **c.as_dict(scale=100, digits=2)})
    return out


def read_rows(path: Path) -> list[dict]:
    """A per-image CSV written by ``--stats``, with its numbers as numbers again."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["correct"] = int(r["correct"]) if r["correct"] != "" else ""
        for k in ("probability", *STAT_FIELDS):
            r[k] = float(r[k]) if r[k] not in ("", None) else None
    return rows


def write_summaries(rows: list[dict], stats_path: Path, header: dict, baseline: str = "resnet50") -> None:
    """OUT.summary.csv (per model) and OUT.summary.json (per model + paired comparisons + provenance)."""
    summary = summarise(rows)
    summary_path = stats_path.with_suffix(".summary.csv")
    with open(summary_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["model", "images", "top1_accuracy", *(x for k in STAT_FIELDS for x in (k, k + "_ci95")), "most_focused"]
        )
        for s in summary:
            w.writerow(
                [
                    s.model,
                    s.images,
                    s.top1_accuracy,
                    *(round(x, 5) for k in STAT_FIELDS for x in s.means[k]),
                    round(s.most_focused, 4),
                ]
            )
    comparisons = paired(rows, baseline)
    json_path = stats_path.with_suffix(".summary.json")
    json_path.write_text(
        json.dumps(
            {
                **header,
                "per_image_csv": str(stats_path),
                "images": len({r["image"] for r in rows}),
                "baseline": baseline,
                "models": [
                    {
                        "model": s.model,
                        "images": s.images,
                        "top1_accuracy": s.top1_accuracy,
                        **{
                            k: {"mean": round(s.means[k][0], 5), "ci95_t": round(s.means[k][1], 5)} for k in STAT_FIELDS
                        },
                        "most_focused": round(s.most_focused, 4),
                    }
                    for s in summary
                ],
                "comparisons": comparisons,
            },
            indent=1,
        )
    )
    print(f"wrote {summary_path} and {json_path}")
    for s in summary:
        focus, ci = s.means["top10_mass"]
        print(
            f"{s.model:<10} top10_mass {focus:.3f} ± {ci:.3f}  most focused on {100 * s.most_focused:.0f}% "
            f"of images" + (f"  top-1 {s.top1_accuracy:.1f}%" if s.top1_accuracy is not None else "")
        )
    for c in comparisons:
        print(
            f"{c['b']} - {c['a']} {c['metric']:<18} {c['diff']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] "
            f"{c['test']} p = {c['p_value']:.2g} (n = {c['n']})"
        )


def collect_images(spec: list[str], per_class: int | None = None) -> list[Path]:
    paths: list[Path] = []
    for s in spec:
        p = Path(s)
        if p.is_dir():
            paths += (
                [it.path for it in limit_per_class(scan_labelled(p), per_class)]
                if _has_labels(p)
                else sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
            )
        elif p.is_file():
            paths.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    return paths


def _has_labels(folder: Path) -> bool:
    try:
        scan_labelled(folder)
        return True
    except FileNotFoundError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dsnet.evidence.figure",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--images", nargs="+", help="image files and/or folders")
    p.add_argument("--out", type=Path, help="the grid PNG")
    p.add_argument("--zoo", default="imagenette")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS))
    p.add_argument("--method", default="gradcam", choices=list(METHODS))
    p.add_argument("--target", default="auto", help='"auto" (true class when known, else top-1), "top1", or a class')
    p.add_argument("--columns", type=int, default=12, help="images shown in the grid (all are measured with --stats)")
    p.add_argument("--limit", type=int, help="use at most N images")
    p.add_argument("--per-class", type=int, help="in labelled folders, the first N images of every class")
    p.add_argument("--stats", type=Path, help="CSV of per-image numbers (+ OUT.summary.csv)")
    p.add_argument("--tile", type=int, default=160)
    p.add_argument("--device")
    p.add_argument("--baseline", default="resnet50", help="the model the paired comparisons are against")
    p.add_argument("--from-csv", type=Path, help="only recompute the summaries of a saved per-image CSV")
    p.add_argument(
        "--crop",
        type=int,
        help="test size in px (resize scaled as dsnet.evidence.evaluate --crops does; default: the manifest's)",
    )
    p.add_argument("--resize", type=int, help="with --crop: this resize instead of the scaled one")
    args = p.parse_args(argv)
    from dsnet.core.provenance import artifact_header

    header = artifact_header(argv, "dsnet.evidence.figure")
    if args.from_csv:
        write_summaries(read_rows(args.from_csv), args.from_csv, header, args.baseline)
        return 0
    if not args.images or not args.out:
        p.error("--images and --out are required (unless --from-csv)")

    paths = collect_images(args.images, args.per_class)[: args.limit]
    models = load_or_skip(args.zoo, args.models.split(","), args.device)
    if args.resize and not args.crop:
        p.error("--resize needs --crop")
    if args.crop:
        from dsnet.evidence.evaluate import scaled

        def at_size(pre):
            pre = scaled(pre, args.crop)
            return replace(pre, resize=args.resize) if args.resize else pre

        models = [replace(zm, entry=replace(zm.entry, preprocessing=at_size(zm.entry.preprocessing))) for zm in models]
    if not models or not paths:
        return refused(f"no model of zoo {args.zoo!r} is available" if not models else "no images")
    names = load_manifest().class_names()
    todo = paths if args.stats else paths[: args.columns]
    columns, rows = [], []
    started = time.perf_counter()
    for path in tqdm(todo, desc=f"explaining with {args.method}", unit="img"):
        wnid = wnid_of(path)
        known = wnid is not None and all(wnid in zm.labels.wnids for zm in models)
        target = (
            TargetPolicy("label", wnid)
            if args.target == "auto" and known
            else TargetPolicy.parse("top1" if args.target == "auto" else args.target, wnid)
        )
        try:
            results: list[CamResult] = explain(
                open_image(path), models, args.method, target, with_metrics=bool(args.stats)
            )
        except ImageError as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
            continue
        if len(columns) < args.columns:
            columns.append((names.get(wnid, path.stem), results))
        for r in results:
            f = r.faithfulness
            rows.append(
                {
                    "image": str(path),
                    "wnid": wnid or "",
                    "model": r.model,
                    "explained": r.explained.name,
                    "probability": round(r.explained.probability, 5),
                    "correct": int(r.top5[0].index == r.explained.index) if target.kind == "label" else "",
                    **({k: getattr(f, k) for k in STAT_FIELDS} if f else {k: None for k in STAT_FIELDS}),
                }
            )
    tiles = [[res[0].view for _, res in columns]] + [[res[i].overlay for _, res in columns] for i in range(len(models))]
    grid(tiles, [t for t, _ in columns], ["input"] + [zm.name for zm in models], args.tile).save(args.out)
    print(f"wrote {args.out} ({len(columns)} images x {len(models)} models)")
    if args.stats:
        seconds = time.perf_counter() - started
        with open(args.stats, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {args.stats}")
        images = len({r["image"] for r in rows})
        write_summaries(
            rows,
            args.stats,
            {
                **header,
                "method": args.method,
                "target": args.target,
                "seconds": round(seconds),
                "seconds_per_image": round(seconds / max(1, images), 2),
                "preprocessing": {
                    zm.name: {"resize": zm.entry.preprocessing.resize, "crop": zm.entry.preprocessing.crop}
                    for zm in models
                },
            },
            args.baseline,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
