"""Is the map on the object? Ground-truth localisation of every model's maps, with paired tests.

``python -m dsnet.evidence.localise --data ../shared/data/ilsvrc-val-boxes --out docs/localisation-imagenette``
explains every image of the boxed ILSVRC2012 val set for its TRUE class with each model of the zoo
and each CAM method (the slow ones, AblationCAM and ScoreCAM, on the first ``--slow-per-class``
images of each class only: each costs a pass per batch of channels, seconds per map on two cores),
and scores each map against the boxes carried through the model's own view
(``dsnet.cam.localisation``): pointing game (tolerance 0, and 15 px), energy in the boxes beside the
boxes' share of the view, MaxBoxAccV2 (its per-image best IoU at the optimal tau).
The flat map and a centred Gaussian are scored on the same views as baselines.

Resumable: each (image, method, model) row, with its best-IoU-per-tau curve, is appended to
``--work``/rows.csv as it is made; a second run skips what is there. Then, from the rows only:

* OUT.csv: per image, method and model (or baseline): the numbers (no curves);
* OUT.json: per method and model: pointing accuracy, mean energy and coverage, MaxBoxAccV2, each with a
  bootstrap 95 % interval (MaxBoxAccV2's resamples images and re-picks tau); paired comparisons of
  every model with ResNet50 on the same images (exact McNemar on pointing hits, Wilcoxon signed-rank
  and paired bootstrap on energy and on per-image IoU); the same on the images whose boxes cover
  less than half of the view (Score-CAM's protocol, where a flat map cannot score well); the command,
  commit and date.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dsnet.cam.images import open_image
from dsnet.cam.localisation import (
    POINTING_TOLERANCE,
    THRESHOLDS,
    Box,
    MaxBoxAccV2,
    best_iou_curve,
    boxes_to_view,
    centre_gaussian,
    flat_map,
    read_boxes,
    score_map,
)
from dsnet.cam.service import METHODS, TargetPolicy, explain_model
from dsnet.core.provenance import artifact_header
from dsnet.evidence import stats
from dsnet.evidence.cli import positive, refused
from dsnet.zoo.loader import DEFAULT_MODELS, ZooError, load_or_skip

BASELINES = ("flat", "centre")
FIELDS = (
    "image",
    "wnid",
    "method",
    "model",
    "correct",
    "hit",
    "hit_tolerant",
    "hit_share",
    "peaks",
    "energy",
    "coverage",
    "iou_curve",
)
SMALL = 0.5  # boxes covering less than this share of the view: the "small objects" subset


def score(saliency: np.ndarray, boxes: list[Box]) -> dict:
    """One map's numbers against boxes already in its view (at least one), with its IoU curve."""
    s = score_map(saliency, boxes)
    curve = best_iou_curve(saliency, boxes)
    return {
        "hit": int(s.hit),
        "hit_tolerant": int(s.hit_tolerant),
        "hit_share": round(s.hit_share, 4),
        "peaks": s.peaks,
        "energy": "" if math.isnan(s.energy) else round(s.energy, 5),
        "coverage": round(s.coverage, 5),
        "iou_curve": " ".join(f"{v:.4f}" for v in curve),
    }


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def in_subset(method: str, index_in_class: int, slow_per_class: int) -> bool:
    """Whether an image (the ``index_in_class``-th of its class, from 1) is explained with ``method``."""
    return method == "-" or not METHODS[method].slow or index_in_class <= slow_per_class


def explain_all(
    data: Path, zoo: str, models: list[str], methods: list[str], slow_per_class: int, work: Path, limit: int | None
) -> list[dict]:
    boxes = read_boxes(data)
    images = sorted(boxes)[:limit] if limit else sorted(boxes)
    loaded = load_or_skip(zoo, models)
    if not loaded:
        raise ZooError(f"no model of zoo {zoo!r} can be loaded")
    work.mkdir(parents=True, exist_ok=True)
    rows_path = work / "rows.csv"
    done = {(r["image"], r["method"], r["model"]) for r in read_rows(rows_path)}
    seen_per_class: dict[str, int] = {}
    jobs = []
    for rel in images:
        wnid = boxes[rel][0].wnid
        seen_per_class[wnid] = seen_per_class.get(wnid, 0) + 1
        for method in methods:
            if not in_subset(method, seen_per_class[wnid], slow_per_class):
                continue
            for name in [zm.name for zm in loaded] + (list(BASELINES) if method == methods[0] else []):
                if (rel, method if name not in BASELINES else "-", name) not in done:
                    jobs.append((rel, wnid, method, name))
    new = not rows_path.exists()
    with open(rows_path, "a", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        if new:
            writer.writeheader()
        by_name = {zm.name: zm for zm in loaded}
        pre, opened = loaded[0].entry.preprocessing, (None, None)
        for rel, wnid, method, name in tqdm(jobs, desc="explaining boxed images", unit="map"):
            if opened[0] != rel:  # jobs come image by image: each file is decoded once
                opened = (rel, open_image(data / rel))
            image = opened[1]
            if name in BASELINES:
                view_boxes = [b for b in boxes_to_view(boxes[rel], image.image.size, pre) if b]
                shape = (pre.crop, pre.crop)
                saliency = flat_map(shape) if name == "flat" else centre_gaussian(shape)
                row = {
                    "image": rel,
                    "wnid": wnid,
                    "method": "-",
                    "model": name,
                    "correct": "",
                    **score(saliency, view_boxes),
                }
            else:
                zm = by_name[name]
                view_boxes = [b for b in boxes_to_view(boxes[rel], image.image.size, zm.entry.preprocessing) if b]
                result = explain_model(image, zm, method, TargetPolicy("label", wnid))
                correct = int(result.top5[0].index == result.explained.index)
                row = {
                    "image": rel,
                    "wnid": wnid,
                    "method": method,
                    "model": name,
                    "correct": correct,
                    **score(result.cam, view_boxes),
                }
            writer.writerow(row)
            f.flush()
    rows, index = [], {}
    for r in read_rows(rows_path):  # what this run asks for (an earlier one may have done more)
        key = (r["image"], r["method"], r["model"])
        if key in index:
            continue
        index[key] = True
        rows.append(r)
    order = {}
    for rel in images:
        order.setdefault(boxes[rel][0].wnid, []).append(rel)
    position = {rel: i + 1 for rels in order.values() for i, rel in enumerate(rels)}
    return [r for r in rows if r["image"] in position and in_subset(r["method"], position[r["image"]], slow_per_class)]


mean_ci = stats.mean_interval  # mean and 95 % bootstrap interval over images


def max_box_acc(curves: dict[str, np.ndarray], resamples: int = 1000, seed: int = 0) -> dict:
    """MaxBoxAccV2 with a bootstrap interval: images resampled, tau chosen again in every resample."""
    acc = MaxBoxAccV2()
    for key, curve in curves.items():
        acc.add_curve(key, curve)
    result = acc.result()
    stack = np.stack(list(curves.values()))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        sample = stack[rng.integers(0, len(stack), len(stack))]
        values.append(np.mean([((sample >= d / 100).mean(axis=0) * 100).max() for d in acc.deltas]))
    low, high = np.percentile(values, [2.5, 97.5])
    return {
        "value": round(result.value, 2),
        "ci95": [round(float(low), 2), round(float(high), 2)],
        "per_delta": {str(d): round(v, 2) for d, v in result.per_delta.items()},
        "optimal_tau": result.optimal_tau,
        "images": result.images,
    }, result.per_image_iou


def summarise(rows: list[dict], baseline: str = "resnet50") -> dict:
    """Everything OUT.json holds but the header, from the rows alone."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["model"]), []).append(r)
    out: dict = {"groups": {}, "comparisons": []}
    ious: dict[tuple[str, str], dict[str, float]] = {}
    for (method, model), rs in sorted(groups.items()):
        curves = {r["image"]: np.array([float(v) for v in r["iou_curve"].split()]) for r in rs}
        box, per_image_iou = max_box_acc(curves)
        ious[(method, model)] = per_image_iou
        for r in rs:  # the per-image IoU at the dataset's optimal tau, for OUT.csv and the plot
            r["iou"] = round(per_image_iou[r["image"]], 4)
        entry = {
            "images": len(rs),
            "pointing": mean_ci([int(r["hit"]) for r in rs]),
            "pointing_tolerant": mean_ci([int(r["hit_tolerant"]) for r in rs]),
            "pointing_share": round(float(np.mean([float(r["hit_share"]) for r in rs])), 4),
            "energy": mean_ci([float(r["energy"]) for r in rs if r["energy"] != ""]),
            "coverage": round(float(np.mean([float(r["coverage"]) for r in rs])), 4),
            "max_box_acc_v2": box,
            "iou_at_optimal_tau": mean_ci(list(per_image_iou.values())),
            "small_objects": None,
        }
        small = [r for r in rs if float(r["coverage"]) < SMALL]
        if small:
            entry["small_objects"] = {
                "images": len(small),
                "pointing": mean_ci([int(r["hit"]) for r in small]),
                "energy": mean_ci([float(r["energy"]) for r in small if r["energy"] != ""]),
                "coverage": round(float(np.mean([float(r["coverage"]) for r in small])), 4),
            }
        if rs[0]["correct"] != "":
            entry["top1"] = round(float(np.mean([int(r["correct"]) for r in rs])), 4)
        out["groups"][f"{method}/{model}"] = entry
    for (method, model), rs in sorted(groups.items()):
        if model in (baseline, *BASELINES) or (method, baseline) not in groups:
            continue
        base = {r["image"]: r for r in groups[(method, baseline)]}
        own = {r["image"]: r for r in rs}
        for subset in ("all", "small_objects"):
            keys = sorted(k for k in own if k in base and (subset == "all" or float(own[k]["coverage"]) < SMALL))
            if len(keys) < 2:
                continue
            a_hit, b_hit = [bool(int(base[k]["hit"])) for k in keys], [bool(int(own[k]["hit"])) for k in keys]
            m = stats.mcnemar(a_hit, b_hit)

            def energy(r):
                return float(r["energy"]) if r["energy"] != "" else math.nan

            out["comparisons"].append(
                {
                    "method": method,
                    "a": baseline,
                    "b": model,
                    "subset": subset,
                    "images": len(keys),
                    "pointing": {
                        **stats.compare_accuracy(a_hit, b_hit).as_dict(scale=100, digits=2),
                        "only_a": m.only_a,
                        "only_b": m.only_b,
                    },
                    "energy": stats.compare_metric(
                        [energy(base[k]) for k in keys], [energy(own[k]) for k in keys]
                    ).as_dict(digits=4),
                    "iou": stats.compare_metric(
                        [ious[(method, baseline)][k] for k in keys], [ious[(method, model)][k] for k in keys]
                    ).as_dict(digits=4),
                }
            )
    return out


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        fields = [k for k in FIELDS if k != "iou_curve"] + ["iou"]
        writer = csv.DictWriter(f, fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["image"], r["method"], r["model"])))


def plot(summary: dict, rows: list[dict], out: Path, focus_csv: Path | None = None, method: str = "gradcam") -> None:
    """The evidence at a glance: per method and model, pointing and MaxBoxAccV2 with their intervals (the
    centred-Gaussian baseline as a line); for ``method``, the per-image distributions of energy in the boxes
    and IoU, and (from a focus CSV of dsnet.evidence.figure) of top-10 % mass and ROAD."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = summary["groups"]
    models = [m for m in DEFAULT_MODELS if f"{method}/{m}" in groups]
    methods = sorted({k.split("/")[0] for k in groups if not k.startswith("-/")}, key=list(METHODS).index)
    colours = dict(zip(DEFAULT_MODELS, ("#7f7f7f", "#1f77b4", "#d62728")))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.2))
    for ax, key, title, scale in (
        (axes[0, 0], "pointing", "pointing game (% of images, peak in a box)", 100),
        (axes[0, 1], "max_box_acc_v2", "MaxBoxAccV2", 1),
    ):
        width = 0.8 / len(models)
        for j, m in enumerate(models):
            xs, ys, lo, hi = [], [], [], []
            for i, meth in enumerate(methods):
                g = groups.get(f"{meth}/{m}")
                if not g:
                    continue
                v = g[key]
                mean = v["mean"] * scale if "mean" in v else v["value"]
                xs.append(i + (j - (len(models) - 1) / 2) * width)
                ys.append(mean)
                lo.append(mean - v["ci95"][0] * scale)
                hi.append(v["ci95"][1] * scale - mean)
            ax.bar(xs, ys, width, yerr=[lo, hi], color=colours[m], label=m, capsize=2)
        centre = groups.get("-/centre")
        if centre:
            v = centre[key]
            ax.axhline(
                v["mean"] * scale if "mean" in v else v["value"], color="black", ls="--", lw=1, label="centred Gaussian"
            )
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8, loc="lower right")
    per_model = {m: [r for r in rows if r["method"] == method and r["model"] == m] for m in models}

    def boxes_of(ax, values: dict[str, list[float]], title: str, line: float | None = None, label: str = "") -> None:
        ax.boxplot([values[m] for m in models], tick_labels=models, showmeans=True)
        if line is not None:
            ax.axhline(line, color="black", ls="--", lw=1, label=label)
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)

    boxes_of(
        axes[0, 2],
        {m: [float(r["energy"]) for r in rs if r["energy"] != ""] for m, rs in per_model.items()},
        f"{method}: share of the map in the boxes",
        groups[f"{method}/{models[0]}"]["coverage"],
        "mean share of the view the boxes cover",
    )
    boxes_of(
        axes[1, 0],
        {m: [float(r["iou"]) for r in rs] for m, rs in per_model.items()},
        f"{method}: best IoU at the optimal threshold",
    )
    if focus_csv and focus_csv.is_file():
        with open(focus_csv, newline="") as f:
            focus = [r for r in csv.DictReader(f)]
        for ax, key, title in (
            (axes[1, 1], "top10_mass", "top-10 % mass (concentration; Imagenette val)"),
            (axes[1, 2], "road", "ROAD (faithfulness; Imagenette val)"),
        ):
            values = {
                m: [float(r[key]) for r in focus if r.get("model") == m and r.get(key) not in ("", None)]
                for m in models
            }
            if all(values.values()):
                boxes_of(ax, values, title)
            else:
                ax.set_axis_off()
    else:
        axes[1, 1].set_axis_off()
        axes[1, 2].set_axis_off()
    fig.suptitle(
        f"Localisation on {summary.get('images', '')} ILSVRC2012 val images (true class); 95 % intervals", fontsize=11
    )
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dsnet.evidence.localise",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="an ilsvrc-val-boxes folder (boxes.csv + <wnid>/*.JPEG)")
    p.add_argument("--out", type=Path, required=True, help="writes OUT.csv, OUT.json and OUT.png")
    p.add_argument(
        "--work",
        type=Path,
        default=Path("runs/localisation"),
        help="resumable rows (default: %(default)s, under runs/, which git ignores)",
    )
    p.add_argument("--zoo", default="imagenette", help="a zoo of the manifest (default: %(default)s)")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="models of the zoo (default: all three)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument(
        "--slow-per-class",
        type=int,
        default=2,
        help="the slow methods (AblationCAM, ScoreCAM) on this many images of each class (default: %(default)s)",
    )
    p.add_argument("--limit", type=positive, help="only the first N images (a quick look)")
    p.add_argument(
        "--focus-csv",
        type=Path,
        default=Path("docs/focus-imagenette-size160.csv"),
        help="per-image focus numbers (python -m dsnet.evidence.figure --stats) for the plot's last panels",
    )
    args = p.parse_args(argv)
    if not (args.data / "boxes.csv").is_file():
        p.error(f"no boxes.csv in {args.data}: expected an ilsvrc-val-boxes folder (boxes.csv + <wnid>/*.JPEG)")
    started = time.perf_counter()
    try:
        rows = explain_all(args.data, args.zoo, args.models, args.methods, args.slow_per_class, args.work, args.limit)
    except ZooError as e:
        return refused(e)
    # rows.csv may hold more methods or models from an earlier run than this one asks for
    rows = [r for r in rows if r["method"] in {*args.methods, "-"} and r["model"] in {*args.models, *BASELINES}]
    summary = summarise(rows)
    header = artifact_header(argv, "dsnet.evidence.localise")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out.with_suffix(".csv"))
    result = {
        **header,
        "data": str(args.data),
        "zoo": args.zoo,
        "images": len({r["image"] for r in rows}),
        "slow_methods": [m for m in args.methods if METHODS[m].slow],
        "slow_per_class": args.slow_per_class,
        "target": "the true class",
        "pointing_tolerance_px": POINTING_TOLERANCE,
        "thresholds": [float(THRESHOLDS[0]), float(THRESHOLDS[-1])],
        "small_objects_below": SMALL,
        "seconds": round(time.perf_counter() - started),
        **summary,
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    plot({**summary, "images": result["images"]}, rows, args.out.with_suffix(".png"), args.focus_csv)
    for key, g in summary["groups"].items():
        point = "    — " if key == "-/flat" else f"{100 * g['pointing']['mean']:5.1f}%"  # a flat map: every pixel ties
        print(
            f"{key:<26} pointing {point}  energy {g['energy']['mean']:.3f} "
            f"(boxes cover {g['coverage']:.3f})  MaxBoxAccV2 {g['max_box_acc_v2']['value']:.1f}",
            file=sys.stdout,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
