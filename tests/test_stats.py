"""dsnet.evidence.stats on hand-made cases whose answers are known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dsnet.evidence import stats


def _pairs(both_right: int, only_a: int, only_b: int, both_wrong: int) -> tuple[list[bool], list[bool]]:
    a = [True] * both_right + [True] * only_a + [False] * only_b + [False] * both_wrong
    b = [True] * both_right + [False] * only_a + [True] * only_b + [False] * both_wrong
    return a, b


@pytest.mark.parametrize(
    "only_a, only_b, p",
    [
        (1, 9, 2 * (1 + 10) / 2**10),  # two-sided binomial tail: 2 * P(X <= 1), X ~ Bin(10, 1/2)
        (0, 6, 2 / 2**6),
        (6, 0, 2 / 2**6),
        (5, 5, 1.0),
        (0, 0, 1.0),  # no discordant pair: nothing to test
    ],
)
def test_mcnemar_exact_is_the_binomial_test_on_discordant_pairs(only_a, only_b, p):
    a, b = _pairs(7, only_a, only_b, 3)
    r = stats.mcnemar(a, b)
    assert (r.n, r.only_a, r.only_b) == (10 + only_a + only_b, only_a, only_b)
    assert r.p_value == pytest.approx(p, rel=1e-12)


def test_compare_accuracy_difference_points_and_interval():
    a, b = _pairs(80, 1, 9, 10)  # 100 images: A 81 %, B 89 %
    r = stats.compare_accuracy(a, b)
    assert (r.n, r.mean_a, r.mean_b, r.test) == (100, 0.81, 0.89, "mcnemar-exact")
    assert r.diff == pytest.approx(0.08)
    assert r.p_value == pytest.approx(22 / 1024)
    assert r.ci_low < r.diff < r.ci_high
    # per-image differences: nine +1, one -1, 90 zeros -> standard error sqrt((0.10 - 0.08^2) / 100)
    half = 1.96 * math.sqrt((0.10 - 0.08**2) / 100)
    assert r.ci_low == pytest.approx(0.08 - half, abs=0.01) and r.ci_high == pytest.approx(0.08 + half, abs=0.01)
    assert r.ci_low > 0  # 9 to 1 discordant: the bootstrap interval excludes 0, like McNemar's p < 0.05
    d = r.as_dict(scale=100)
    assert d["diff"] == pytest.approx(8.0) and d["mean_a"] == pytest.approx(81.0)


def test_bootstrap_constant_difference_is_a_point():
    assert stats.bootstrap_ci([0.25] * 30) == (0.25, 0.25)
    assert all(math.isnan(x) for x in stats.bootstrap_ci([1.0]))


def test_bootstrap_matches_the_normal_interval_on_a_large_sample():
    d = np.random.default_rng(1).normal(0.3, 1.0, 4000)
    low, high = stats.bootstrap_ci(d)
    half = 1.96 * d.std(ddof=1) / math.sqrt(len(d))
    assert low == pytest.approx(d.mean() - half, abs=0.004)
    assert high == pytest.approx(d.mean() + half, abs=0.004)
    assert stats.bootstrap_ci(d) == (low, high)  # seeded: reproducible


@pytest.mark.parametrize(
    "diffs, p",
    [
        ([1, 2, 3, 4, 5], 2 / 2**5),  # all signs positive: exact two-sided p = 2 / 2^n
        ([-1, -2, -3, -4, -5], 2 / 2**5),
        ([0.5, 1, 2, 3, 4, 5], 2 / 2**6),
    ],
)
def test_wilcoxon_exact_p_when_all_differences_share_a_sign(diffs, p):
    a = [10.0] * len(diffs)
    b = [10.0 + x for x in diffs]
    r = stats.compare_metric(a, b)
    assert r.test == "wilcoxon" and r.n == len(diffs)
    assert r.p_value == pytest.approx(p)
    assert r.diff == pytest.approx(np.mean(diffs))
    assert r.ci_low <= r.diff <= r.ci_high


def test_compare_metric_drops_missing_pairs_and_handles_no_difference():
    r = stats.compare_metric([1.0, None, 3.0, float("nan"), 2.0], [2.0, 5.0, 4.0, 1.0, 3.0])
    assert r.n == 3 and r.diff == pytest.approx(1.0) and (r.ci_low, r.ci_high) == (1.0, 1.0)
    same = stats.compare_metric([1.0, 2.0], [1.0, 2.0])
    assert same.p_value == 1.0 and same.diff == 0.0


def test_unpaired_shapes_are_refused():
    with pytest.raises(ValueError):
        stats.mcnemar([True, False], [True])
    with pytest.raises(ValueError):
        stats.compare_metric([1.0, 2.0], [1.0, 2.0, 3.0])


# --- dsnet.evidence.evaluate: paired comparisons, test sizes, the artifact ---------------------------------


def _report(model: str, correct: str, crop: int = 128, run: str = "seed0"):
    from dsnet.evidence.evaluate import ModelReport

    return ModelReport(
        model,
        len(correct),
        0,
        100 * correct.count("1") / len(correct),
        100.0,
        1.0,
        0.1,
        None,
        None,
        run,
        "",
        crop,
        146,
        correct,
    )


def test_evaluate_compares_each_model_with_the_baseline_and_each_size_with_the_first():
    from dsnet.evidence.evaluate import compare

    base = "1" * 7 + "1" + "0" * 9 + "000"  # 20 images; vs other: 1 only-base-right, 9 only-other-right
    other = "1" * 7 + "0" + "1" * 9 + "000"
    comps = compare([_report("resnet50", base), _report("dsnet50", other), _report("dsnet50", base, crop=160)])
    (m,) = [c for c in comps if c["kind"] == "model"]
    assert (m["a"]["model"], m["b"]["model"], m["only_a_right"], m["only_b_right"]) == ("resnet50", "dsnet50", 1, 9)
    assert m["diff"] == pytest.approx(40.0) and m["p_value"] == pytest.approx(22 / 1024, rel=1e-3)
    (s,) = [c for c in comps if c["kind"] == "size"]
    assert (s["a"]["crop"], s["b"]["crop"], s["only_a_right"], s["only_b_right"]) == (128, 160, 9, 1)
    assert s["diff"] == pytest.approx(-40.0)


def test_test_sizes_scale_the_resize_with_the_crop():
    from dsnet.evidence.evaluate import scaled
    from dsnet.zoo.manifest import Preprocessing

    pre = Preprocessing(resize=146, crop=128)
    assert [(scaled(pre, c).crop, scaled(pre, c).resize) for c in (128, 160, 192, 224)] == [
        (128, 146),
        (160, 183),
        (192, 219),
        (224, 256),
    ]


def test_timing_never_moves_or_retrains_the_shared_model(monkeypatch):
    import torch

    import dsnet
    from dsnet.evidence.evaluate import latency_ms, train_step_memory

    model = dsnet.get_model("dsnet50", width=0.125, num_classes=10).eval()
    moved = []
    for name in ("cpu", "to", "cuda", "train"):
        original = getattr(torch.nn.Module, name)
        monkeypatch.setattr(
            torch.nn.Module,
            name,
            lambda self, *a, _o=original, _n=name, **k: (moved.append((_n, id(self))), _o(self, *a, **k))[1],
        )
    latency_ms(model, 32, repeats=1)
    train_step_memory(model, 32, batch=2)
    assert id(model) not in {i for _, i in moved} and not model.training
    assert moved  # the private copies were moved / switched


def test_evaluate_writes_a_paired_artifact_with_provenance(tiny_zoo, tmp_path, capsys):
    import json
    import os
    from pathlib import Path

    from conftest import IMAGENETTE
    from dsnet.evidence.evaluate import main

    folder = tmp_path / "val"
    for wnid_dir in sorted((IMAGENETTE / "val").iterdir()):
        (folder / wnid_dir.name).mkdir(parents=True)
        for p in sorted(wnid_dir.glob("*.JPEG"))[:3]:  # three per class, two of them used (--limit: per class)
            os.symlink(p, folder / wnid_dir.name / p.name)
    runs = tmp_path / "runs" / "seed7"
    runs.mkdir(parents=True)
    os.symlink(tiny_zoo.parent / "tiny" / "dsnet50.safetensors", runs / "dsnet50.safetensors")
    os.symlink(tiny_zoo.parent / "tiny" / "resnet50.safetensors", runs / "resnet50.safetensors")
    out = tmp_path / "e.json"
    assert (
        main(
            [
                "--zoo",
                "tiny",
                "--data",
                str(folder),
                "--models",
                "resnet50,dsnet50",
                "--crops",
                "64,96",
                "--runs",
                str(runs.parent),
                "--no-timing",
                "--pipeline",
                "export",
                "--limit",
                "2",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    d = json.loads(out.read_text())
    assert (
        len(d["commit"]) >= 7
        and d["date"].endswith("UTC")
        and d["command"].startswith("python -m dsnet.evidence.evaluate")
    )
    assert d["crops"] == [64, 96] and d["runs"] == ["seed0", "seed7"] and len(d["models"]) == 8
    assert len(d["per_image"]["images"]) == 20  # the images the bits are over: two per class, as evaluated
    assert {Path(i).parent.name for i in d["per_image"]["images"]} == {p.name for p in folder.iterdir()}
    assert {m["protocol"] for m in d["models"]} == {
        f"export's preprocessing: torchvision antialiased resize of the shorter side to {r} px, centre crop {c} px"
        for r, c in ((73, 64), (110, 96))
    }
    assert all(len(v) == 20 for v in d["per_image"]["correct"].values())
    kinds = [(c["kind"], c["run"]) for c in d["comparisons"]]
    assert kinds.count(("model", "seed0")) == 2 and kinds.count(("model", "seed7")) == 2
    assert kinds.count(("size", "seed0")) == 2
    # the same weights as another run: identical per-image answers
    assert d["per_image"]["correct"]["seed0/dsnet50/64"] == d["per_image"]["correct"]["seed7/dsnet50/64"]
    printed = capsys.readouterr().out
    assert "McNemar p" in printed and "top-1 and top-5 (%) with export's preprocessing: torchvision" in printed


# --- dsnet.evidence.figure --stats: the paired summaries ----------------------------------------------------


def test_figure_pairs_every_number_with_the_baseline_on_the_same_images(tmp_path):
    import csv
    import json

    from dsnet.evidence.figure import STAT_FIELDS, paired, read_rows, write_summaries

    rows = []
    for i in range(6):  # dsnet50's top10_mass is higher on all six images: exact Wilcoxon p = 2 / 2^6
        for model, bump, correct in (("resnet50", 0.0, i % 2), ("dsnet50", 0.1 + 0.01 * i, 1)):
            rows.append(
                {
                    "image": f"img{i}",
                    "wnid": "n01440764",
                    "model": model,
                    "explained": "tench",
                    "probability": 0.5,
                    "correct": correct,
                    "top10_mass": 0.2 + bump,
                    "entropy": 0.9,
                    "confidence_change": None if i == 0 else -0.1 * (model == "dsnet50"),
                    "road": 0.1,
                }
            )
    comps = {c["metric"]: c for c in paired(rows)}
    assert set(comps) == {*STAT_FIELDS, "top1 (points)"}
    assert comps["top10_mass"]["p_value"] == pytest.approx(2 / 2**6) and comps["top10_mass"]["n"] == 6
    assert comps["top10_mass"]["diff"] == pytest.approx(0.125)
    assert comps["entropy"]["p_value"] == 1.0 and comps["entropy"]["diff"] == 0
    assert comps["confidence_change"]["n"] == 5 and comps["confidence_change"]["diff"] == pytest.approx(-0.1)
    assert comps["top1 (points)"]["diff"] == pytest.approx(50.0)  # 3 of 6 vs 6 of 6
    assert comps["top1 (points)"]["p_value"] == pytest.approx(0.25)  # 0 vs 3 discordant: 2 / 2^3
    path = tmp_path / "focus.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert paired(read_rows(path)) == paired(rows)  # the CSV round trip keeps every number
    write_summaries(read_rows(path), path, {"command": "test"})
    summary = json.loads(path.with_suffix(".summary.json").read_text())
    assert summary["images"] == 6 and summary["command"] == "test" and len(summary["comparisons"]) == 5
    assert path.with_suffix(".summary.csv").is_file()
