"""Labelled image folders and the decoded-image cache used for training on small machines.

Two layouts are understood everywhere (training, evaluation, the app's gallery):
ImageFolder (``<root>/<wnid>/*.JPEG``) and flat (``<root>/<wnid>_<anything>.JPEG``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from dsnet.core.files import atomic_path

if TYPE_CHECKING:
    from torchvision.transforms import v2

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".webp", ".bmp")
WNID = re.compile(r"^(n\d{8})(?:_|$)")


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    wnid: str


def wnid_of(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str | None:
    """The wnid an image's place names, in either layout: its folder (``<wnid>/*.JPEG``; not ``root``
    itself), else its file name (``<wnid>_*.JPEG``, or ``<wnid>.JPEG``); None when neither does."""
    path = Path(path)
    folder = WNID.match(path.parent.name) if root is None or path.parent != Path(root) else None
    match = folder or WNID.match(path.stem)
    return match.group(1) if match else None


def scan_labelled(root: str | os.PathLike) -> list[LabelledImage]:
    """Images under ``root`` with their wnid, from either layout, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    found = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        wnid = wnid_of(path, root)
        if wnid:
            found.append(LabelledImage(path, wnid))
    if not found:
        raise FileNotFoundError(f"no labelled images in {root} (expected <wnid>/*.JPEG or <wnid>_*.JPEG)")
    return found


def limit_per_class(items: list[LabelledImage], per_class: int | None) -> list[LabelledImage]:
    """The first ``per_class`` images of every class (all of them when ``per_class`` is None)."""
    if not per_class:
        return items
    seen: dict[str, int] = {}
    kept = []
    for it in items:
        if seen.get(it.wnid, 0) < per_class:
            kept.append(it)
            seen[it.wnid] = seen.get(it.wnid, 0) + 1
    return kept


def class_index(items: list[LabelledImage], wnids: list[str]) -> list[int]:
    """Map each image's wnid to an index of ``wnids``; images of other classes are an error."""
    lookup = {w: i for i, w in enumerate(wnids)}
    missing = sorted({it.wnid for it in items} - lookup.keys())
    if missing:
        raise ValueError(f"{len(missing)} class(es) not in the label set, e.g. {missing[:3]}")
    return [lookup[it.wnid] for it in items]


def decode_square(path: Path, size: int) -> Tensor:
    """uint8 CHW, shorter side resized to ``size`` then centre-cropped to ``size`` x ``size``."""
    from torchvision.transforms.v2 import functional as TF  # on use: torchvision takes seconds to import

    with Image.open(path) as im:
        im = im.convert("RGB")
        image = TF.pil_to_tensor(im)
    image = TF.resize(image, size, antialias=True)
    return TF.center_crop(image, size)


def cached_images(items: list[LabelledImage], size: int, cache_dir: Path) -> Tensor:
    """All images decoded once to a uint8 N x 3 x size x size tensor, stored in ``cache_dir``.

    Decoding 9k JPEGs each epoch costs more than the network on two cores; the cache is keyed by
    the file list and size, written atomically, and reused by every run (and every model).
    """
    key = hashlib.sha256(f"{size}\n".encode() + "\n".join(str(it.path.resolve()) for it in items).encode())
    path = cache_dir / f"images-{size}px-{len(items)}-{key.hexdigest()[:16]}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    images = torch.empty(len(items), 3, size, size, dtype=torch.uint8)
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # Pillow and the resize release the GIL
        decoded = pool.map(lambda it: decode_square(it.path, size), items)
        for i, image in enumerate(tqdm(decoded, total=len(items), desc=f"decoding to cache ({size}px)", unit="img")):
            images[i] = image
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(images, tmp)
    return images


class TensorImages(Dataset):
    """uint8 images in memory with a transform applied per sample (for the cached path)."""

    def __init__(self, images: Tensor, labels: list[int], transform=None) -> None:
        self.images, self.labels, self.transform = images, torch.tensor(labels), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = self.images[i]
        return (self.transform(image) if self.transform else image), int(self.labels[i])


class FileImages(Dataset):
    """Images decoded from disk per sample (ImageNet-scale data, with DataLoader workers)."""

    def __init__(self, items: list[LabelledImage], labels: list[int], transform) -> None:
        self.items, self.labels, self.transform = items, labels, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from torchvision.transforms.v2 import functional as TF

        with Image.open(self.items[i].path) as im:
            image = TF.pil_to_tensor(im.convert("RGB"))
        return self.transform(image), self.labels[i]


def train_transform(crop: int, scale: tuple[float, float], pad: int = 0) -> v2.Transform:
    """uint8 CHW -> uint8 CHW augmented: random-resized crop (or pad + random crop) and flip."""
    from torchvision.transforms import v2

    if pad:
        return v2.Compose([v2.RandomCrop(crop, padding=pad), v2.RandomHorizontalFlip()])
    return v2.Compose([v2.RandomResizedCrop(crop, scale=scale, antialias=True), v2.RandomHorizontalFlip()])


def eval_transform(resize: int, crop: int) -> v2.Transform:
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(crop)])


def standardize(batch: Tensor, mean: tuple[float, ...] | Tensor, std: tuple[float, ...] | Tensor) -> Tensor:
    """uint8 (or float 0..255) NCHW -> float32 normalised NCHW (done on the training device, after
    transfer). ``mean`` and ``std`` given as tensors on the device need no copy (CUDA-graph capture)."""
    m = torch.as_tensor(mean, device=batch.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=batch.device).view(1, -1, 1, 1)
    return (batch.to(torch.float32) / 255 - m) / s


def topk_hits(logits: Tensor, labels: Tensor, k: int = 5) -> tuple[Tensor, Tensor]:
    """Per image: is the label the top-1 prediction, and is it among the top ``k`` (fewer classes: all)."""
    top = logits.topk(min(k, logits.shape[1]), 1).indices
    return top[:, 0] == labels, (top == labels[:, None]).any(1)
