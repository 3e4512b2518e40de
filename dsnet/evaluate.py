"""Evaluate every model of a zoo, in the layout of the paper's Table 9 (plus accuracy).

``python -m dsnet.evaluate --zoo imagenette --data ../shared/data/imagenette/val --json out.json``.
``--data`` is an ImageFolder (``<wnid>/*.JPEG``, e.g. ImageNet's val folder) or a flat folder of
``<wnid>_*.JPEG`` files; images of classes outside a model's label set are counted and left out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .allocator import retain_freed_memory
from .data import LabelledImage, scan_labelled
from .images import model_view, open_image, to_tensor
from .manifest import Preprocessing, load_manifest
from .zoo import ZooModel, load_available


@dataclass(frozen=True)
class ModelReport:
    model: str
    images: int
    skipped: int  # images whose class is not in the model's label set
    top1: float
    top5: float
    params_m: float
    gmacs: float  # multiply-accumulates of one forward at the model's input size
    latency_ms: float  # median CPU forward, batch 1
    train_memory_mb: float  # one training step (batch 32): see ``train_step_memory``


class _Views(Dataset):
    def __init__(self, items: list[LabelledImage], labels: list[int], pre: Preprocessing) -> None:
        self.items, self.labels, self.pre = items, labels, pre

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        view = model_view(open_image(self.items[i].path).image, self.pre)
        return to_tensor(view, self.pre)[0], self.labels[i]


def accuracy(zm: ZooModel, items: list[LabelledImage], batch_size: int = 64, workers: int = 2) -> tuple[float, float, int, int]:
    """(top-1 %, top-5 %, images used, images skipped) with the model's own preprocessing."""
    lookup = {w: i for i, w in enumerate(zm.labels.wnids)}
    used = [it for it in items if it.wnid in lookup]
    loader = DataLoader(_Views(used, [lookup[it.wnid] for it in used], zm.entry.preprocessing),
                        batch_size=batch_size, num_workers=workers)
    top1 = top5 = 0
    with torch.inference_mode():
        for x, y in tqdm(loader, desc=f"{zm.name} accuracy", unit="batch", leave=False):
            top = zm.model(x.to(zm.device)).topk(min(5, len(lookup)), 1).indices.cpu()
            top1 += (top[:, 0] == y).sum().item()
            top5 += (top == y[:, None]).any(1).sum().item()
    n = max(1, len(used))
    return 100 * top1 / n, 100 * top5 / n, len(used), len(items) - len(used)


def gmacs(model: nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    return counter.get_total_flops() / 2e9


def latency_ms(model: nn.Module, size: int, repeats: int = 20) -> float:
    x = torch.randn(1, 3, size, size)
    model = model.cpu()
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
    """
    import copy
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


def evaluate_zoo(zoo: str, data: Path, models: list[str] | None = None, timing: bool = True) -> list[ModelReport]:
    manifest = load_manifest()
    names = models or list(manifest.zoo(zoo).entries)
    loaded, missing = load_available(zoo, names)
    for name, why in missing.items():
        print(f"skipped {zoo}/{name}: {why}", file=sys.stderr)
    items = scan_labelled(data)
    reports = []
    for zm in loaded:
        top1, top5, used, skipped = accuracy(zm, items)
        size = zm.entry.preprocessing.crop
        reports.append(ModelReport(
            zm.name, used, skipped, round(top1, 2), round(top5, 2), round(zm.num_params / 1e6, 3),
            round(gmacs(zm.model, size), 3),
            round(latency_ms(zm.model, size), 2) if timing else float("nan"),
            round(train_step_memory(zm.model, size), 1) if timing else float("nan")))
    return reports


def table(reports: list[ModelReport]) -> str:
    """Table 9's layout (memory, time) next to accuracy; ratios are relative to the first row."""
    base = reports[0]
    lines = [f"{'Architecture':<12} {'Top-1':>6} {'Top-5':>6} {'Params(M)':>9} {'GMACs':>6} "
             f"{'Train mem (MB)':>15} {'CPU latency (ms)':>17}"]
    for r in reports:
        lines.append(f"{r.model:<12} {r.top1:>6.2f} {r.top5:>6.2f} {r.params_m:>9.3f} {r.gmacs:>6.3f} "
                     f"{r.train_memory_mb:>8.1f} ({r.train_memory_mb / base.train_memory_mb:.2f}x) "
                     f"{r.latency_ms:>9.2f} ({r.latency_ms / base.latency_ms:.2f}x)")
    lines.append(f"images: {base.images} used" + (f", {base.skipped} skipped (class not in the label set)"
                                                  if base.skipped else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dsnet.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", default="imagenette")
    p.add_argument("--data", type=Path, required=True, help="labelled image folder")
    p.add_argument("--models", help="comma-separated (default: every model of the zoo)")
    p.add_argument("--no-timing", action="store_true", help="skip latency and memory measurements")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    retain_freed_memory()
    reports = evaluate_zoo(args.zoo, args.data, args.models.split(",") if args.models else None, not args.no_timing)
    if not reports:
        print("error: no model of this zoo is available", file=sys.stderr)
        return 2
    print(table(reports))
    if args.json:
        args.json.write_text(json.dumps({"zoo": args.zoo, "data": str(args.data),
                                         "models": [asdict(r) for r in reports]}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
