"""Train any registered model on an ImageFolder: ``python -m dsnet.train --help``.

CPU, one GPU, or many GPUs/nodes via ``torchrun`` (DDP). Checkpoints are written atomically every
epoch and ``--resume`` continues exactly: every random draw of epoch ``e`` is seeded from
``(seed, e)``, so a resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from . import get_model
from .allocator import retain_freed_memory
from .files import atomic_path
from .data import (FileImages, TensorImages, cached_images, class_index, eval_transform, limit_per_class,
                   scan_labelled, standardize, train_transform)
from .manifest import (IMAGENET_MEAN, IMAGENET_STD, MANIFEST_PATH, Entry, Metrics, Preprocessing, Sources,
                       label_set_for, write_entry)
from .weights import save_safetensors, warm_start_from_resnet
from .zoo import pick_device


@dataclass(frozen=True)
class Recipe:
    """A training recipe; ``lr`` is for ``base_batch`` and scales linearly with the batch size."""

    epochs: int
    batch_size: int
    lr: float
    base_batch: int
    weight_decay: float
    schedule: str  # "step" (/10 every step_epochs), "multistep" (/10 at milestones), "cosine"
    momentum: float = 0.9
    nesterov: bool = False
    step_epochs: int = 30
    milestones: tuple[int, ...] = ()
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    train_crop: int = 224
    min_scale: float = 0.08
    pad: int = 0  # > 0: pad + random crop (CIFAR) instead of random-resized crop
    eval_resize: int = 256
    eval_crop: int = 224
    stem: str = "imagenet"
    cache: bool = False  # decode all images once into memory (small data sets)


RECIPES = {
    # Paper §4.2: SGD, lr 0.05 for batch 128 (linear scaling rule), 100 epochs, /10 every 30.
    "imagenet": Recipe(epochs=100, batch_size=128, lr=0.05, base_batch=128, weight_decay=1e-4,
                       schedule="step", step_epochs=30),
    # Paper §4.1: lr 0.1, wd 5e-4, 64k iterations /10 at 32k and 48k (batch 128 on 50k images).
    "cifar": Recipe(epochs=164, batch_size=128, lr=0.1, base_batch=128, weight_decay=5e-4,
                    schedule="multistep", milestones=(82, 123), train_crop=32, pad=4, eval_resize=32,
                    eval_crop=32, stem="cifar"),
    # The shipped Imagenette zoo: 0.25x width (Table 1's setting), 112 px train / 128 px test crops
    # from a 146 px cache, cosine schedule with warm-up (the three models side by side: minutes on
    # one GPU, hours on two CPU cores; README, "Training").
    "imagenette": Recipe(epochs=60, batch_size=128, lr=0.1, base_batch=64, weight_decay=5e-4,
                         schedule="cosine", nesterov=True, warmup_epochs=1.0, label_smoothing=0.1,
                         train_crop=112, min_scale=0.25, eval_resize=146, eval_crop=128, cache=True),
}


def lr_factor(recipe: Recipe, step: int, steps_per_epoch: int) -> float:
    """Multiplier of the peak lr at optimiser step ``step`` (per-step schedule)."""
    epoch = step / steps_per_epoch
    if epoch < recipe.warmup_epochs:
        return (step + 1) / (recipe.warmup_epochs * steps_per_epoch)
    if recipe.schedule == "step":
        return 0.1 ** int(epoch // recipe.step_epochs)
    if recipe.schedule == "multistep":
        return 0.1 ** sum(epoch >= m for m in recipe.milestones)
    if recipe.schedule == "cosine":
        t = (epoch - recipe.warmup_epochs) / max(1e-9, recipe.epochs - recipe.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    raise ValueError(f"unknown schedule {recipe.schedule!r}")


# --- distributed helpers ------------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    if "RANK" not in os.environ:
        return Dist()
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def all_sum(values: list[float], d: Dist, device: torch.device) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# --- checkpoints --------------------------------------------------------------------------------

def save_atomic(obj: dict, path: Path) -> None:
    """temp file + fsync + rename (``dsnet.files.atomic_path``): a kill at any moment leaves the previous
    checkpoint intact."""
    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)


def plot_curves(logs: dict[str, list[dict]], out: Path) -> None:
    """Train/val top-1 error per epoch, one colour per run (the layout of the paper's Figure 4)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, (name, rows) in enumerate(logs.items()):
        epochs = [r["epoch"] for r in rows]
        colour = f"C{i}"
        ax.plot(epochs, [100 - r["train_top1"] for r in rows], "--", color=colour, label=f"{name} train")
        ax.plot(epochs, [100 - r["val_top1"] for r in rows], "-", color=colour, label=f"{name} val")
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 error (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- training -----------------------------------------------------------------------------------

def evaluate_loader(model: nn.Module, loader, device, d: Dist, channels_last: bool,
                    mean=IMAGENET_MEAN, std=IMAGENET_STD) -> dict[str, float]:
    model.eval()
    loss = correct1 = correct5 = count = 0.0
    with torch.inference_mode():
        for images, labels in loader:
            images = standardize(images.to(device, non_blocking=True), mean, std)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device)
            logits = model(images).float()
            loss += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            top = logits.topk(min(5, logits.shape[1]), 1).indices
            correct1 += (top[:, 0] == labels).sum().item()
            correct5 += (top == labels[:, None]).any(1).sum().item()
            count += len(labels)
    loss, correct1, correct5, count = all_sum([loss, correct1, correct5, count], d, device)
    return {"loss": loss / count, "top1": 100 * correct1 / count, "top5": 100 * correct5 / count,
            "images": int(count)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dsnet.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="dsnet50", help="a registered model (dsnet.list_models())")
    p.add_argument("--model-kwargs", default="{}", help='JSON builder kwargs, e.g. \'{"norm": "batch"}\'')
    p.add_argument("--width", type=float, help="width multiplier (default: 0.25 for the imagenette recipe, else 1)")
    p.add_argument("--data", help="folder with train/ and val/ (ImageFolder layout)")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint, log, curves")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="imagenette")
    for name, typ in (("epochs", int), ("batch-size", int), ("lr", float), ("weight-decay", float),
                      ("label-smoothing", float), ("train-crop", int), ("eval-crop", int), ("eval-resize", int)):
        p.add_argument(f"--{name}", type=typ, help="override the recipe's value")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    p.add_argument("--init-from", type=Path, help="warm start from a torchvision-format ResNet50 .pth")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--workers", type=int,
                   help="DataLoader workers (default: 4 reading files, 0 with the in-memory cache)")
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, help="decode images once into memory")
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("DSNET_CACHE", Path.home() / ".cache" / "dsnet")))
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help="fp16 autocast (default: on for CUDA)")
    p.add_argument("--compile", nargs="?", const="inductor", metavar="BACKEND",
                   help="train the torch.compile'd model (backend: inductor); fusion removes most of the dense "
                        "shortcuts' memory traffic (README, Benchmarks); compiling takes minutes")
    p.add_argument("--limit-per-class", type=int, help="use at most N images per class (quick runs, tests)")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="stop after N epochs of this run, resumable (training in time-boxed slices)")
    p.add_argument("--export", metavar="ZOO", help="after training, write safetensors + a manifest entry to ZOO")
    p.add_argument("--export-dir", type=Path, help="where the weights go (default: checkpoints/ZOO)")
    p.add_argument("--manifest", type=Path, default=MANIFEST_PATH)
    p.add_argument("--plot", nargs="+", type=Path, metavar="LOG",
                   help="only plot these log.jsonl files into --out (a PNG) and exit")
    return p


def resolve_recipe(args) -> Recipe:
    recipe = RECIPES[args.recipe]
    overrides = {f: getattr(args, f) for f in ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing",
                                                "train_crop", "eval_crop", "eval_resize")
                 if getattr(args, f) is not None}
    if args.cache is not None:
        overrides["cache"] = args.cache
    return dataclasses.replace(recipe, **overrides)


def training_device(name: str) -> torch.device:
    """``zoo.pick_device``'s choice; under torchrun an unindexed CUDA device is this rank's GPU."""
    device = pick_device(None if name == "auto" else name)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.plot:
        plot_curves({p.parent.name: read_log(p) for p in args.plot}, args.out)
        print(f"wrote {args.out}")
        return 0
    if not args.data:
        raise SystemExit("--data is required (a folder with train/ and val/)")
    if args.compile and args.compile not in torch._dynamo.list_backends(exclude_tags=()):  # before any data work
        raise SystemExit(f"unknown --compile backend {args.compile!r}; torch.compile has "
                         f"{', '.join(torch._dynamo.list_backends())} (and debug backends such as aot_eager)")
    if args.threads:
        torch.set_num_threads(args.threads)
    retain_freed_memory()
    recipe = resolve_recipe(args)
    device = training_device(args.device)
    d = init_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
    amp = device.type == "cuda" if args.amp is None else args.amp
    width = args.width if args.width is not None else (0.25 if args.recipe == "imagenette" else 1.0)
    data = Path(args.data)

    train_items = limit_per_class(scan_labelled(data / "train"), args.limit_per_class)
    val_items = limit_per_class(scan_labelled(data / "val"), args.limit_per_class)
    wnids = sorted({it.wnid for it in train_items})
    train_labels, val_labels = class_index(train_items, wnids), class_index(val_items, wnids)
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(args.seed)
    kwargs = {"num_classes": len(wnids), "width": width, "stem": recipe.stem, **json.loads(args.model_kwargs)}
    model = get_model(args.model, **kwargs)
    if args.init_from:
        report = warm_start_from_resnet(model, torch.load(args.init_from, map_location="cpu", weights_only=True))
        if d.main:
            print(report.summary())
    model.to(device)
    if args.channels_last:
        model.to_channels_last()

    if recipe.cache:
        cache_size = max(recipe.eval_resize, recipe.train_crop)
        train_set = TensorImages(cached_images(train_items, cache_size, args.cache_dir), train_labels,
                                 train_transform(recipe.train_crop, (recipe.min_scale, 1.0), recipe.pad))
        val_set = TensorImages(cached_images(val_items, cache_size, args.cache_dir), val_labels,
                               eval_transform(recipe.eval_resize, recipe.eval_crop))
    else:
        train_set = FileImages(train_items, train_labels,
                               train_transform(recipe.train_crop, (recipe.min_scale, 1.0), recipe.pad))
        val_set = FileImages(val_items, val_labels, eval_transform(recipe.eval_resize, recipe.eval_crop))
    workers = args.workers if args.workers is not None else (0 if recipe.cache else 4)
    val_shard = Subset(val_set, range(d.rank, len(val_set), d.world))  # exact: no padded duplicates
    per_rank_batch = max(1, recipe.batch_size // d.world)
    val_loader = DataLoader(val_shard, batch_size=per_rank_batch * 2, num_workers=workers,
                            pin_memory=device.type == "cuda")
    sampler = torch.utils.data.DistributedSampler(train_set, d.world, d.rank, shuffle=True, seed=args.seed,
                                                  drop_last=True) if d.world > 1 else None
    steps_per_epoch = len(train_set) // d.world // per_rank_batch
    if steps_per_epoch == 0:
        raise SystemExit(f"batch size {recipe.batch_size} is larger than the training set ({len(train_set)})")

    peak_lr = recipe.lr * recipe.batch_size / recipe.base_batch
    decay, no_decay = [], []
    for n, prm in model.named_parameters():
        (no_decay if prm.ndim <= 1 else decay).append(prm)  # BN, biases: no weight decay
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": recipe.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=peak_lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(recipe, s, steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if d.world > 1 else model
    if args.compile:  # the training step only: evaluation and checkpoints use the plain model
        net = torch.compile(net, backend=args.compile)
        if d.main:
            print(f"torch.compile (backend {args.compile}): the first training step compiles, which takes minutes")

    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = args.out / "last.pt", args.out / "log.jsonl"
    start_epoch, history, trained_by = 0, [], None
    if args.resume and ckpt_path.exists():
        from torch.torch_version import TorchVersion  # a str subclass that older checkpoints recorded
        with torch.serialization.safe_globals([TorchVersion]):
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, history, trained_by = state["epoch"], state["history"], state.get("config")
        if d.main:
            print(f"resumed {ckpt_path} after epoch {start_epoch}")
    config = {"model": args.model, "kwargs": kwargs, "recipe": args.recipe, "resolved_recipe": dataclasses.asdict(recipe),
              "seed": args.seed, "data": str(data), "train_images": len(train_set), "val_images": len(val_set),
              "world_size": d.world, "device": device.type, "amp": amp, "channels_last": args.channels_last,
              "compile": args.compile,
              "wnids": wnids, "torch": str(torch.__version__),
              "command": "python -m dsnet.train " + " ".join(sys.argv[1:] if argv is None else argv)}

    val = None  # the last epoch's val metrics, when this run trains one
    for epoch in range(start_epoch, recipe.epochs):
        torch.manual_seed(args.seed * 100003 + epoch)  # every random draw of this epoch (augmentation)
        if sampler is not None:
            sampler.set_epoch(epoch)
        loader = DataLoader(train_set, batch_size=per_rank_batch, sampler=sampler, shuffle=sampler is None,
                            drop_last=True, num_workers=workers, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(args.seed * 100003 + epoch),
                            persistent_workers=False)
        net.train()
        started = time.perf_counter()
        seen = loss_sum = correct = 0.0
        bar = tqdm(loader, desc=f"{args.model} epoch {epoch + 1}/{recipe.epochs}", unit="batch",
                   disable=not d.main, mininterval=5 if sys.stderr.isatty() else 60)
        for images, labels in bar:
            images = standardize(images.to(device, non_blocking=True), mean, std)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = net(images)
                loss = criterion(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            seen += len(labels)
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", img_s=f"{seen * d.world / (time.perf_counter() - started):.0f}",
                            refresh=False)
        train_time = time.perf_counter() - started
        loss_sum, correct, seen = all_sum([loss_sum, correct, seen], d, device)
        val = evaluate_loader(model, val_loader, device, d, args.channels_last, mean, std)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_top1": 100 * correct / seen,
               "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
               "lr": optimizer.param_groups[0]["lr"], "epoch_seconds": train_time,
               "images_per_second": seen / train_time}
        history.append(row)
        if d.main:
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch + 1,
                         "history": history, "config": config}, ckpt_path)
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            plot_curves({args.model: history}, args.out / "curves.png")
            print(json.dumps(row), flush=True)
        if args.stop_after and epoch + 1 - start_epoch >= args.stop_after and epoch + 1 < recipe.epochs:
            if d.main:
                print(f"stopped after epoch {epoch + 1} (--stop-after); continue with --resume")
            break

    finished = bool(history) and history[-1]["epoch"] == recipe.epochs
    if args.export and finished:
        if val is None:  # nothing trained here: the weights may come from elsewhere (another machine,
            # a compressed copy of the data), so measure them on this --data and keep their run's provenance
            val = evaluate_loader(model, val_loader, device, d, args.channels_last, mean, std)
            config = {**config, **(trained_by or {})}
        if d.main:
            export(model, args, config, recipe, history, val, data)
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def export(model: nn.Module, args, config: dict, recipe: Recipe, history: list[dict], final: dict[str, float],
           data: Path) -> Entry:
    """Final weights as safetensors + a manifest entry; ``config`` is the run that trained them,
    ``final`` their accuracy on ``data``/val measured at export."""
    from .manifest import CHECKPOINTS_DIR
    export_dir = args.export_dir or (CHECKPOINTS_DIR / args.export)
    export_dir.mkdir(parents=True, exist_ok=True)
    path = export_dir / f"{args.model}.safetensors"
    sha = save_safetensors(model, path)
    try:
        local = str(path.resolve().relative_to(args.manifest.resolve().parent))
    except ValueError:
        local = str(path.resolve())
    entry = Entry(
        name=args.model, builder=args.model, kwargs={k: v for k, v in config["kwargs"].items() if k != "stem" or v != "imagenet"},
        labels=label_set_for(config["wnids"], args.manifest, args.export),
        preprocessing=Preprocessing(resize=recipe.eval_resize, crop=recipe.eval_crop),
        file=local, sha256=sha, sources=Sources(local=local),
        metrics=[Metrics(dataset=f"{data.name}/val", images=final["images"], top1=round(final["top1"], 2),
                         top5=round(final["top5"], 2))],
        provenance={"recipe": config["recipe"], "resolved_recipe": config["resolved_recipe"],
                    "epochs": history[-1]["epoch"], "seed": config["seed"], "data": config["data"],
                    "train_images": config["train_images"], "torch": config["torch"], "device": config["device"],
                    "amp": config["amp"], "world_size": config["world_size"],
                    "train_seconds": round(sum(r["epoch_seconds"] for r in history)),
                    "exported": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
                    "command": config["command"]})
    write_entry(args.export, entry, args.manifest)
    print(f"exported {path} (sha256 {sha}) into zoo {args.export!r} of {args.manifest}")
    return entry


if __name__ == "__main__":
    raise SystemExit(main())
