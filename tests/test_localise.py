"""Localisation in the service, the evidence command and the app's evidence section: hand-made maps
and boxes with known answers, the picture functions, and the command end to end on a tiny zoo."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from conftest import DATA
from dsnet.cam.images import difference_overlay, draw_boxes, signed_difference
from dsnet.cam.localisation import Box, score_map

BOXES = DATA / "ilsvrc-val-boxes"


def test_score_map_counts_a_peak_in_the_box_and_the_mass_inside():
    saliency = np.zeros((40, 40), np.float32)
    saliency[5:10, 5:10] = 1.0  # all the mass inside the box [5, 10) x [5, 10)
    s = score_map(saliency, [Box(5, 5, 10, 10), None])  # None: a box the crop removed
    assert s.hit and s.hit_tolerant and s.hit_share == 1.0 and s.peaks == 25
    assert s.energy == pytest.approx(1.0) and s.coverage == pytest.approx(25 / 1600)
    saliency[39, 39] = 2.0  # the peak far outside (42 px from the box): a miss, also with 15 px tolerance
    s = score_map(saliency, [Box(5, 5, 10, 10)])
    assert not s.hit and not s.hit_tolerant and s.energy == pytest.approx(25 / 27)
    saliency[39, 39], saliency[0, 19] = 0.0, 2.0  # 11 px from the box: a miss, but a hit within 15 px
    s = score_map(saliency, [Box(5, 5, 10, 10)])
    assert not s.hit and s.hit_tolerant
    assert score_map(saliency, [None]) is None  # no box left in the view: not scored
    flat = score_map(np.ones((20, 20)), [Box(0, 0, 10, 20)])
    assert flat.energy == pytest.approx(flat.coverage) == pytest.approx(0.5)  # a flat map scores the coverage
    assert math.isnan(score_map(np.zeros((20, 20)), [Box(0, 0, 10, 20)]).energy)  # no mass: no share


def test_draw_boxes_outlines_inside_the_picture_and_leaves_the_rest():
    rgb = np.full((40, 50, 3), 100, np.uint8)
    out = draw_boxes(rgb, [(10, 5, 30, 25), (45, 30, 80, 90)], width=2)  # the second runs off the edge: clipped
    assert out is not rgb and (rgb == 100).all()  # a new array
    assert (out[5, 10:30] == 0).all()  # the black outer line on the top edge
    assert (out[6, 11:29] == 255).all()  # the white line inside it
    assert (out[15, 15:25] == 100).all()  # the inside untouched
    assert (out[39, 45:50] == 0).all()  # clipped box: its bottom edge on the last row
    assert (draw_boxes(rgb, [(60, 60, 70, 70)]) == rgb).all()  # entirely outside: nothing drawn


def test_the_signed_difference_is_where_one_map_looks_and_the_other_does_not():
    a = np.zeros((8, 8))
    a[:4] = 3.0  # top half
    b = np.zeros((8, 8))
    b[:, :4] = 0.5  # left half
    d = signed_difference(a, b)  # each scaled to [0, 1] first
    assert d[0, 6] == 1.0 and d[6, 0] == -1.0 and d[0, 0] == 0.0 and d[6, 6] == 0.0
    assert (signed_difference(np.ones((4, 4)), np.ones((4, 4))) == 0).all()  # flat maps: no difference
    with pytest.raises(ValueError, match="differ in size"):
        signed_difference(a, np.zeros((4, 4)))
    view = np.full((8, 8, 3), 0.5, np.float32)
    shown = difference_overlay(view, d).astype(int)
    assert shown[0, 6, 0] > shown[0, 6, 2] + 40  # red where the first looks more
    assert shown[6, 0, 2] > shown[6, 0, 0] + 40  # blue where the second does
    assert (shown[0, 0] == 128).all()  # the photo itself where they agree


def test_the_evidence_section_reads_only_the_artifacts(tmp_path):
    from app.evidence import localisation_table, method_label, sanity_verdicts

    sanity = tmp_path / "sanity.json"
    sanity.write_text(
        json.dumps(
            {
                "verdicts": {
                    "gradcam": {"resnet50": "passes", "dsnet50": "passes"},
                    "eigencam": {"resnet50": "weak", "dsnet50": "fails"},
                }
            }
        )
    )
    verdicts = sanity_verdicts(sanity)
    assert verdicts == {"gradcam": "passes", "eigencam": "fails"}  # the worst over the models
    assert method_label("gradcam", "fast", verdicts) == "gradcam — fast"
    assert "fails the randomisation check" in method_label("eigencam", "svd", verdicts)
    assert sanity_verdicts(tmp_path / "missing.json") == {}
    ci = {"mean": 0.5, "ci95": [0.4, 0.6], "n": 10}
    box = {"value": 55.0, "ci95": [50.0, 60.0]}
    group = {"pointing": ci, "energy": ci, "coverage": 0.3, "max_box_acc_v2": box}
    table = localisation_table(
        {
            "groups": {"gradcam/resnet50": group, "gradcam/dsnet50": group, "-/flat": group},
            "comparisons": [
                {
                    "method": "gradcam",
                    "subset": "all",
                    "a": "resnet50",
                    "b": "dsnet50",
                    "pointing": {"diff": 2.0, "p_value": 0.5},
                    "energy": {"diff": 0.01, "p_value": 0.04},
                }
            ],
        }
    )
    assert "| resnet50 | 50 % [40, 60] | 50 % [40, 60] (30 %) | 55.0 [50.0, 60.0] |" in table
    assert "baseline: flat map | — (every pixel ties)" in table
    assert (
        "dsnet50 − resnet50: pointing +2.0 points (McNemar p = 0.5), map mass in the boxes +1.0 points "
        "(Wilcoxon p = 0.04)"
    ) in table


def test_the_evidence_command_without_a_model_says_so(tiny_zoo, tmp_path, capsys):
    from dsnet.evidence.localise import main

    assert (
        main(
            [
                "--data",
                str(BOXES),
                "--out",
                str(tmp_path / "loc"),
                "--work",
                str(tmp_path / "work"),
                "--zoo",
                "tiny",
                "--models",
                "dsnet101",
                "--limit",
                "1",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.endswith("error: no model of zoo 'tiny' can be loaded\n")
    assert not (tmp_path / "loc.json").exists()


@pytest.mark.slow
def test_the_evidence_command_resumes_and_summarises(tiny_zoo, tmp_path):
    from dsnet.evidence.localise import main

    out, work = tmp_path / "loc", tmp_path / "work"
    args = [
        "--data",
        str(BOXES),
        "--out",
        str(out),
        "--work",
        str(work),
        "--zoo",
        "tiny",
        "--limit",
        "3",
        "--methods",
        "gradcam",
        "ablationcam",
        "--slow-per-class",
        "1",
        "--focus-csv",
        str(tmp_path / "none.csv"),
    ]
    assert main(args) == 0
    with open(work / "rows.csv", newline="") as f:
        first = list(csv.DictReader(f))
    # 3 images x (gradcam x 3 models + 2 baselines) + ablationcam x 3 models on the first image of the class
    assert len(first) == 3 * (3 + 2) + 3
    assert main(args) == 0  # resumed: nothing explained again
    with open(work / "rows.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(first)
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["images"] == 3 and summary["slow_methods"] == ["ablationcam"] and summary["commit"]
    g = summary["groups"]["gradcam/resnet50"]
    assert g["images"] == 3 and 0 <= g["pointing"]["mean"] <= 1 and 0 < g["coverage"] < 1
    assert 0 <= g["max_box_acc_v2"]["value"] <= 100 and g["max_box_acc_v2"]["images"] == 3
    assert summary["groups"]["-/flat"]["energy"]["mean"] == pytest.approx(summary["groups"]["-/flat"]["coverage"])
    kinds = {(c["b"], c["method"], c["subset"]) for c in summary["comparisons"]}
    assert ("dsnet50", "gradcam", "all") in kinds and ("ds2net50", "gradcam", "all") in kinds
    with open(out.with_suffix(".csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert "iou_curve" not in rows[0] and all(0 <= float(r["iou"]) <= 1 for r in rows)
    assert out.with_suffix(".png").stat().st_size > 10_000
