"""dsnet.cam.localisation: boxes through model_view's preprocessing, and the metrics on hand-made maps with known
answers. The real-data tests read ilsvrc-val-boxes/ from the shared data (conftest.DATA): without it they skip,
under CI they fail."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from conftest import DATA
from dsnet.cam.images import model_view, open_image
from dsnet.cam.localisation import (
    IOU_DELTAS,
    THRESHOLDS,
    Box,
    LocalisationEvaluator,
    MaxBoxAccV2,
    best_iou_curve,
    boxes_mask,
    boxes_to_view,
    centre_gaussian,
    energy_in_boxes,
    estimated_boxes,
    flat_map,
    pointing_game,
    read_boxes,
    view_geometry,
)
from dsnet.zoo.manifest import MANIFEST_PATH, Preprocessing, load_manifest

BOXES = DATA / "ilsvrc-val-boxes"
RED, GREY = (255, 0, 0), (60, 60, 60)


@pytest.fixture
def ilsvrc():
    """The ilsvrc-val-boxes folder; skipped with the reason when it is missing (CI must have it)."""
    if not (BOXES / "boxes.csv").is_file():
        message = f"needs {BOXES}/boxes.csv (the shared data; set DSNET_DATA to the folder holding ilsvrc-val-boxes/)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return BOXES


def painted(size: tuple[int, int], box: Box, background=GREY) -> Image.Image:
    """A ``size`` = (w, h) RGB image of ``background`` with the pixels of ``box`` (centre rule) pure red."""
    arr = np.empty((size[1], size[0], 3), np.uint8)
    arr[:] = background
    arr[boxes_mask([box], (size[1], size[0]))] = RED
    return Image.fromarray(arr)


def bracketed(measured: np.ndarray, expected: np.ndarray) -> bool:
    """The measured region matches the expected one within a pixel: eroded expected <= measured <= dilated."""
    grow = ndimage.binary_dilation(expected, np.ones((3, 3), bool))
    shrink = ndimage.binary_erosion(expected, np.ones((3, 3), bool))
    return bool((measured <= grow).all() and (shrink <= measured).all())


# --- the transform, against model_view's pixels ------------------------------------------------------------

CASES = [  # (image size, preprocessing): odd and even crop margins, down- and upscaling, portrait and landscape
    ((224, 224), Preprocessing(resize=183, crop=160)),  # the shipped zoo: margin 23, floor 11 (torchvision: 12)
    ((301, 200), Preprocessing(resize=146, crop=128)),
    ((200, 333), Preprocessing(resize=183, crop=160)),
    ((500, 375), Preprocessing(resize=256, crop=224)),
    ((100, 80), Preprocessing(resize=146, crop=128)),  # upscaled; round(182.5) = 182
]


@pytest.mark.parametrize("size,pre", CASES)
def test_boxes_to_view_matches_model_view_within_a_pixel(size, pre):
    w, h = size
    box = Box(round(0.3 * w), round(0.35 * h), round(0.62 * w), round(0.6 * h))
    view = model_view(painted(size, box), pre)
    g = view_geometry(w, h, pre)
    assert view.shape == (pre.crop, pre.crop, 3) and g.crop == pre.crop
    (vb,) = boxes_to_view([box], size, pre)
    red = view[..., 0] - view[..., 1]  # pure red: 1; grey: 0; a blended edge pixel: its red share
    assert bracketed(red > 0.5, boxes_mask([vb], view.shape[:2]))
    # Sub-pixel: the red mass and its centroid are the transformed box's area and centre.
    cols = np.arange(pre.crop) + 0.5
    mass = red.clip(0, None)
    cx = (mass.sum(0) * cols).sum() / mass.sum()
    cy = (mass.sum(1) * cols).sum() / mass.sum()
    assert abs(cx - (vb.x0 + vb.x1) / 2) < 0.15 and abs(cy - (vb.y0 + vb.y1) / 2) < 0.15
    assert mass.sum() == pytest.approx(vb.area, rel=0.02)
    # torchvision's CenterCrop rounds (diff / 2) instead of flooring it: where the two differ, its offset would
    # put the box a whole pixel off what model_view shows (the centroid check above tells them apart).
    tv_left = int(round((g.resized_width - pre.crop) / 2.0))
    if tv_left != g.left:
        assert abs(cx - ((vb.x0 + vb.x1) / 2 - (tv_left - g.left))) > 0.8


def test_box_partly_outside_the_crop_is_clipped():
    pre, size = Preprocessing(resize=50, crop=40), (200, 100)
    g = view_geometry(*size, pre)
    assert (g.resized_width, g.resized_height, g.left, g.top) == (100, 50, 30, 5)
    (vb,) = boxes_to_view([Box(0, 0, 100, 40, wnid="n0")], size, pre)
    assert vb == Box(0, 0, 20, 15, wnid="n0")  # scaled (0, 0, 50, 20), shifted by (30, 5), clipped at 0
    view = model_view(painted(size, Box(0, 0, 100, 40)), pre)
    assert bracketed(view[..., 0] - view[..., 1] > 0.5, boxes_mask([vb], (40, 40)))


def test_box_the_crop_removes_is_dropped_in_place():
    pre, size = Preprocessing(resize=50, crop=40), (200, 100)
    gone, kept = Box(0, 0, 50, 100), Box(100, 40, 120, 60)
    assert boxes_to_view([gone, kept], size, pre) == [None, Box(20, 15, 30, 25)]
    view = model_view(painted(size, gone), pre)
    assert (view[..., 0] - view[..., 1]).max() < 0.05  # and indeed nothing of it is in the view
    assert boxes_to_view([Box(0, 0, 60, 100)], size, pre) == [None]  # ends exactly at the crop's edge: no area


# --- masks --------------------------------------------------------------------------------------------------


def test_boxes_mask_uses_pixel_centres_half_open():
    assert boxes_mask([Box(0.5, 0, 2.5, 1)], (1, 4)).tolist() == [[True, True, False, False]]
    assert boxes_mask([Box(0.6, 0, 2.5, 1)], (1, 4)).tolist() == [[False, True, False, False]]
    a, b = boxes_mask([Box(0, 0, 2, 3)], (3, 4)), boxes_mask([Box(2, 0, 4, 3)], (3, 4))
    assert not (a & b).any() and (a | b).all() and a.sum() == 6  # adjacent boxes share no pixel
    assert not boxes_mask([], (3, 4)).any()


# --- pointing game and energy ---------------------------------------------------------------------------------


def test_map_equal_to_a_box_indicator_scores_perfectly():
    box = Box(10, 5, 20, 15)
    m = boxes_mask([box], (32, 32)).astype(float)
    p, e = pointing_game(m, [box]), energy_in_boxes(m, [box])
    assert p.hit(0) and p.distance == 0 and p.peaks == 100 and p.hit_share(0) == 1
    assert e.share == 1.0 and e.coverage == 100 / 1024
    curve = best_iou_curve(m, [box])
    assert (curve == 1).all()  # the thresholded map is the box at every tau
    acc = MaxBoxAccV2()
    acc.add("a", m, [box])
    r = acc.result()
    assert r.value == 100 and r.per_delta == {30: 100, 50: 100, 70: 100} and r.per_image_iou == {"a": 1.0}


def test_peak_just_outside_a_box_misses_at_0_and_hits_with_15_px():
    box = Box(10, 10, 20, 20)  # pixels 10..19
    m = np.zeros((40, 40))
    m[15, 22] = 1  # 3 px right of column 19
    p = pointing_game(m, [box])
    assert p.peak == (15, 22) and p.distance == 3 and p.peaks == 1
    assert not p.hit(0) and p.hit(15)
    for col, hit in ((33, True), (34, False)):  # 14 px: hit; exactly 15 px: miss (strict, as TorchRay)
        m = np.zeros((40, 40))
        m[15, col] = 1
        assert pointing_game(m, [box]).hit(15) is hit


def test_tied_peaks_any_rule_and_random_tie_break_share():
    box = Box(0, 0, 4, 4)
    m = np.zeros((10, 10))
    m[1, 1] = m[8, 8] = 5.0
    p = pointing_game(m, [box])
    assert p.peaks == 2 and p.hit(0) and p.hit_share(0) == 0.5 and p.peak == (1, 1)


def test_two_boxes_union_energy_split_and_best_iou_over_any_box():
    a, b = Box(0, 0, 2, 2), Box(5, 5, 8, 8)
    union = boxes_mask([a, b], (10, 10))
    assert (union == (boxes_mask([a], (10, 10)) | boxes_mask([b], (10, 10)))).all() and union.sum() == 13
    m = np.full((10, 10), 0.5)
    m[boxes_mask([a], (10, 10))] = 1
    m[boxes_mask([b], (10, 10))] = 2
    e = energy_in_boxes(m, [a, b])
    assert e.share == pytest.approx((4 * 1 + 9 * 2) / (4 + 18 + 87 * 0.5)) and e.coverage == 0.13
    assert pointing_game(m, [a, b]).hit(0)  # the maximum is in b
    only_b = boxes_mask([b], (10, 10)).astype(float)
    assert best_iou_curve(only_b, [a, b]).max() == 1  # the best box of any of the boxes counts
    assert best_iou_curve(union.astype(float), [a, b]).max() == 1  # one box around each component
    hull = boxes_mask([Box(0, 0, 8, 8)], (10, 10)).astype(float)
    assert best_iou_curve(hull, [a, b]).max() == pytest.approx(9 / 64)


def test_flat_map_energy_is_the_coverage_and_gaussian_peaks_at_the_centre():
    boxes = [Box(1, 2, 7, 5), Box(4, 4, 10, 9)]
    flat = flat_map((12, 12))
    e, p = energy_in_boxes(flat, boxes), pointing_game(flat, boxes)
    assert e.share == pytest.approx(e.coverage) and e.coverage == boxes_mask(boxes, (12, 12)).mean()
    assert p.hit(0) and p.peaks == 144 and p.hit_share(0) == pytest.approx(e.coverage)  # the flat map's truth
    assert (best_iou_curve(flat, boxes) == 0).all()  # min-max makes it all zeros: nothing is foreground
    g = centre_gaussian((12, 12))
    assert pointing_game(g, [Box(5, 5, 7, 7)]).peaks == 4  # an even view: four centre pixels tie
    assert pointing_game(g, [Box(5, 5, 6, 6)]).hit(0) and not pointing_game(g, [Box(0, 0, 5, 5)]).hit(0)
    assert np.allclose(g, g[::-1]) and np.allclose(g, g.T) and centre_gaussian((11, 11)).argmax() == 60
    est = estimated_boxes(minmax_q(g) > 100)
    assert len(est) == 1 and est[0, 0] + est[0, 2] == 12 and est[0, 1] + est[0, 3] == 12  # centred squares


def minmax_q(m: np.ndarray) -> np.ndarray:
    return ((m - m.min()) / (m.max() - m.min()) * 255).astype(np.uint8)


def test_massless_and_boxless_maps():
    assert math.isnan(energy_in_boxes(np.zeros((4, 4)), [Box(0, 0, 2, 2)]).share)
    assert pointing_game(np.ones((4, 4)), []) is None and energy_in_boxes(np.ones((4, 4)), []) is None
    assert pointing_game(np.ones((4, 4)), [Box(1.1, 1.1, 1.4, 1.4)]) is None  # no pixel centre inside
    for bad in (np.ones(4), np.full((3, 3), np.nan), -np.ones((3, 3)), np.ones((0, 3))):
        with pytest.raises(ValueError):
            pointing_game(bad, [Box(0, 0, 1, 1)])


# --- MaxBoxAccV2 ------------------------------------------------------------------------------------------------


def tiny_images() -> dict[str, tuple[np.ndarray, list[Box]]]:
    """Five 6 x 6 maps whose best IoU is 1 for tau < 0.5 and another value from tau = 0.5 on (ring = 0.5 -> 127,
    which is not > int(0.5 * 255) = 127)."""

    def core_ring(core: Box, ring: Box) -> np.ndarray:
        return 0.5 * boxes_mask([ring], (6, 6)) + 0.5 * boxes_mask([core], (6, 6))

    two, four = Box(0, 0, 2, 2), Box(0, 0, 4, 4)
    return {
        "A": (boxes_mask([Box(0, 0, 3, 3)], (6, 6)).astype(float), [Box(0, 0, 3, 3)]),  # 1 at every tau
        "B": (core_ring(two, four), [four]),  # 1, then 4/16 = 0.25
        "C": (core_ring(two, four), [Box(0, 0, 2, 3)]),  # 6/16 = 0.375, then 4/6
        "D": (core_ring(two, four), [Box(0, 0, 3, 2)]),  # the same, transposed
        "E": (boxes_mask([Box(4, 4, 6, 6)], (6, 6)).astype(float), [two]),  # 0 at every tau
    }


def test_max_box_acc_v2_hand_computed():
    acc = MaxBoxAccV2()
    curves = {k: acc.add(k, m, b) for k, (m, b) in tiny_images().items()}
    low, high = slice(0, 50), slice(50, 100)
    expected = {"A": (1, 1), "B": (1, 0.25), "C": (0.375, 4 / 6), "D": (0.375, 4 / 6), "E": (0, 0)}
    for k, (lo, hi) in expected.items():
        assert np.allclose(curves[k][low], lo) and np.allclose(curves[k][high], hi), k
    # delta 30: 4/5 below 0.5, 3/5 above; delta 50: 2/5, then 3/5; delta 70: 2/5, then 1/5.
    r = acc.result()
    assert r.per_delta == pytest.approx({30: 80, 50: 60, 70: 40})
    assert r.best_tau == {30: 0.0, 50: 0.5, 70: 0.0}  # the lowest tau on ties
    assert r.value == pytest.approx(60) and r.optimal_tau == 0.5 and r.images == 5 and r.skipped == ()
    assert r.per_image_iou == pytest.approx({"A": 1, "B": 0.25, "C": 4 / 6, "D": 4 / 6, "E": 0})
    assert len(THRESHOLDS) == 100 and IOU_DELTAS == (30, 50, 70)


def test_max_box_acc_v2_skips_images_without_boxes_in_view():
    acc = MaxBoxAccV2()
    m, b = tiny_images()["A"]
    assert acc.add("gone", m, [None]) is None
    acc.add("A", m, b)
    r = acc.result()
    assert r.images == 1 and r.skipped == ("gone",) and r.value == 100


def test_hole_boxes_count_like_cv2_retr_tree():
    ring = np.ones((7, 7), bool)
    ring[2:5, 2:5] = False  # a 3 x 3 hole; its contour runs through the ring pixels around it
    assert sorted(map(tuple, estimated_boxes(ring).tolist())) == [(0, 0, 7, 7), (1, 1, 6, 6)]
    m = ring.astype(float)
    assert best_iou_curve(m, [Box(1, 1, 6, 6)]).max() == 1  # the hole's box is a candidate, as in wsolevaluation
    open_ring = ring.copy()
    open_ring[3, 0:2] = False  # the "hole" reaches the border: background, no box
    assert sorted(map(tuple, estimated_boxes(open_ring).tolist())) == [(0, 0, 7, 7)]


def test_estimated_boxes_equal_opencv_contour_boxes():
    cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless) is not installed")
    rng = np.random.default_rng(0)
    for trial in range(400):
        h, w = rng.integers(1, 24, 2)
        noise = rng.random((h, w))
        if trial % 2:
            noise = ndimage.gaussian_filter(noise, rng.uniform(0.5, 3))
        fg = noise > np.quantile(noise, rng.uniform(0.1, 0.9))
        contours = cv2.findContours(fg.astype(np.uint8) * 255, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
        theirs = {(x, y, x + bw, y + bh) for x, y, bw, bh in map(cv2.boundingRect, contours)}
        assert {tuple(map(int, r)) for r in estimated_boxes(fg)} == theirs, fg.astype(int)


def test_evaluator_summary():
    ev = LocalisationEvaluator()
    for k, (m, b) in tiny_images().items():
        assert ev.add(k, m, b)
    assert not ev.add("gone", np.ones((6, 6)), [None])
    s = ev.summary()
    assert s.images == 5 and s.max_box_acc.skipped == ("gone",) and s.max_box_acc.value == pytest.approx(60)
    assert s.pointing == 0.8 and s.pointing_tolerant == 1.0 and s.tolerance == 15  # E's nearest peak is 4.2 px off
    assert s.tied == 5 and s.massless == 0 and 0 < s.coverage < 1


# --- the real data --------------------------------------------------------------------------------------------------


def shipped_preprocessings() -> list[Preprocessing]:
    """The imagenette zoo's preprocessing from the shipped manifest, the 128 px test size and a no-crop 160."""
    zoo = load_manifest(MANIFEST_PATH).zoos.get("imagenette")
    shipped = next(iter(zoo.entries.values())).preprocessing if zoo else Preprocessing(resize=183, crop=160)
    return [shipped, Preprocessing(resize=146, crop=128), Preprocessing(resize=160, crop=160)]


def test_read_boxes_on_the_real_csv(ilsvrc):
    import csv

    boxes = read_boxes(ilsvrc)
    assert len(boxes) == 250 and sum(map(len, boxes.values())) == 406
    rows = list(csv.DictReader(open(ilsvrc / "boxes.csv", newline="")))
    by_image: dict[str, list[dict]] = {}
    for row in rows:
        by_image.setdefault(row["image"], []).append(row)
    for image, found in boxes.items():
        assert image.startswith(found[0].wnid + "/") and (ilsvrc / image).is_file()
        for box, row in zip(found, by_image[image], strict=True):
            one = 224 / float(row["original_width"]), 224 / float(row["original_height"])
            assert box.x0 == pytest.approx(float(row["x0"]), abs=0.006)
            assert box.x1 == pytest.approx(float(row["x1"]) + one[0], abs=0.006)  # + one original pixel
            assert box.y1 == pytest.approx(float(row["y1"]) + one[1], abs=0.006)
            assert 0 <= box.x0 < box.x1 <= 224 and 0 <= box.y0 < box.y1 <= 224


def test_real_boxes_through_model_view(ilsvrc):
    """Real images (grey, darkened) with their real boxes painted red, through model_view at the zoo's sizes."""
    boxes = read_boxes(ilsvrc)
    images = [next(k for k in sorted(boxes) if k.startswith(w)) for w in sorted({b[0].wnid for b in boxes.values()})]
    dropped = 0
    for pre in shipped_preprocessings():
        for image in images[:6]:
            picture = open_image(ilsvrc / image).image
            grey = np.asarray(picture.convert("L")) // 2
            arr = np.stack([grey] * 3, -1)
            arr[boxes_mask(boxes[image], grey.shape)] = RED
            view = model_view(Image.fromarray(arr), pre)
            in_view = boxes_to_view(boxes[image], picture.size, pre)
            dropped += in_view.count(None)
            kept = [b for b in in_view if b]
            assert all(0 <= b.x0 < b.x1 <= pre.crop and 0 <= b.y0 < b.y1 <= pre.crop for b in kept)
            assert bracketed(view[..., 0] - view[..., 1] > 0.5, boxes_mask(kept, view.shape[:2])), (pre, image)
    assert dropped == 0  # these images' objects all reach into the centre crops


def test_whole_real_set_has_boxes_in_every_view_and_baselines_are_sane(ilsvrc):
    boxes = read_boxes(ilsvrc)
    pre = shipped_preprocessings()[0]
    shape = (pre.crop, pre.crop)
    flat, centre = LocalisationEvaluator(), LocalisationEvaluator()
    for image, found in sorted(boxes.items())[::10]:  # 25 images, one class in ten steps
        in_view = boxes_to_view(found, (224, 224), pre)
        flat.add(image, flat_map(shape), in_view)
        centre.add(image, centre_gaussian(shape), in_view)
    f, c = flat.summary(), centre.summary()
    assert f.images == c.images == 25 and f.pointing == 1.0 and f.energy == pytest.approx(f.coverage)
    assert f.max_box_acc.value == 0  # a constant map has no contour (wsolevaluation's normalisation)
    assert 0 < c.max_box_acc.value <= 100 and 0 <= c.pointing <= 1 and c.tied == 25


# --- Quantus --------------------------------------------------------------------------------------------------------


def test_pointing_and_energy_equal_quantus():
    quantus = pytest.importorskip("quantus", reason="Quantus is not installed (optional, GPL-3.0: never a dependency)")
    rng = np.random.default_rng(3)
    n, size = 12, 32
    maps = np.stack([np.kron(rng.random((4, 4)), np.ones((8, 8))) for _ in range(n)])  # plateaus: 64 tied peaks
    maps[:4] = rng.random((4, size, size))  # and unique maxima
    corners = [(sorted(rng.uniform(0, size, 2)), sorted(rng.uniform(0, size, 2))) for _ in range(n)]
    boxes = [[Box(x0, y0, x1, y1)] for (x0, x1), (y0, y1) in corners]
    masks = np.stack([boxes_mask(b, (size, size)) for b in boxes]).astype(float)[:, None]
    keep = masks.reshape(n, -1).any(1)
    x = np.zeros((n, 3, size, size), np.float32)
    kwargs = dict(
        model=None,
        x_batch=x,
        y_batch=np.zeros(n, int),
        a_batch=maps[:, None].astype(np.float32),
        s_batch=masks,
        channel_first=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs_pg = quantus.PointingGame(normalise=False, abs=False, disable_warnings=True)(**kwargs)
        theirs_al = quantus.AttributionLocalisation(normalise=False, abs=False, disable_warnings=True)(**kwargs)
    for i in np.flatnonzero(keep):
        assert pointing_game(maps[i], boxes[i]).hit(0) == bool(theirs_pg[i]), i
        assert energy_in_boxes(maps[i], boxes[i]).share == pytest.approx(float(theirs_al[i]), rel=1e-5), i
    assert keep.sum() >= 8
