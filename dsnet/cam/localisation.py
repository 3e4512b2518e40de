"""Ground-truth localisation metrics: boxes carried into the model's view, and pure metrics on saliency maps.

Definitions, references and the reasons for each convention: docs/localisation-metrics.md. In short:

* Coordinates are continuous pixel-edge coordinates: pixel (row r, column c) covers [c, c+1) x [r, r+1) and
  its centre is (c + 0.5, r + 0.5). In them PIL's resize is an exact scale and a crop an exact shift.
* A pixel is inside a box when its centre is: x0 <= c + 0.5 < x1 and y0 <= r + 0.5 < y1 (adjacent boxes
  share no pixel; a box with integer edges holds exactly (x1 - x0) * (y1 - y0) pixels).
* Saliency maps are 2-D, finite and non-negative, of the view's size; boxes are in the view's coordinates
  (``boxes_to_view``). A metric of an image with no box left in the view is None: the image is not scored.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from dsnet.zoo.manifest import Preprocessing

THRESHOLDS = np.arange(0, 1, 0.01)  # wsolevaluation's cam_curve_interval 0.01: tau = 0, 0.01, ..., 0.99
IOU_DELTAS = (30, 50, 70)  # MaxBoxAccV2's IoU thresholds, in percent
SELECT_DELTA = 50  # the delta whose best tau is "the dataset's optimal tau" (per-image IoUs are read there)
POINTING_TOLERANCE = 15.0  # Zhang et al.'s tolerance in pixels: the secondary pointing number (primary: 0)
_EIGHT = np.ones((3, 3), dtype=bool)
_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)  # 4-connectivity


@dataclass(frozen=True)
class Box:
    """An axis-aligned box (left, top, right, bottom) in pixel-edge coordinates; ``wnid``: its class, if known."""

    x0: float
    y0: float
    x1: float
    y1: float
    wnid: str = ""

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)


def read_boxes(folder: str | os.PathLike) -> dict[str, list[Box]]:
    """``boxes.csv`` of an ilsvrc-val-boxes folder: image path (relative to the folder) -> its boxes, in the stored
    file's pixels, as pixel-edge coordinates.

    The CSV's x1, y1 are ILSVRC's inclusive last-pixel indices scaled to the stored size (a box reaching the right
    edge of a 500 px wide original has original_x1 = 499, x1 = 223.55 of 224), so each box is rebuilt from the
    original columns: x0 = ox0 * w / ow, x1 = (ox1 + 1) * w / ow (and likewise for y): that box reaches 224.0.
    """
    boxes: dict[str, list[Box]] = {}
    with open(Path(folder) / "boxes.csv", newline="") as f:
        for row in csv.DictReader(f):
            w, h, ow, oh = (float(row[k]) for k in ("width", "height", "original_width", "original_height"))
            x0, y0, x1, y1 = (float(row[f"original_{k}"]) for k in ("x0", "y0", "x1", "y1"))
            boxes.setdefault(row["image"], []).append(  # multiplied first: a full-width box ends at exactly w
                Box(x0 * w / ow, y0 * h / oh, (x1 + 1) * w / ow, (y1 + 1) * h / oh, wnid=row["wnid"])
            )
    return boxes


@dataclass(frozen=True)
class ViewGeometry:
    """Where a width x height image lands in the model's view, computed as ``dsnet.cam.images.model_view`` does."""

    width: int
    height: int
    resized_width: int
    resized_height: int
    left: int  # crop offset in the resized image: (resized - crop) // 2, floored (torchvision rounds: see docs)
    top: int
    crop: int

    @property
    def scale_x(self) -> float:
        return self.resized_width / self.width  # the scale PIL applies (after rounding the size), not resize/min

    @property
    def scale_y(self) -> float:
        return self.resized_height / self.height


def view_geometry(width: int, height: int, pre: Preprocessing) -> ViewGeometry:
    """The resize and crop of ``model_view``: shorter side to ``pre.resize`` (sizes rounded, at least the crop),
    then a ``pre.crop`` square at offset ((w - crop) // 2, (h - crop) // 2). tests/test_localisation.py checks
    this against model_view's pixels, so a change there fails here."""
    scale = pre.resize / min(width, height)
    rw = max(pre.crop, round(width * scale))
    rh = max(pre.crop, round(height * scale))
    return ViewGeometry(width, height, rw, rh, (rw - pre.crop) // 2, (rh - pre.crop) // 2, pre.crop)


def boxes_to_view(boxes: Iterable[Box], image_size: tuple[int, int], pre: Preprocessing) -> list[Box | None]:
    """Boxes in an image's pixels (``image_size`` = PIL's (width, height)) -> the model view's pixels: scaled as
    model_view resizes, shifted by its crop offset, clipped to the view.

    One entry per box, in order; None where the crop removes the box entirely (nothing of positive area is
    left), so a caller can say which were lost. ``[b for b in out if b]`` keeps the rest.
    """
    g = view_geometry(*image_size, pre)
    out: list[Box | None] = []
    for b in boxes:
        x0, x1 = (min(max(x * g.scale_x - g.left, 0.0), g.crop) for x in (b.x0, b.x1))
        y0, y1 = (min(max(y * g.scale_y - g.top, 0.0), g.crop) for y in (b.y0, b.y1))
        out.append(replace(b, x0=x0, y0=y0, x1=x1, y1=y1) if x1 > x0 and y1 > y0 else None)
    return out


def boxes_mask(boxes: Iterable[Box], shape: tuple[int, int]) -> np.ndarray:
    """Union of the boxes as an H x W bool mask; a pixel is in when its centre is (x0 <= c + 0.5 < x1, same in y)."""
    h, w = shape
    rows, cols = np.arange(h) + 0.5, np.arange(w) + 0.5
    mask = np.zeros((h, w), dtype=bool)
    for b in boxes:
        mask |= ((rows >= b.y0) & (rows < b.y1))[:, None] & ((cols >= b.x0) & (cols < b.x1))[None, :]
    return mask


def _checked(saliency: np.ndarray) -> np.ndarray:
    """The map as float64, or ValueError: a metric of a malformed map would be a silent wrong number."""
    s = np.asarray(saliency, dtype=np.float64)
    if s.ndim != 2 or 0 in s.shape:
        raise ValueError(f"a saliency map must be a non-empty 2-D array, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("the saliency map has NaN or infinite values")
    if s.min() < 0:
        raise ValueError(f"the saliency map must be non-negative (its minimum is {s.min():g})")
    return s


# --- pointing game (Zhang et al. 2016) -------------------------------------------------------------------


@dataclass(frozen=True)
class Pointing:
    """Where a map's maximum lies relative to the boxes. Every pixel equal to the maximum is a peak (ties are
    common: upsampled CAMs have plateaus); ``distances`` holds, per peak in row-major order, the Euclidean
    distance (pixel centre to pixel centre) to the nearest box pixel, 0 inside a box."""

    distances: np.ndarray = field(repr=False, compare=False)
    peak: tuple[int, int]  # (row, col) of the first peak (row-major) at the smallest distance
    peaks: int  # number of peaks

    @property
    def distance(self) -> float:
        return float(self.distances.min())

    def hit(self, tolerance: float = 0.0) -> bool:
        """Any peak inside a box (tolerance 0: the primary number) or closer than ``tolerance`` px to one
        (strict, as TorchRay's implementation of the 15 px game). The any-peak rule is Quantus's."""
        return bool(_hits(self.distances, tolerance).any())

    def hit_share(self, tolerance: float = 0.0) -> float:
        """Share of the peaks that hit: the expected hit when ties are broken at random (1 or 0 for a unique peak;
        a flat map's share is the boxes' coverage of the view)."""
        return float(_hits(self.distances, tolerance).mean())


def _hits(distances: np.ndarray, tolerance: float) -> np.ndarray:
    return (distances == 0) | (distances < tolerance)


def pointing_game(saliency: np.ndarray, boxes: Sequence[Box]) -> Pointing | None:
    """The pointing game of one map (Zhang et al. 2016); None when no box has a pixel in the view."""
    from scipy import ndimage  # on use: SciPy takes a second to import

    s = _checked(saliency)
    mask = boxes_mask(boxes, s.shape)
    if not mask.any():
        return None
    flat_peaks = np.flatnonzero(s == s.max())
    distances = ndimage.distance_transform_edt(~mask).ravel()[flat_peaks]
    row, col = divmod(int(flat_peaks[int(np.argmin(distances))]), s.shape[1])
    return Pointing(distances, (row, col), len(flat_peaks))


# --- energy-based pointing game (Wang et al. 2020, Score-CAM) ---------------------------------------------


@dataclass(frozen=True)
class Energy:
    share: float  # of the map's mass inside the union of the boxes; NaN for a map with no mass
    coverage: float  # share of the view's pixels inside the boxes: what a flat map scores


def energy_in_boxes(saliency: np.ndarray, boxes: Sequence[Box]) -> Energy | None:
    """Energy-based pointing game of one map (Score-CAM); None when no box has a pixel in the view."""
    s = _checked(saliency)
    mask = boxes_mask(boxes, s.shape)
    if not mask.any():
        return None
    total = s.sum()
    return Energy(float(s[mask].sum() / total) if total > 0 else math.nan, float(mask.mean()))


# --- MaxBoxAccV2 (Choe et al. 2020, as clovaai/wsolevaluation computes it) ---------------------------------


def minmax_normalise(saliency: np.ndarray) -> np.ndarray:
    """(m - min) / (max - min) in float64; a constant map becomes zeros (wsolevaluation's normalize_scoremap)."""
    s = _checked(saliency)
    lo, hi = s.min(), s.max()
    return (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)


def estimated_boxes(foreground: np.ndarray) -> np.ndarray:
    """The boxes wsolevaluation draws around every contour of a binary mask (cv2.findContours RETR_TREE, then
    boundingRect), found without OpenCV: one per 8-connected foreground component, and one per hole (a 4-connected
    background component not touching the border) whose contour runs through the foreground pixels around it, so
    its box is the hole's grown by one pixel. k x 4 float (x0, y0, x1, y1), pixel-edge coordinates."""
    from scipy import ndimage  # on use: SciPy takes a second to import

    fg = np.asarray(foreground, dtype=bool)
    found = [
        (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
        for sl in ndimage.find_objects(ndimage.label(fg, structure=_EIGHT)[0])
    ]
    background = ndimage.label(~fg, structure=_FOUR)[0]
    outer = set(np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]]).tolist())
    found += [
        (sl[1].start - 1, sl[0].start - 1, sl[1].stop + 1, sl[0].stop + 1)
        for i, sl in enumerate(ndimage.find_objects(background), 1)
        if sl is not None and i not in outer
    ]
    return np.asarray(found, dtype=np.float64).reshape(-1, 4)


def box_ious(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (k x 4) with every box in ``b`` (g x 4): k x g, areas in pixel-edge coordinates
    (an integer box [c0, c1 + 1) is wsolevaluation's inclusive [c0, c1] with its +1)."""
    a, b = a[:, None, :], b[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    union = area_a + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def best_iou_curve(saliency: np.ndarray, boxes: Sequence[Box], thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """For each tau: the best IoU of any box around a contour of the thresholded map against any of ``boxes``.

    As wsolevaluation: the map is min-max normalised, scaled to 8 bits by truncation (q = uint8(255 s)) and a
    pixel is foreground when q > int(tau * max q) (strict; THRESH_BINARY). Nothing foreground: IoU 0.
    """
    if not boxes:
        raise ValueError("best_iou_curve needs at least one box")
    q = (minmax_normalise(saliency) * 255).astype(np.uint8)
    top = int(q.max())
    gt = np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes], dtype=np.float64)
    curve = np.zeros(len(thresholds))
    for i, tau in enumerate(thresholds):
        fg = q > int(tau * top)
        if fg.any():
            curve[i] = box_ious(estimated_boxes(fg), gt).max()
    return curve


@dataclass(frozen=True)
class MaxBoxAcc:
    value: float  # MaxBoxAccV2 in percent: the mean of per_delta
    per_delta: dict[int, float]  # delta -> the best over tau of the share of images with IoU >= delta %, in percent
    best_tau: dict[int, float]  # delta -> the tau that reaches it (the lowest one on ties)
    optimal_tau: float  # best_tau[select]: the dataset's operating threshold
    per_image_iou: dict[str, float]  # each scored image's best IoU at optimal_tau
    images: int  # images scored
    skipped: tuple[str, ...]  # images with no box in the view (not scored)


class MaxBoxAccV2:
    """MaxBoxAccV2 over a dataset, accumulated image by image like wsolevaluation's BoxEvaluator (with
    multi_contour_eval and multi_iou_eval): ``add`` each image's map and boxes, then ``result``."""

    def __init__(
        self, thresholds: np.ndarray = THRESHOLDS, deltas: Sequence[int] = IOU_DELTAS, select: int = SELECT_DELTA
    ):
        if select not in deltas:
            raise ValueError(f"select={select} must be one of the deltas {tuple(deltas)}")
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.deltas, self.select = tuple(deltas), select
        self.keys: list[str] = []
        self.curves: list[np.ndarray] = []
        self.skipped: list[str] = []

    def add(self, key: str, saliency: np.ndarray, boxes: Sequence[Box | None]) -> np.ndarray | None:
        """Score one image; returns its best-IoU-per-tau curve, or None (skipped) when it has no box in the view."""
        kept = [b for b in boxes if b is not None and b.area > 0]
        if not kept:
            self.skipped.append(key)
            return None
        curve = best_iou_curve(saliency, kept, self.thresholds)
        self.keys.append(key)
        self.curves.append(curve)
        return curve

    def add_curve(self, key: str, curve: np.ndarray) -> None:
        """An image's best-IoU-per-tau curve computed before (e.g. saved by a resumable evaluation)."""
        if len(curve) != len(self.thresholds):
            raise ValueError(f"a curve has {len(self.thresholds)} values, one per threshold; got {len(curve)}")
        self.keys.append(key)
        self.curves.append(np.asarray(curve, dtype=np.float64))

    def accuracy(self, delta: int) -> np.ndarray:
        """Per tau: the share of scored images whose best IoU is >= delta %, in percent."""
        if not self.curves:
            raise ValueError("no image has been scored")
        return (np.stack(self.curves) >= delta / 100).mean(axis=0) * 100

    def result(self) -> MaxBoxAcc:
        curves = {d: self.accuracy(d) for d in self.deltas}
        best = {d: int(np.argmax(c)) for d, c in curves.items()}
        at = best[self.select]
        return MaxBoxAcc(
            value=float(np.mean([curves[d][best[d]] for d in self.deltas])),
            per_delta={d: float(curves[d][best[d]]) for d in self.deltas},
            best_tau={d: float(self.thresholds[best[d]]) for d in self.deltas},
            optimal_tau=float(self.thresholds[at]),
            per_image_iou={k: float(c[at]) for k, c in zip(self.keys, self.curves, strict=True)},
            images=len(self.keys),
            skipped=tuple(self.skipped),
        )


# --- baselines and the whole evaluation ------------------------------------------------------------------


@dataclass(frozen=True)
class MapScore:
    """One map against its image's boxes (in the map's view): what the app shows and the evidence counts."""

    hit: bool  # a peak of the map inside a box (any of tied peaks, as Quantus and TorchRay count)
    hit_tolerant: bool  # within POINTING_TOLERANCE px of a box
    hit_share: float  # the chance of a hit when ties are broken at random
    peaks: int
    energy: float  # share of the map's mass inside the boxes (NaN: no mass)
    coverage: float  # share of the view inside the boxes: a flat map's energy


def score_map(saliency: np.ndarray, boxes: Sequence[Box | None]) -> MapScore | None:
    """Pointing and energy of one map; None when no box is left in the view."""
    kept = [b for b in boxes if b is not None and b.area > 0]
    point, energy = pointing_game(saliency, kept), energy_in_boxes(saliency, kept)
    if point is None or energy is None:
        return None
    return MapScore(
        point.hit(), point.hit(POINTING_TOLERANCE), point.hit_share(), point.peaks, energy.share, energy.coverage
    )


def flat_map(shape: tuple[int, int]) -> np.ndarray:
    """The map that says nothing: every pixel equal."""
    return np.ones(shape, dtype=np.float64)


def centre_gaussian(shape: tuple[int, int], sigma: float | None = None) -> np.ndarray:
    """An isotropic Gaussian around the view's centre (W/2, H/2 in edge coordinates); sigma defaults to
    min(H, W) / 4 (wsolevaluation ships no centre baseline: this definition is ours, see the docs)."""
    h, w = shape
    sigma = min(h, w) / 4 if sigma is None else sigma
    y = np.arange(h) + 0.5 - h / 2
    x = np.arange(w) + 0.5 - w / 2
    return np.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))


@dataclass(frozen=True)
class LocalisationSummary:
    images: int  # scored: at least one box in the view
    pointing: float  # share of images hit at tolerance 0 (any peak)
    pointing_tolerant: float  # at ``tolerance`` px
    tolerance: float
    pointing_share: float  # mean hit_share at tolerance 0 (ties broken at random)
    tied: int  # images whose map has more than one peak
    energy: float  # mean share of the mass in the boxes, over images whose map has mass
    coverage: float  # mean share of the view in the boxes (a flat map's energy)
    massless: int  # scored images whose map has no mass (left out of ``energy``)
    max_box_acc: MaxBoxAcc


class LocalisationEvaluator:
    """Pointing game, energy in boxes and MaxBoxAccV2 over the same images, one ``add`` per image."""

    def __init__(
        self,
        tolerance: float = POINTING_TOLERANCE,
        thresholds: np.ndarray = THRESHOLDS,
        deltas: Sequence[int] = IOU_DELTAS,
    ):
        self.tolerance = tolerance
        self.box_acc = MaxBoxAccV2(thresholds, deltas)
        self.pointing: dict[str, Pointing] = {}
        self.energy: dict[str, Energy] = {}

    def add(self, key: str, saliency: np.ndarray, boxes: Sequence[Box | None]) -> bool:
        """Score one image (boxes in view coordinates, None entries ignored); False when it has none in the view."""
        kept = [b for b in boxes if b is not None]
        pointing, energy = pointing_game(saliency, kept), energy_in_boxes(saliency, kept)
        if pointing is None or energy is None or self.box_acc.add(key, saliency, kept) is None:
            if key not in self.box_acc.skipped:
                self.box_acc.skipped.append(key)
            return False
        self.pointing[key], self.energy[key] = pointing, energy
        return True

    def summary(self) -> LocalisationSummary:
        points, energies = list(self.pointing.values()), list(self.energy.values())
        if not points:
            raise ValueError("no image has been scored")
        with_mass = [e.share for e in energies if not math.isnan(e.share)]
        return LocalisationSummary(
            images=len(points),
            pointing=float(np.mean([p.hit(0) for p in points])),
            pointing_tolerant=float(np.mean([p.hit(self.tolerance) for p in points])),
            tolerance=self.tolerance,
            pointing_share=float(np.mean([p.hit_share(0) for p in points])),
            tied=sum(p.peaks > 1 for p in points),
            energy=float(np.mean(with_mass)) if with_mass else math.nan,
            coverage=float(np.mean([e.coverage for e in energies])),
            massless=len(energies) - len(with_mass),
            max_box_acc=self.box_acc.result(),
        )
