"""Many runs of one training recipe side by side in one process: the seed study on one GPU.

``python -m dsnet.evidence.seedstudy --data DIR --runs DIR --seeds 0 1 2 3 4`` trains every (seed, model)
of the recipe at once. ``dsnet.evidence.train`` is bound by kernel launches and data loading at the zoo's
0.25x width (about 90 ms a step on an H200 with three processes); here the step is cheap:

* the decoded training set (the recipe's 146 px cache) lives on the device, and each batch is
  augmented there by ``dsnet.data.augment`` (the same sample order as the DataLoader for the same epoch
  seed; the same crop-box and flip distributions, drawn from the same per-epoch seed);
* on CUDA the whole step (augmentation, forward, backward, SGD) is one CUDA graph per run,
  replayed on a stream of its own, so the runs overlap on the GPU; bf16 autocast (fp16 needs a loss
  scaler whose skip test stops the CPU every step); SGD is PyTorch's fused kernel with the lr as a
  tensor that the schedule fills. On the CPU (tests, small checks) the same step runs eagerly.

A time budget keeps the study inside one time-boxed call: after every epoch from the third on, the
highest seeds are dropped until the projected end (the last epoch's time per run, times the runs
left) fits; finished runs are exported (safetensors + a manifest entry, as ``dsnet.evidence.train --export``)
and packed one tar per seed. ``RUNS/study.json`` (and its copy beside the tars) is rewritten every epoch.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import shutil
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dsnet.core.files import cache_root
from dsnet.data.augment import epoch_draws, resized_crops
from dsnet.data.labelled import (
    cached_images,
    class_index,
    eval_transform,
    limit_per_class,
    scan_labelled,
    standardize,
    topk_hits,
)
from dsnet.evidence.train import (
    RECIPES,
    Dist,
    TrainConfig,
    build_model,
    export,
    lr_factor,
    param_groups,
    peak_lr,
    run_record,
    training_device,
)
from dsnet.zoo.manifest import IMAGENET_MEAN, IMAGENET_STD, MANIFEST_PATH

MODELS = ("resnet50", "dsnet50", "ds2net50")
PIPELINE = (
    "dsnet.evidence.seedstudy: the 146 px training set on the device, dsnet.data.augment's batched random-resized crop "
    "and flip (the DataLoader's sample order), one CUDA graph per run, bf16 autocast, fused SGD"
)
WARMUP_STEPS = 3  # eager steps before a capture (cuDNN picks its kernels, SGD makes its momentum buffers)


@dataclass
class DeviceData:
    """The recipe's decoded images on the training device: train as the 146 px cache (uint8), val as
    the model sees it (resize + centre crop, uint8)."""

    wnids: list[str]
    train: Tensor
    train_labels: Tensor
    val: Tensor
    val_labels: Tensor


def load_device_data(
    data: Path, recipe, cache_dir: Path, device: torch.device, per_class: int | None = None
) -> DeviceData:
    train_items = limit_per_class(scan_labelled(data / "train"), per_class)
    val_items = limit_per_class(scan_labelled(data / "val"), per_class)
    wnids = sorted({it.wnid for it in train_items})
    size = max(recipe.eval_resize, recipe.train_crop)
    train = cached_images(train_items, size, cache_dir)
    val = eval_transform(recipe.eval_resize, recipe.eval_crop)(cached_images(val_items, size, cache_dir))
    return DeviceData(
        wnids,
        train.to(device),
        torch.tensor(class_index(train_items, wnids), device=device),
        val.to(device),
        torch.tensor(class_index(val_items, wnids), device=device),
    )


@dataclass
class Run:
    """One (seed, model) of the study: its model, optimiser, stream, static step buffers and graphs."""

    cfg: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr: list[Tensor]  # the tensors the optimiser reads its lr from (one per group)
    stream: Any  # torch.cuda.Stream on CUDA, else None
    index: Tensor  # this step's samples
    boxes: Tensor
    flip: Tensor
    sums: Tensor  # train loss sum, train correct, val loss sum, val top-1, val top-5
    history: list[dict] = field(default_factory=list)
    graph: Any = None  # the captured training step
    eval_graph: Any = None
    capture_error: str | None = None
    epoch_started: float = 0.0
    draws: Any = None  # this epoch's order, boxes and flips on the device
    lr_value: float = 0.0  # the lr of the last step

    @property
    def name(self) -> str:
        return f"seed{self.cfg.seed}/{self.cfg.model}"


class Study:
    """Every run of the study and the shared data; ``step`` and ``evaluate`` are what the graphs hold."""

    def __init__(self, data: DeviceData, recipe, device: torch.device, amp: bool, eval_batch: int = 250) -> None:
        self.data, self.recipe, self.device, self.amp = data, recipe, device, amp
        self.mean = torch.tensor(IMAGENET_MEAN, device=device)
        self.std = torch.tensor(IMAGENET_STD, device=device)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        self.batch = recipe.batch_size
        self.steps_per_epoch = len(data.train_labels) // self.batch
        self.eval_chunks = [
            (i, min(i + eval_batch, len(data.val_labels))) for i in range(0, len(data.val_labels), eval_batch)
        ]
        if self.steps_per_epoch == 0:
            raise ValueError(f"batch size {self.batch} is larger than the training set ({len(data.train_labels)})")

    def autocast(self):
        # cache_enabled=False: autocast's weight cache must not outlive a graph capture
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=False)

    def model_input(self, images: Tensor) -> Tensor:
        return standardize(images, self.mean, self.std).contiguous(memory_format=torch.channels_last)

    def step(self, run: Run) -> None:
        """One training step on the samples in ``run.index`` (no host synchronisation: capturable)."""
        images = resized_crops(self.data.train[run.index], run.boxes, run.flip, self.recipe.train_crop)
        labels = self.data.train_labels[run.index]
        with self.autocast():
            logits = run.model(self.model_input(images))
            loss = self.criterion(logits, labels)
        loss.backward()
        run.optimizer.step()
        run.sums[0].add_(loss.detach().float() * len(labels))
        run.sums[1].add_((logits.argmax(1) == labels).sum())

    def evaluate(self, run: Run) -> None:
        """Val loss sum, top-1 and top-5 counts into ``run.sums[2:]`` (eval mode, fp32 as dsnet.evidence.train)."""
        run.sums[2:].zero_()
        with torch.no_grad():
            for a, b in self.eval_chunks:
                labels = self.data.val_labels[a:b]
                logits = run.model(self.model_input(self.data.val[a:b])).float()
                top1, top5 = topk_hits(logits, labels)
                run.sums[2].add_(nn.functional.cross_entropy(logits, labels, reduction="sum"))
                run.sums[3].add_(top1.sum())
                run.sums[4].add_(top5.sum())

    def new_run(self, cfg: TrainConfig) -> Run:
        model = build_model(cfg, len(self.data.wnids), self.device, Dist())
        cuda = self.device.type == "cuda"
        lr = torch.tensor(peak_lr(self.recipe) * lr_factor(self.recipe, 0, self.steps_per_epoch), device=self.device)
        optimizer = torch.optim.SGD(
            param_groups(model, self.recipe.weight_decay),
            lr=lr,
            momentum=self.recipe.momentum,
            nesterov=self.recipe.nesterov,
            fused=cuda or None,
        )
        lrs = [g["lr"] for g in optimizer.param_groups]
        if not all(isinstance(t, Tensor) for t in lrs):
            raise RuntimeError("this PyTorch's SGD does not keep a tensor lr")
        stream = torch.cuda.Stream(self.device) if cuda else None
        with self.on(stream):
            z = dict(device=self.device, dtype=torch.long)
            run = Run(
                cfg,
                model,
                optimizer,
                lrs,
                stream,
                torch.zeros(self.batch, **z),
                torch.zeros(self.batch, 4, **z),
                torch.zeros(self.batch, dtype=torch.bool, device=self.device),
                torch.zeros(5, device=self.device, dtype=torch.float64),
            )
        return run

    @staticmethod
    def on(stream):
        return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()

    def begin_epoch(self, run: Run, epoch: int) -> None:
        h, w = self.data.train.shape[-2:]
        draws = epoch_draws(
            len(self.data.train_labels), run.cfg.seed * 100003 + epoch, h, w, (self.recipe.min_scale, 1.0)
        )
        with self.on(run.stream):
            run.draws = [t.to(self.device) for t in (draws.order, draws.boxes, draws.flip)]
            run.sums[:2].zero_()
        run.epoch_started = time.perf_counter()

    def train_step(self, run: Run, epoch: int, k: int) -> None:
        """Step ``k`` of ``epoch``: its samples and lr into the static buffers, then the graph (or eagerly)."""
        order, boxes, flip = run.draws
        lo, hi = k * self.batch, (k + 1) * self.batch
        value = peak_lr(self.recipe) * lr_factor(self.recipe, epoch * self.steps_per_epoch + k, self.steps_per_epoch)
        run.lr_value = value
        with self.on(run.stream):
            for t in run.lr:
                t.fill_(value)
            run.index.copy_(order[lo:hi])
            run.boxes.copy_(boxes[lo:hi])
            run.flip.copy_(flip[lo:hi])
            if run.graph is not None:
                run.graph.replay()
            else:
                run.optimizer.zero_grad(set_to_none=True)
                self.step(run)
                if self.device.type == "cuda" and k + 1 == WARMUP_STEPS and epoch == 0 and run.capture_error is None:
                    self.capture(run)

    def capture(self, run: Run) -> None:
        """The training step and the evaluation as CUDA graphs (after the eager warm-up steps); on any
        failure the run goes on eagerly, and says why."""
        try:
            run.optimizer.zero_grad(set_to_none=True)  # backward allocates the grads in the graph's pool
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=run.stream):
                self.step(run)
            run.model.eval()
            self.evaluate(run)  # warm-up of the eval shapes
            eval_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(eval_graph, stream=run.stream):
                self.evaluate(run)
            run.graph, run.eval_graph = graph, eval_graph
        except Exception as e:
            run.capture_error = f"{type(e).__name__}: {e}"[:300]
            run.graph = run.eval_graph = None
            run.stream = torch.cuda.Stream(self.device)
            print(f"{run.name}: CUDA graph capture failed, training eagerly ({run.capture_error})", flush=True)
        finally:
            run.model.train()

    def end_epoch(self, run: Run, epoch: int) -> dict:
        with self.on(run.stream):
            run.model.eval()
            if run.eval_graph is not None:
                run.eval_graph.replay()
            else:
                self.evaluate(run)
            run.model.train()
            loss, correct, val_loss, top1, top5 = run.sums.tolist()  # waits for this run's stream only
        seen, n_val = self.steps_per_epoch * self.batch, len(self.data.val_labels)
        seconds = time.perf_counter() - run.epoch_started
        row = {
            "epoch": epoch + 1,
            "train_loss": loss / seen,
            "train_top1": 100 * correct / seen,
            "val_loss": val_loss / n_val,
            "val_top1": 100 * top1 / n_val,
            "val_top5": 100 * top5 / n_val,
            "lr": run.lr_value,
            "epoch_seconds": seconds,
            "images_per_second": seen / seconds,
        }
        run.history.append(row)
        return row


def rounding_check(study: Study, run: Run, dtype: torch.dtype) -> dict[str, Any]:
    """The val predictions of the weights as trained and rounded to ``dtype`` (as exported): how many differ."""

    def predictions(model: nn.Module) -> Tensor:
        with torch.no_grad():
            return torch.cat(
                [model(study.model_input(study.data.val[a:b])).float().argmax(1) for a, b in study.eval_chunks]
            )

    with study.on(run.stream):
        run.model.eval()
        rounded = copy.deepcopy(run.model)
        with torch.no_grad():
            for t in rounded.state_dict().values():
                if t.is_floating_point():
                    t.copy_(t.to(dtype))
        a, b = predictions(run.model), predictions(rounded)
        labels = study.data.val_labels
        return {
            "dtype": str(dtype).removeprefix("torch."),
            "val_images": len(labels),
            "top1_trained": round(100 * (a == labels).float().mean().item(), 2),
            "top1_rounded": round(100 * (b == labels).float().mean().item(), 2),
            "predictions_changed": int((a != b).sum().item()),
        }


def seeds_that_fit(
    seeds: list[int], models_per_seed: int, epoch_seconds_per_run: float, epochs_left: int, seconds_left: float
) -> list[int]:
    """The rule fixed before the study ran: keep the lowest seeds, as many as the time left allows at
    the last epoch's cost per run (at least one)."""
    keep = len(seeds)
    while keep > 1 and keep * models_per_seed * epoch_seconds_per_run * epochs_left > seconds_left:
        keep -= 1
    return seeds[:keep]


def pack(folder: Path, tar_path: Path) -> None:
    """One seed's folder (weights, manifest, logs) as one tar: few files travel back from a device."""
    tmp = tar_path.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        tar.add(folder, arcname=folder.name)
    tmp.replace(tar_path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m dsnet.evidence.seedstudy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="folder with train/ and val/ (ImageFolder layout)")
    p.add_argument("--runs", type=Path, required=True, help="where each seed's folder RUNS/seed<N>-<tag> goes")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--recipe", choices=sorted(RECIPES), default="imagenette")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--budget", type=float, default=float("inf"), help="seconds for the whole study (drop seeds to fit)")
    p.add_argument("--reserve", type=float, default=30.0, help="seconds of the budget kept for export and packing")
    p.add_argument("--tag", default="gpu", help="run folders are seed<N>-<tag>")
    p.add_argument("--pack", type=Path, help="write seed<N>-<tag>.tar here as soon as a seed is finished")
    p.add_argument("--device", default="auto")
    p.add_argument("--limit-per-class", type=int, help="at most N images per class (tests)")
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size (tests)")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument(
        "--manifest",
        type=Path,
        default=MANIFEST_PATH,
        help="copied into each seed folder; the entries are written there",
    )
    p.add_argument("--no-amp", action="store_true", help="float32 (default: bf16 autocast on CUDA)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size)) if v is not None}
    recipe = dataclasses.replace(RECIPES[args.recipe], **overrides)
    device = training_device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    amp = device.type == "cuda" and not args.no_amp
    data = load_device_data(args.data, recipe, args.cache_dir or cache_root(), device, args.limit_per_class)
    study = Study(data, recipe, device, amp)
    command = "python -m dsnet.evidence.seedstudy " + " ".join(sys.argv[1:] if argv is None else argv)
    runs: list[Run] = []
    for seed in args.seeds:
        folder = args.runs / f"seed{seed}-{args.tag}"
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "manifest.json").exists():
            shutil.copy(args.manifest, folder / "manifest.json")
        for model in args.models:
            cfg = TrainConfig(
                model=model,
                data=args.data,
                out=folder / model,
                recipe_name=args.recipe,
                recipe=recipe,
                seed=seed,
                device=str(device),
                channels_last=True,
                amp=amp,
                limit_per_class=args.limit_per_class,
                export_zoo="imagenette",
                export_dir=folder,
                manifest=folder / "manifest.json",
                command=command,
            )
            cfg.out.mkdir(parents=True, exist_ok=True)
            runs.append(study.new_run(cfg))
    if device.type == "cuda":
        torch.cuda.synchronize()  # the data and models are ready before any run's stream reads them
    summary: dict[str, Any] = {
        "command": command,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": str(torch.__version__),
        "amp": "bfloat16" if amp else None,
        "recipe": dataclasses.asdict(recipe),
        "seeds_asked": args.seeds,
        "budget": args.budget if args.budget != float("inf") else None,
        "setup_seconds": round(time.perf_counter() - started, 1),
        "dropped": [],
        "runs": {},
    }
    args.runs.mkdir(parents=True, exist_ok=True)

    def write_summary() -> None:
        for r in runs:
            summary["runs"].setdefault(r.name, {}).update(
                epochs=len(r.history),
                graph=r.graph is not None,
                capture_error=r.capture_error,
                last=r.history[-1] if r.history else None,
            )
        summary["seconds"] = round(time.perf_counter() - started, 1)
        (args.runs / "study.json").write_text(json.dumps(summary, indent=1) + "\n")
        if args.pack:
            shutil.copy(args.runs / "study.json", args.pack / "study.json")

    if args.pack:
        args.pack.mkdir(parents=True, exist_ok=True)
    active = list(runs)
    for epoch in range(recipe.epochs):
        epoch_started = time.perf_counter()
        for r in active:
            study.begin_epoch(r, epoch)
        for k in range(study.steps_per_epoch):
            for r in active:
                study.train_step(r, epoch, k)
        for r in active:
            row = study.end_epoch(r, epoch)
            with open(r.cfg.out / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        seconds = time.perf_counter() - epoch_started
        if epoch == 0:
            summary["first_epoch_seconds"] = round(seconds, 1)
            print(
                "captured: " + " ".join(f"{r.name}={'graph' if r.graph is not None else 'eager'}" for r in runs),
                flush=True,
            )
        print(
            f"epoch {epoch + 1}/{recipe.epochs}: {len(active)} runs in {seconds:.1f} s; "
            + " ".join(f"{r.name}={r.history[-1]['val_top1']:.1f}" for r in active),
            flush=True,
        )
        if epoch >= 2 and epoch + 1 < recipe.epochs:  # the first epochs carry the warm-up and the captures
            left = args.budget - args.reserve - (time.perf_counter() - started)
            seeds = sorted({r.cfg.seed for r in active})
            keep = seeds_that_fit(seeds, len(args.models), seconds / len(active), recipe.epochs - epoch - 1, left)
            if keep != seeds:
                summary["dropped"].append(
                    {
                        "after_epoch": epoch + 1,
                        "seeds": seeds[len(keep) :],
                        "epoch_seconds": round(seconds, 2),
                        "seconds_left": round(left, 1),
                    }
                )
                print(f"dropping seeds {seeds[len(keep) :]} to fit the budget ({left:.0f} s left)", flush=True)
                active = [r for r in active if r.cfg.seed in keep]
        write_summary()

    exported = set()
    for r in (r for r in active if len(r.history) == recipe.epochs):
        try:  # one run's failure must not cost the others' results
            record = run_record(r.cfg, data.wnids, len(data.train_labels), len(data.val_labels), Dist(), device, amp)
            record.update(command=command, amp_dtype="bfloat16" if amp else None, pipeline=PIPELINE)
            final = {
                "images": len(data.val_labels),
                "top1": r.history[-1]["val_top1"],
                "top5": r.history[-1]["val_top5"],
            }
            export(r.model, r.cfg, record, r.history, final, dtype=torch.float16)
            exported.add(r.name)
            summary["runs"][r.name].update(
                rounding=rounding_check(study, r, torch.float16),
                train_seconds=round(sum(h["epoch_seconds"] for h in r.history)),
            )
        except Exception as e:
            summary["runs"][r.name]["export_error"] = f"{type(e).__name__}: {e}"[:300]
            print(f"{r.name}: export failed: {e}", flush=True)
    for seed in sorted({r.cfg.seed for r in runs}):
        if args.pack and all(r.name in exported for r in runs if r.cfg.seed == seed):
            pack(args.runs / f"seed{seed}-{args.tag}", args.pack / f"seed{seed}-{args.tag}.tar")
    write_summary()
    print(json.dumps({r.name: summary["runs"][r.name].get("rounding") for r in runs}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
