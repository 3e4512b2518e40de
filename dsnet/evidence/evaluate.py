"""Evaluate every model of a zoo on the same images, in the layout of the paper's Table 9 (plus accuracy).

``python -m dsnet.evidence.evaluate --zoo imagenette --data ../shared/data/imagenette/val --json out.json``.
``--data`` is an ImageFolder (``<wnid>/*.JPEG``, e.g. ImageNet's val folder) or a flat folder of
``<wnid>_*.JPEG`` files; images of classes outside a model's label set are counted and left out.

Every model sees the same images, and each image's top-1 correctness is kept, so models are
compared *paired*: for every model against ``--baseline`` (resnet50) the difference of top-1 with
a paired bootstrap 95 % interval and the exact McNemar test (``dsnet.evidence.stats``).

``--crops 128,160,192,224`` evaluates at several test sizes (the resize scaled with the crop, in
the ratio of the manifest's resize / crop, rounded half up), each size also compared, paired, with
the first. ``--runs DIR`` adds more trained copies of the zoo's models (``DIR/<run>/<model>.safetensors``,
e.g. one folder per seed); the shipped weights are the run ``seed<N>`` of their provenance. Within
each run, every model is compared with that run's baseline. ``--pipeline export`` measures the way
``dsnet.evidence.train --export`` does (torchvision: shorter side resized with antialiasing, centre-cropped
to a ``resize`` square, then the centre ``crop``) instead of the app's PIL preprocessing.
The ``--json`` artifact records the command, commit, date, image list and per-image correctness.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dsnet.cam.images import model_view, open_image, to_tensor
from dsnet.core.allocator import retain_freed_memory
from dsnet.core.provenance import artifact_header
from dsnet.data.labelled import LabelledImage, decode_square, limit_per_class, scan_labelled, standardize, topk_hits
from dsnet.evidence import stats
from dsnet.evidence.cli import positive, refused
from dsnet.zoo.loader import ZooModel, build, load_or_skip, load_state
from dsnet.zoo.manifest import PROTOCOLS, Preprocessing, load_manifest, protocol
from dsnet.zoo.weights import read_state_dict

PIPELINES = tuple(PROTOCOLS)  # app: the app's PIL preprocessing; export: dsnet.evidence.train's (the manifest's)


@dataclass(frozen=True)
class ModelReport:
    model: str
    images: int
    skipped: int  # images whose class is not in the model's label set
    top1: float
    top5: float
    params_m: float
    gmacs: float  # multiply-accumulates of one forward at the model's input size
    latency_ms: float | None  # median CPU forward, batch 1 (None: not measured)
    train_memory_mb: float | None  # one training step (batch 32): see ``train_step_memory``
    run: str = "zoo"  # which trained copy (e.g. seed0 = the shipped weights)
    weights: str = ""
    crop: int = 0
    resize: int = 0
    correct: str = field(default="", repr=False)  # per used image, in order: "1" top-1 right, "0" wrong
    protocol: str = ""  # how each image became the model's input (``dsnet.zoo.manifest.protocol``)


def scaled(pre: Preprocessing, crop: int) -> Preprocessing:
    """The preprocessing at another test size: the resize keeps the manifest's resize / crop ratio."""
    return replace(pre, crop=crop, resize=math.floor(crop * pre.resize / pre.crop + 0.5))


class _Views(Dataset):
    def __init__(
        self, items: list[LabelledImage], labels: list[int], pre: Preprocessing, pipeline: str = "app"
    ) -> None:
        self.items, self.labels, self.pre, self.pipeline = items, labels, pre, pipeline

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        if self.pipeline == "export":  # = dsnet.evidence.train's cache (a resize square) + eval_transform's centre crop
            from torchvision.transforms.v2.functional import center_crop

            image = center_crop(decode_square(self.items[i].path, self.pre.resize), self.pre.crop)
            return standardize(image[None], self.pre.mean, self.pre.std)[0], self.labels[i]
        view = model_view(open_image(self.items[i].path).image, self.pre)
        return to_tensor(view, self.pre)[0], self.labels[i]


def predictions(
    models: list[ZooModel],
    items: list[LabelledImage],
    pre: Preprocessing,
    pipeline: str = "app",
    batch_size: int = 64,
    workers: int = 2,
) -> list[tuple[list[bool], list[bool]]]:
    """Per model, per image of ``items`` (all in every model's label set): (top-1 right, top-5 right).

    Each image is decoded once and shown to every model (they share ``pre``).
    """
    wnids = models[0].labels.wnids
    if any(zm.labels.wnids != wnids for zm in models):
        raise ValueError(
            "models compared on one loader must share a label set: "
            + ", ".join(f"{zm.name} has {len(zm.labels.wnids)} classes" for zm in models)
        )
    lookup = {w: i for i, w in enumerate(wnids)}
    loader = DataLoader(
        _Views(items, [lookup[it.wnid] for it in items], pre, pipeline), batch_size=batch_size, num_workers=workers
    )
    out: list[tuple[list[bool], list[bool]]] = [([], []) for _ in models]
    with torch.inference_mode():
        for x, y in tqdm(loader, desc=f"{len(models)} model(s) at {pre.crop} px", unit="batch", leave=False):
            for zm, (top1, top5) in zip(models, out):
                hit1, hit5 = topk_hits(zm.model(x.to(zm.device)).cpu(), y)
                top1 += hit1.tolist()
                top5 += hit5.tolist()
    return out


def gmacs(model: nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    return counter.get_total_flops() / 2e9


def latency_ms(model: nn.Module, size: int, repeats: int = 20) -> float:
    """Median CPU forward of one image, on a private CPU copy (the shared model stays where it is)."""
    x = torch.randn(1, 3, size, size)
    model = copy.deepcopy(model).cpu()
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):
            started = time.perf_counter()
            model(x)
            if i >= 3:
                times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def train_step_memory(model: nn.Module, size: int, batch: int = 32) -> float:
    """MB held by one training step: the tensors autograd saves for backward, plus weights and grads.

    On CUDA this is the allocator's peak; on the CPU it is counted exactly (unique storages),
    which is what dominates the paper's GPU memory column (Table 9) and does not depend on the
    allocator or on other processes.
    The step runs on a private copy on the model's own device: the shared (served) model is never
    moved or switched to training mode.
    """
    model = copy.deepcopy(model).train()
    device = next(model.parameters()).device
    x = torch.randn(batch, 3, size, size, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        model(x).sum().backward()
        return torch.cuda.max_memory_allocated(device) / 2**20
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).sum()
    loss.backward()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return (sum(saved.values()) + 2 * weights) / 2**20


def load_runs(
    zoo: str, names: list[str], runs: Path | None = None, device: str | None = None
) -> list[tuple[str, ZooModel]]:
    """(run, model) pairs: the zoo's shipped weights as run ``seed<N>``, then every
    ``runs/<run>/<model>.safetensors``."""
    loaded = load_or_skip(zoo, names, device)
    out = [(f"seed{zm.entry.provenance['seed']}" if "seed" in zm.entry.provenance else "zoo", zm) for zm in loaded]
    for folder in sorted(p for p in (runs.iterdir() if runs else ()) if p.is_dir()):
        for zm in loaded:
            path = folder / f"{zm.name}.safetensors"
            if path.is_file():
                model = build(zm.entry)
                load_state(model, read_state_dict(path, "safetensors"), str(path))
                out.append((folder.name, replace(zm, model=model.eval().to(zm.device))))
    return out


def evaluate_zoo(
    zoo: str,
    data: Path,
    models: list[str] | None = None,
    timing: bool = True,
    crops: list[int] | None = None,
    runs: Path | None = None,
    pipeline: str = "app",
    latency: bool = True,
    per_class: int | None = None,
) -> list[ModelReport]:
    """One report per (test size, run, model), in that order; latency (unless ``latency`` is false)
    and memory at the first size only, when ``timing``; ``per_class``: the first N images of each class."""
    manifest = load_manifest()
    loaded = load_runs(zoo, models or list(manifest.zoo(zoo).entries), runs)
    items = limit_per_class(scan_labelled(data), per_class)
    reports = []
    for c, crop in enumerate(crops or [None]):
        groups: dict[tuple, list[tuple[str, ZooModel]]] = {}  # models sharing a preprocessing share a loader
        for run, zm in loaded:
            pre = scaled(zm.entry.preprocessing, crop) if crop else zm.entry.preprocessing
            groups.setdefault((pre, tuple(zm.labels.wnids)), []).append((run, zm))
        done = {}
        for (pre, wnids), members in groups.items():
            used = [it for it in items if it.wnid in set(wnids)]
            for (run, zm), (top1, top5) in zip(members, predictions([zm for _, zm in members], used, pre, pipeline)):
                n = max(1, len(used))
                timed = timing and c == 0
                done[(run, zm.name)] = ModelReport(
                    zm.name,
                    len(used),
                    len(items) - len(used),
                    round(100 * sum(top1) / n, 2),
                    round(100 * sum(top5) / n, 2),
                    round(zm.num_params / 1e6, 3),
                    round(gmacs(zm.model, pre.crop), 3),
                    round(latency_ms(zm.model, pre.crop), 2) if timed and latency else None,
                    round(train_step_memory(zm.model, pre.crop), 1) if timed else None,
                    run,
                    _weights_label(zm, run, runs),
                    pre.crop,
                    pre.resize,
                    "".join("01"[v] for v in top1),
                    protocol(pipeline, pre),
                )
        reports += [done[(run, zm.name)] for run, zm in loaded]
    return reports


def _weights_label(zm: ZooModel, run: str, runs: Path | None) -> str:
    if runs and (runs / run / f"{zm.name}.safetensors").is_file():
        return str(runs / run / f"{zm.name}.safetensors")
    return f"{zm.entry.file} (sha256 {zm.entry.sha256})"


def compare(reports: list[ModelReport], baseline: str = "resnet50") -> list[dict]:
    """Every model against ``baseline`` at the same size and run, and every size against the first
    size for the same model and run: top-1 difference in points, paired bootstrap 95 % interval, exact McNemar."""
    out = []
    first_crop = reports[0].crop if reports else None
    index = {(r.crop, r.run, r.model): r for r in reports}
    for r in reports:
        pairs = []
        if r.model != baseline and (r.crop, r.run, baseline) in index:
            pairs.append(("model", index[(r.crop, r.run, baseline)]))
        if r.crop != first_crop and (first_crop, r.run, r.model) in index:
            pairs.append(("size", index[(first_crop, r.run, r.model)]))
        for kind, a in pairs:
            if a.images != r.images:
                continue  # not the same images
            a_right, b_right = [ch == "1" for ch in a.correct], [ch == "1" for ch in r.correct]
            m = stats.mcnemar(a_right, b_right)
            out.append(
                {
                    "kind": kind,
                    "run": r.run,
                    "a": {"model": a.model, "crop": a.crop},
                    "b": {"model": r.model, "crop": r.crop},
                    "metric": "top1 (points)",
                    **stats.compare_accuracy(a_right, b_right).as_dict(scale=100, digits=2),
                    "only_a_right": m.only_a,
                    "only_b_right": m.only_b,
                }
            )
    return sorted(out, key=lambda c: c["kind"] != "model")  # models first, then sizes (stable)


def describe(c: dict) -> str:
    a, b = c["a"], c["b"]
    what = (
        f"{b['model']} - {a['model']} ({a['crop']} px)"
        if c["kind"] == "model"
        else f"{b['model']} {b['crop']} px - {a['crop']} px"
    )
    return (
        f"{what:<28} {c['diff']:+6.2f} points [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]  McNemar p = "
        f"{c['p_value']:.2g} (only {a['model'] if c['kind'] == 'model' else a['crop']} right: {c['only_a_right']}, "
        f"only {b['model'] if c['kind'] == 'model' else b['crop']} right: {c['only_b_right']})"
    )


def table(reports: list[ModelReport]) -> str:
    """Table 9's layout (memory, time) next to accuracy; ratios are relative to the first row.
    A column nothing was measured for is left out."""
    base = reports[0]
    timed = [
        (title, key, width, digits)
        for title, key, width, digits in (
            ("Train mem (MB)", "train_memory_mb", 8, 1),
            ("CPU latency (ms)", "latency_ms", 9, 2),
        )
        if any(getattr(r, key) is not None for r in reports)
    ]

    def cell(r, key, width, digits):
        v, b = getattr(r, key), getattr(base, key)
        return f"{v:>{width}.{digits}f} ({v / b:.2f}x)" if v is not None and b else f"{'-':>{width + 8}}"

    lines = [
        f"{'Architecture':<12} {'run':<6} {'crop':>4} {'Top-1':>6} {'Top-5':>6} {'Params(M)':>9} {'GMACs':>6}"
        + "".join(f" {title:>{width + 8}}" for title, _, width, _ in timed)
    ]
    for r in reports:
        lines.append(
            f"{r.model:<12} {r.run:<6} {r.crop:>4} {r.top1:>6.2f} {r.top5:>6.2f} {r.params_m:>9.3f} {r.gmacs:>6.3f}"
            + "".join(f" {cell(r, key, width, digits)}" for _, key, width, digits in timed)
        )
    lines += [f"top-1 and top-5 (%) with {p}" for p in dict.fromkeys(r.protocol for r in reports) if p]
    lines.append(
        f"images: {base.images} used"
        + (f", {base.skipped} skipped (class not in the label set)" if base.skipped else "")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dsnet.evidence.evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--zoo", default="imagenette")
    p.add_argument("--data", type=Path, required=True, help="labelled image folder")
    p.add_argument("--models", help="comma-separated (default: every model of the zoo)")
    p.add_argument("--baseline", default="resnet50", help="the model every other is compared with")
    p.add_argument("--crops", help="comma-separated test sizes, e.g. 128,160,192,224 (default: the manifest's)")
    p.add_argument("--runs", type=Path, help="more trained copies: RUNS/<run>/<model>.safetensors")
    p.add_argument(
        "--pipeline",
        choices=PIPELINES,
        default="app",
        help="app: the app's PIL preprocessing (default); export: dsnet.evidence.train's, which the "
        "manifest's metrics (python -m dsnet.zoo list) were measured with",
    )
    p.add_argument("--no-timing", action="store_true", help="skip latency and memory measurements")
    p.add_argument(
        "--no-latency",
        action="store_true",
        help="skip the latency (one CPU image, noise-dominated on a shared machine); keep memory",
    )
    p.add_argument(
        "--limit-per-class",
        "--limit",
        type=positive,
        metavar="N",
        help="a quick look: only the first N images of each class (per class, so that every class "
        "stays in the comparison; the first N images would be the first classes only)",
    )
    p.add_argument("--json", type=Path, help="write the artifact here (nothing is written without it)")
    args = p.parse_args(argv)
    header = artifact_header(argv, "dsnet.evidence.evaluate")
    retain_freed_memory()
    crops = [int(c) for c in args.crops.split(",")] if args.crops else None
    reports = evaluate_zoo(
        args.zoo,
        args.data,
        args.models.split(",") if args.models else None,
        not args.no_timing,
        crops,
        args.runs,
        args.pipeline,
        not args.no_latency,
        args.limit_per_class,
    )
    if not reports:
        return refused(f"no model of zoo {args.zoo!r} is available")
    comparisons = compare(reports, args.baseline)
    print(table(reports))
    for c in comparisons:
        print(describe(c))
    if args.json:
        manifest = load_manifest()
        known = set(manifest.labels(manifest.entry(args.zoo, reports[0].model)).wnids)
        items = [
            it for it in limit_per_class(scan_labelled(args.data), args.limit_per_class) if it.wnid in known
        ]  # the images "correct" is over, as evaluate_zoo picked them
        args.json.write_text(
            json.dumps(
                {
                    **header,
                    "zoo": args.zoo,
                    "data": str(args.data),
                    "pipeline": args.pipeline,
                    "baseline": args.baseline,
                    "crops": sorted({r.crop for r in reports}, key=[r.crop for r in reports].index),
                    "runs": list(dict.fromkeys(r.run for r in reports)),
                    "models": [{k: v for k, v in asdict(r).items() if k != "correct"} for r in reports],
                    "comparisons": comparisons,
                    "per_image": {
                        "images": [str(it.path.relative_to(args.data)) for it in items],
                        "correct": {f"{r.run}/{r.model}/{r.crop}": r.correct for r in reports},
                    },
                },
                indent=1,
            )
        )
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
