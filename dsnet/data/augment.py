"""The training augmentation as batched tensor operations, for a data set resident on the device.

``dsnet.evidence.train`` augments one image at a time on the CPU (torchvision's ``RandomResizedCrop`` and
``RandomHorizontalFlip`` in DataLoader workers); on a GPU that costs more than the 0.25x-width
network itself. This module computes the same thing for a whole batch with a few kernels:

* ``epoch_draws``: an epoch's sample order, exactly the DataLoader's for the same epoch seed (same
  labels, same batches), then its crops and flips.
* ``resized_crop_boxes``: torchvision's crop-box algorithm (10 tries, then the centre fallback) drawn
  for many images at once: the same distribution, not the same random stream.
* ``resize_weights`` / ``resized_crops``: crop + antialiased bilinear resize + flip as two batched
  matrix products with torchvision's filter (the triangle filter widened by the scale, as PIL), in
  float32: torchvision rounds its uint8 result, these do not.

Tested against torchvision and the DataLoader in tests/test_augment.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

RATIO = (3 / 4, 4 / 3)  # torchvision's default aspect-ratio range


def resized_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    generator: torch.Generator,
    ratio: tuple[float, float] = RATIO,
    tries: int = 10,
) -> Tensor:
    """``n`` boxes (top, left, height, width), int64, distributed as ``v2.RandomResizedCrop.make_params``.

    Each image gets ``tries`` candidate (area, aspect) pairs; the first that fits is used, as in the
    loop there; an image with none falls back to the central crop of the clamped aspect ratio.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    target = area * torch.empty(n, tries).uniform_(scale[0], scale[1], generator=generator)
    aspect = torch.exp(torch.empty(n, tries).uniform_(log_ratio[0], log_ratio[1], generator=generator))
    # float64 as Python's math.sqrt on the .item() values there; torch.round rounds half to even as round()
    w = torch.round(torch.sqrt(target.double() * aspect.double())).long()
    h = torch.round(torch.sqrt(target.double() / aspect.double())).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(1)  # the first fitting try (0 when none fits: replaced below)
    rows = torch.arange(n)
    h, w = h[rows, first], w[rows, first]
    u = torch.rand(n, 2, generator=generator, dtype=torch.float64)  # randint(0, m) as floor(u * m)
    top = (u[:, 0] * (height - h + 1)).floor().long().clamp_max(height - h)
    left = (u[:, 1] * (width - w + 1)).floor().long().clamp_max(width - w)
    none = ~fits.any(1)
    if none.any():
        in_ratio = width / height
        if in_ratio < min(ratio):
            fw, fh = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            fw, fh = int(round(height * max(ratio))), height
        else:
            fw, fh = width, height
        h, w = torch.where(none, fh, h), torch.where(none, fw, w)
        top, left = torch.where(none, (height - fh) // 2, top), torch.where(none, (width - fw) // 2, left)
    return torch.stack([top, left, h, w], 1)


def resize_weights(start: Tensor, length: Tensor, out_size: int, in_size: int) -> Tensor:
    """B x out_size x in_size: row ``o`` holds the weights of the input pixels for output pixel ``o``
    when the span [start, start + length) is resized to ``out_size`` with antialiased bilinear
    interpolation, as ``torch.nn.functional.interpolate(mode="bilinear", antialias=True)``:
    the triangle filter widened by the scale when shrinking, restricted to the span, normalised."""
    dtype = torch.float32
    start, length = start.to(dtype)[:, None, None], length.to(dtype)[:, None, None]
    scale = length / out_size
    support = scale.clamp_min(1.0)
    centre = (torch.arange(out_size, device=start.device, dtype=dtype)[None, :, None] + 0.5) * scale
    j = torch.arange(in_size, device=start.device, dtype=dtype)[None, None, :] - start  # in span coordinates
    weight = (1 - ((j + 0.5 - centre) / support).abs()).clamp_min(0)
    weight = weight * ((j >= 0) & (j < length))
    return weight / weight.sum(2, keepdim=True)


def resized_crops(images: Tensor, boxes: Tensor, flip: Tensor, size: int) -> Tensor:
    """float32 B x C x size x size from ``images`` (B x C x H x W, any dtype, values kept: uint8 gives
    0..255): the box (top, left, height, width) of each image resized to ``size``, mirrored where
    ``flip``. Rows then columns, each a batched matrix product."""
    height, width = images.shape[-2:]
    rows = resize_weights(boxes[:, 0], boxes[:, 2], size, height)  # B x size x H
    cols = resize_weights(boxes[:, 1], boxes[:, 3], size, width)  # B x size x W
    cols = torch.where(flip.view(-1, 1, 1), cols.flip(1), cols)  # a mirrored output reads its columns backwards
    x = images.to(torch.float32)
    return rows[:, None] @ x @ cols[:, None].transpose(-1, -2)


@dataclass(frozen=True)
class EpochDraws:
    """Every random choice of one training epoch: sample order, crop boxes, flips (per sample in order)."""

    order: Tensor  # int64, the indices in the order they are trained
    boxes: Tensor  # int64, len(order) x 4
    flip: Tensor  # bool, len(order)


def epoch_draws(n: int, epoch_seed: int, height: int, width: int, scale: tuple[float, float]) -> EpochDraws:
    """The order in which ``DataLoader(dataset_of_n, shuffle=True, generator=Generator().manual_seed(epoch_seed))``
    yields samples (its iterator first draws a base seed for workers, then ``RandomSampler`` a
    permutation), then the crops and flips from the same generator."""
    g = torch.Generator().manual_seed(epoch_seed)
    torch.empty((), dtype=torch.int64).random_(generator=g)  # the loader's _base_seed
    order = torch.randperm(n, generator=g)
    boxes = resized_crop_boxes(n, height, width, scale, g)
    flip = torch.rand(n, generator=g) < 0.5
    return EpochDraws(order, boxes, flip)
