"""Train any registered model on an ImageFolder: ``python -m dsnet.evidence.train --help``.

CPU, one GPU, or many GPUs/nodes via ``torchrun`` (DDP). Checkpoints are written atomically every
epoch and ``--resume`` continues exactly: every random draw of epoch ``e`` is seeded from
``(seed, e)``, so a resumed run repeats the uninterrupted one.

``main`` reads the command line into a typed ``TrainConfig``; ``train`` runs it as small steps:
``load_data``, ``build_model``, ``make_optimiser``, ``train_epoch`` / ``evaluate_loader`` per
epoch, ``save_checkpoint`` / ``load_checkpoint``, and ``export``.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from dsnet.core.allocator import retain_freed_memory
from dsnet.core.files import atomic_path, cache_root
from dsnet.data.labelled import (
    FileImages,
    TensorImages,
    cached_images,
    class_index,
    eval_transform,
    limit_per_class,
    scan_labelled,
    standardize,
    topk_hits,
    train_transform,
)
from dsnet.evidence.cli import refused
from dsnet.evidence.curves import plot_curves
from dsnet.models import get_builder
from dsnet.zoo.loader import pick_device
from dsnet.zoo.manifest import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Entry,
    Metrics,
    Preprocessing,
    Sources,
    label_set_for,
    manifest_path,
    protocol,
    write_entry,
)
from dsnet.zoo.weights import save_safetensors, warm_start_from_resnet


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
    width: float = 1.0  # channel width multiplier of the model
    cache: bool = False  # decode all images once into memory (small data sets)


RECIPES = {
    # Paper §4.2: SGD, lr 0.05 for batch 128 (linear scaling rule), 100 epochs, /10 every 30.
    "imagenet": Recipe(
        epochs=100, batch_size=128, lr=0.05, base_batch=128, weight_decay=1e-4, schedule="step", step_epochs=30
    ),
    # Paper §4.1: lr 0.1, wd 5e-4, 64k iterations /10 at 32k and 48k (batch 128 on 50k images).
    "cifar": Recipe(
        epochs=164,
        batch_size=128,
        lr=0.1,
        base_batch=128,
        weight_decay=5e-4,
        schedule="multistep",
        milestones=(82, 123),
        train_crop=32,
        pad=4,
        eval_resize=32,
        eval_crop=32,
        stem="cifar",
    ),
    # The shipped Imagenette zoo: 0.25x width (Table 1's setting), 112 px train / 128 px test crops
    # from a 146 px cache, cosine schedule with warm-up (the three models side by side: minutes on
    # one GPU, hours on two CPU cores; docs/training.md, "What more training would cost").
    "imagenette": Recipe(
        epochs=60,
        batch_size=128,
        lr=0.1,
        base_batch=64,
        weight_decay=5e-4,
        schedule="cosine",
        nesterov=True,
        warmup_epochs=1.0,
        label_smoothing=0.1,
        train_crop=112,
        min_scale=0.25,
        eval_resize=146,
        eval_crop=128,
        width=0.25,
        cache=True,
    ),
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
    """temp file + fsync + rename (``dsnet.core.files.atomic_path``): a kill at any moment leaves the previous
    checkpoint intact."""
    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)


# --- configuration ------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A run that cannot start as configured (its message says why); ``main`` prints it and exits 2."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run, everything ``train`` needs (the command line, typed)."""

    model: str
    data: Path
    out: Path
    recipe_name: str
    recipe: Recipe  # the named recipe with the command line's overrides
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # builder kwargs beyond classes/width/stem
    seed: int = 0
    resume: bool = False
    init_from: Path | None = None
    device: str = "auto"
    workers: int | None = None  # None: 4 reading files, 0 with the in-memory cache
    cache_dir: Path = field(default_factory=cache_root)
    channels_last: bool = True
    amp: bool | None = None  # None: on for CUDA
    compile: str | None = None  # a torch.compile backend
    limit_per_class: int | None = None
    stop_after: int | None = None
    export_zoo: str | None = None
    export_dir: Path | None = None
    manifest: Path = field(default_factory=manifest_path)
    command: str = ""


RECIPE_FIELDS = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "label_smoothing",
    "train_crop",
    "eval_crop",
    "eval_resize",
    "width",
    "cache",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m dsnet.evidence.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="dsnet50", help="a registered model (dsnet.list_models())")
    p.add_argument("--model-kwargs", default="{}", help='JSON builder kwargs, e.g. \'{"norm": "batch"}\'')
    p.add_argument("--data", required=True, help="folder with train/ and val/ (ImageFolder layout)")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint, log, curves")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="imagenette")
    for name, typ in (
        ("epochs", int),
        ("batch-size", int),
        ("lr", float),
        ("weight-decay", float),
        ("label-smoothing", float),
        ("train-crop", int),
        ("eval-crop", int),
        ("eval-resize", int),
        ("width", float),
    ):
        p.add_argument(f"--{name}", type=typ, help="override the recipe's value")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt if it exists")
    p.add_argument("--init-from", type=Path, help="warm start from a torchvision-format ResNet50 .pth")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    p.add_argument(
        "--workers", type=int, help="DataLoader workers (default: 4 reading files, 0 with the in-memory cache)"
    )
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, help="decode images once into memory")
    p.add_argument("--cache-dir", type=Path, help="decoded-image cache (default: $DSNET_CACHE, else ~/.cache/dsnet)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, help="fp16 autocast (default: on for CUDA)")
    p.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        metavar="BACKEND",
        help="train the torch.compile'd model (backend: inductor); fusion removes most of the dense "
        "shortcuts' memory traffic (docs/benchmarks.md); compiling takes minutes",
    )
    p.add_argument("--limit-per-class", type=int, help="use at most N images per class (quick runs, tests)")
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="N",
        help="stop after N epochs of this run, resumable (training in time-boxed slices)",
    )
    p.add_argument("--export", metavar="ZOO", help="after training, write safetensors + a manifest entry to ZOO")
    p.add_argument(
        "--export-dir",
        type=Path,
        help="where the weights go (default: the manifest's folder/ZOO, checkpoints/ZOO for the shipped manifest)",
    )
    p.add_argument(
        "--manifest",
        type=Path,
        help="the manifest the entry is written to (default: $DSNET_MANIFEST, else checkpoints/manifest.json)",
    )
    return p


def config_from_args(args: argparse.Namespace, argv: list[str] | None = None) -> TrainConfig:
    overrides = {f: getattr(args, f) for f in RECIPE_FIELDS if getattr(args, f) is not None}
    return TrainConfig(
        model=args.model,
        data=Path(args.data),
        out=args.out,
        recipe_name=args.recipe,
        recipe=dataclasses.replace(RECIPES[args.recipe], **overrides),
        model_kwargs=json.loads(args.model_kwargs),
        seed=args.seed,
        resume=args.resume,
        init_from=args.init_from,
        device=args.device,
        workers=args.workers,
        cache_dir=args.cache_dir or cache_root(),
        channels_last=args.channels_last,
        amp=args.amp,
        compile=args.compile,
        limit_per_class=args.limit_per_class,
        stop_after=args.stop_after,
        export_zoo=args.export,
        export_dir=args.export_dir,
        manifest=args.manifest or manifest_path(),
        command="python -m dsnet.evidence.train " + " ".join(sys.argv[1:] if argv is None else argv),
    )


def training_device(name: str) -> torch.device:
    """``zoo.pick_device``'s choice; under torchrun an unindexed CUDA device is this rank's GPU."""
    device = pick_device(None if name == "auto" else name)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


# --- steps ----------------------------------------------------------------------------------------


@dataclass
class TrainData:
    """The labelled images of one run, transformed, with this rank's share of val."""

    wnids: list[str]
    train_set: torch.utils.data.Dataset
    val_set: torch.utils.data.Dataset
    val_loader: DataLoader
    sampler: torch.utils.data.DistributedSampler | None
    per_rank_batch: int
    workers: int
    world: int

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_set) // self.world // self.per_rank_batch

    def train_loader(self, seed: int, device: torch.device) -> DataLoader:
        """This epoch's loader; ``seed`` fixes its order (exact resume)."""
        return DataLoader(
            self.train_set,
            batch_size=self.per_rank_batch,
            sampler=self.sampler,
            shuffle=self.sampler is None,
            drop_last=True,
            num_workers=self.workers,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=False,
        )


def load_data(cfg: TrainConfig, d: Dist, device: torch.device) -> TrainData:
    recipe = cfg.recipe
    train_items = limit_per_class(scan_labelled(cfg.data / "train"), cfg.limit_per_class)
    val_items = limit_per_class(scan_labelled(cfg.data / "val"), cfg.limit_per_class)
    wnids = sorted({it.wnid for it in train_items})
    train_labels, val_labels = class_index(train_items, wnids), class_index(val_items, wnids)
    augment = train_transform(recipe.train_crop, (recipe.min_scale, 1.0), recipe.pad)
    evaluate = eval_transform(recipe.eval_resize, recipe.eval_crop)
    if recipe.cache:
        cache_size = max(recipe.eval_resize, recipe.train_crop)
        train_set = TensorImages(cached_images(train_items, cache_size, cfg.cache_dir), train_labels, augment)
        val_set = TensorImages(cached_images(val_items, cache_size, cfg.cache_dir), val_labels, evaluate)
    else:
        train_set = FileImages(train_items, train_labels, augment)
        val_set = FileImages(val_items, val_labels, evaluate)
    workers = cfg.workers if cfg.workers is not None else (0 if recipe.cache else 4)
    per_rank_batch = max(1, recipe.batch_size // d.world)
    val_shard = Subset(val_set, range(d.rank, len(val_set), d.world))  # exact: no padded duplicates
    val_loader = DataLoader(
        val_shard, batch_size=per_rank_batch * 2, num_workers=workers, pin_memory=device.type == "cuda"
    )
    sampler = (
        torch.utils.data.DistributedSampler(train_set, d.world, d.rank, shuffle=True, seed=cfg.seed, drop_last=True)
        if d.world > 1
        else None
    )
    data = TrainData(wnids, train_set, val_set, val_loader, sampler, per_rank_batch, workers, d.world)
    if data.steps_per_epoch == 0:
        raise ConfigError(f"batch size {recipe.batch_size} is larger than the training set ({len(train_set)})")
    return data


def build_model(cfg: TrainConfig, num_classes: int, device: torch.device, d: Dist) -> nn.Module:
    """The registered model for ``num_classes``, seeded, optionally warm-started, on ``device``."""
    torch.manual_seed(cfg.seed)
    model = get_builder(cfg.model)(**model_kwargs(cfg, num_classes))
    if cfg.init_from:
        report = warm_start_from_resnet(model, torch.load(cfg.init_from, map_location="cpu", weights_only=True))
        if d.main:
            print(report.summary())
    model.to(device)
    if cfg.channels_last:
        model.to_channels_last()
    return model


def model_kwargs(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    return {"num_classes": num_classes, "width": cfg.recipe.width, "stem": cfg.recipe.stem, **cfg.model_kwargs}


@dataclass
class Optimiser:
    """SGD with the recipe's per-step schedule and (under fp16 autocast) a loss scaler."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("optimizer", "scheduler", "scaler"):
            getattr(self, name).load_state_dict(state[name])

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on every tensor with more than one dimension (BN and biases: none; the shortcut
    weights W are T x C x 1 x 1 and decay)."""
    decay, no_decay = [], []
    for prm in model.parameters():
        (no_decay if prm.ndim <= 1 else decay).append(prm)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def peak_lr(recipe: Recipe) -> float:
    """The recipe's lr scaled linearly with the batch size."""
    return recipe.lr * recipe.batch_size / recipe.base_batch


def make_optimiser(
    model: nn.Module, recipe: Recipe, steps_per_epoch: int, device: torch.device, amp: bool
) -> Optimiser:
    """SGD on ``param_groups`` at ``peak_lr``, the schedule per step."""
    optimizer = torch.optim.SGD(
        param_groups(model, recipe.weight_decay), lr=peak_lr(recipe), momentum=recipe.momentum, nesterov=recipe.nesterov
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(recipe, s, steps_per_epoch))
    return Optimiser(optimizer, scheduler, torch.amp.GradScaler(device.type, enabled=amp))


def model_input(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A uint8 batch from a loader as the model's float input, standardised on the device."""
    images = standardize(images.to(device, non_blocking=True), IMAGENET_MEAN, IMAGENET_STD)
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


def train_epoch(
    net: nn.Module,
    loader: DataLoader,
    opt: Optimiser,
    criterion: nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    amp: bool,
    d: Dist,
    title: str,
) -> dict[str, float]:
    """One pass over ``loader``; loss and top-1 summed over all ranks."""
    net.train()
    started = time.perf_counter()
    seen = loss_sum = correct = 0.0
    bar = tqdm(loader, desc=title, unit="batch", disable=not d.main, mininterval=5 if sys.stderr.isatty() else 60)
    for images, labels in bar:
        images, labels = model_input(images, device, cfg.channels_last), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = net(images)
            loss = criterion(logits, labels)
        opt.optimizer.zero_grad(set_to_none=True)
        opt.scaler.scale(loss).backward()
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
        opt.scheduler.step()
        seen += len(labels)
        loss_sum += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        bar.set_postfix(
            loss=f"{loss_sum / seen:.3f}",
            img_s=f"{seen * d.world / (time.perf_counter() - started):.0f}",
            refresh=False,
        )
    seconds = time.perf_counter() - started
    loss_sum, correct, seen = all_sum([loss_sum, correct, seen], d, device)
    return {
        "train_loss": loss_sum / seen,
        "train_top1": 100 * correct / seen,
        "epoch_seconds": seconds,
        "images_per_second": seen / seconds,
    }


def evaluate_loader(
    model: nn.Module, loader: DataLoader, device: torch.device, d: Dist, channels_last: bool
) -> dict[str, float]:
    """Loss, top-1 and top-5 (%) on ``loader``, summed over all ranks."""
    model.eval()
    loss = correct1 = correct5 = count = 0.0
    with torch.inference_mode():
        for images, labels in loader:
            images, labels = model_input(images, device, channels_last), labels.to(device)
            logits = model(images).float()
            loss += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            top1, top5 = topk_hits(logits, labels)
            correct1 += top1.sum().item()
            correct5 += top5.sum().item()
            count += len(labels)
    loss, correct1, correct5, count = all_sum([loss, correct1, correct5, count], d, device)
    return {"loss": loss / count, "top1": 100 * correct1 / count, "top5": 100 * correct5 / count, "images": int(count)}


@dataclass
class Checkpoint:
    """What ``OUT/last.pt`` holds besides the weights: where the run is and who trained it."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    trained_by: dict | None = None  # the config of the run that wrote it


def save_checkpoint(
    path: Path, model: nn.Module, opt: Optimiser, epoch: int, history: list[dict], config: dict
) -> None:
    save_atomic(
        {"model": model.state_dict(), **opt.state_dict(), "epoch": epoch, "history": history, "config": config}, path
    )


def load_checkpoint(path: Path, model: nn.Module, opt: Optimiser) -> Checkpoint:
    from torch.torch_version import TorchVersion  # a str subclass that older checkpoints recorded

    with torch.serialization.safe_globals([TorchVersion]):
        state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state)
    return Checkpoint(state["epoch"], state["history"], state.get("config"))


def run_record(
    cfg: TrainConfig, wnids: list[str], train_images: int, val_images: int, d: Dist, device: torch.device, amp: bool
) -> dict[str, Any]:
    """The run's provenance, saved in every checkpoint and, at export, in the manifest."""
    return {
        "model": cfg.model,
        "kwargs": model_kwargs(cfg, len(wnids)),
        "recipe": cfg.recipe_name,
        "resolved_recipe": dataclasses.asdict(cfg.recipe),
        "seed": cfg.seed,
        "data": str(cfg.data),
        "train_images": train_images,
        "val_images": val_images,
        "world_size": d.world,
        "device": device.type,
        "amp": amp,
        "channels_last": cfg.channels_last,
        "compile": cfg.compile,
        "wnids": wnids,
        "torch": str(torch.__version__),
        "command": cfg.command,
    }


# --- the run --------------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> None:
    """Train ``cfg``: resume if asked, one checkpoint and log row per epoch, export when finished."""
    recipe = cfg.recipe
    if cfg.compile and cfg.compile not in torch._dynamo.list_backends(exclude_tags=()):  # before any data work
        raise ConfigError(
            f"unknown --compile backend {cfg.compile!r}; torch.compile has "
            f"{', '.join(torch._dynamo.list_backends())} (and debug backends such as aot_eager)"
        )
    retain_freed_memory()
    device = training_device(cfg.device)
    d = init_distributed(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels once
    amp = device.type == "cuda" if cfg.amp is None else cfg.amp

    data = load_data(cfg, d, device)
    model = build_model(cfg, len(data.wnids), device, d)
    opt = make_optimiser(model, recipe, data.steps_per_epoch, device, amp)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    net = (
        nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if d.world > 1
        else model
    )
    if cfg.compile:  # the training step only: evaluation and checkpoints use the plain model
        net = torch.compile(net, backend=cfg.compile)
        if d.main:
            print(f"torch.compile (backend {cfg.compile}): the first training step compiles, which takes minutes")

    cfg.out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = cfg.out / "last.pt", cfg.out / "log.jsonl"
    state = Checkpoint()
    if cfg.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, model, opt)
        if d.main:
            print(f"resumed {ckpt_path} after epoch {state.epoch}")
    record = run_record(cfg, data.wnids, len(data.train_set), len(data.val_set), d, device, amp)
    history = state.history

    val = None  # the last epoch's val metrics, when this run trains one
    for epoch in range(state.epoch, recipe.epochs):
        epoch_seed = cfg.seed * 100003 + epoch
        torch.manual_seed(epoch_seed)  # every random draw of this epoch (augmentation)
        if data.sampler is not None:
            data.sampler.set_epoch(epoch)
        trained = train_epoch(
            net,
            data.train_loader(epoch_seed, device),
            opt,
            criterion,
            cfg,
            device,
            amp,
            d,
            f"{cfg.model} epoch {epoch + 1}/{recipe.epochs}",
        )
        val = evaluate_loader(model, data.val_loader, device, d, cfg.channels_last)
        row = {
            "epoch": epoch + 1,
            "train_loss": trained["train_loss"],
            "train_top1": trained["train_top1"],
            "val_loss": val["loss"],
            "val_top1": val["top1"],
            "val_top5": val["top5"],
            "lr": opt.lr,
            "epoch_seconds": trained["epoch_seconds"],
            "images_per_second": trained["images_per_second"],
        }
        history.append(row)
        if d.main:
            save_checkpoint(ckpt_path, model, opt, epoch + 1, history, record)
            with open(log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            plot_curves({cfg.model: history}, cfg.out / "curves.png")
            print(json.dumps(row), flush=True)
        if cfg.stop_after and epoch + 1 - state.epoch >= cfg.stop_after and epoch + 1 < recipe.epochs:
            if d.main:
                print(f"stopped after epoch {epoch + 1} (--stop-after); continue with --resume")
            break

    finished = bool(history) and history[-1]["epoch"] == recipe.epochs
    if cfg.export_zoo and finished:
        if val is None:  # nothing trained here: the weights may come from elsewhere (another machine,
            # a compressed copy of the data), so measure them on this --data and keep their run's provenance
            val = evaluate_loader(model, data.val_loader, device, d, cfg.channels_last)
            record = {**record, **(state.trained_by or {})}
        if d.main:
            export(model, cfg, record, history, val)
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()


def export(
    model: nn.Module,
    cfg: TrainConfig,
    record: dict[str, Any],
    history: list[dict],
    final: dict[str, float],
    dtype: torch.dtype | None = None,
) -> Entry:
    """Final weights as safetensors + a manifest entry in zoo ``cfg.export_zoo``; ``record`` is the
    run that trained them, ``final`` their accuracy on ``cfg.data``/val measured at export; ``dtype``
    rounds the floating-point tensors (a smaller file; loading casts them back)."""
    zoo = cfg.export_zoo
    export_dir = cfg.export_dir or (cfg.manifest.parent / zoo)  # sources.local is relative to the manifest
    export_dir.mkdir(parents=True, exist_ok=True)
    path = export_dir / f"{cfg.model}.safetensors"
    sha = save_safetensors(model, path, dtype)
    try:
        local = str(path.resolve().relative_to(cfg.manifest.resolve().parent))
    except ValueError:
        local = str(path.resolve())
    recipe = cfg.recipe
    pre = Preprocessing(resize=recipe.eval_resize, crop=recipe.eval_crop)
    entry = Entry(
        name=cfg.model,
        builder=cfg.model,
        kwargs={k: v for k, v in record["kwargs"].items() if k != "stem" or v != "imagenet"},
        labels=label_set_for(record["wnids"], cfg.manifest, zoo),
        preprocessing=pre,
        file=local,
        sha256=sha,
        sources=Sources(local=local),
        metrics=[
            Metrics(
                dataset=f"{cfg.data.name}/val",
                images=final["images"],
                top1=round(final["top1"], 2),
                top5=round(final["top5"], 2),
                protocol=protocol("export", pre),
            )
        ],
        provenance={
            "recipe": record["recipe"],
            "resolved_recipe": record["resolved_recipe"],
            "epochs": history[-1]["epoch"],
            "seed": record["seed"],
            "data": record["data"],
            "train_images": record["train_images"],
            "torch": record["torch"],
            "device": record["device"],
            "amp": record["amp"],
            "world_size": record["world_size"],
            "train_seconds": round(sum(r["epoch_seconds"] for r in history)),
            "exported": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "command": record["command"],
        },
    )
    write_entry(zoo, entry, cfg.manifest)
    print(f"exported {path} (sha256 {sha}) into zoo {zoo!r} of {cfg.manifest}")
    return entry


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train(config_from_args(args, argv))
    except ConfigError as e:
        return refused(e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
