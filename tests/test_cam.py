import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from conftest import IMAGENETTE, TRIO, sample
from dsnet.cam.images import open_image, to_tensor
from dsnet.cam.service import METHODS, CamTimeout, TargetPolicy, explain, explain_model, normalised_entropy, top10_mass
from dsnet.zoo import loader as zoo


@pytest.fixture
def trio(tiny_zoo):
    return [zoo.load("tiny", n, "cpu") for n in TRIO]


def test_cam_shape_range_and_top5(trio):
    crop = trio[0].entry.preprocessing.crop  # the zoo's test size (the manifest's)
    started = time.perf_counter()
    results = explain(sample("golf_ball"), trio)
    elapsed = time.perf_counter() - started
    assert 0 < sum(r.seconds for r in results) <= elapsed  # each model's own time, within the call's
    for r in results:
        assert r.cam.shape == r.view.shape[:2] == (crop, crop) and r.cam.dtype == np.float32
        assert 0.0 <= r.cam.min() and r.cam.max() <= 1.0 and r.cam.max() > 0.5
        assert r.overlay.shape == (crop, crop, 3) and r.overlay.dtype == np.uint8
        probs = [p.probability for p in r.top5]
        assert len(r.top5) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1.0 + 1e-6
        assert r.explained == r.top5[0]  # default policy: the model's own top-1


def test_top5_comes_from_the_same_forward_as_a_plain_model_call(trio):
    image = open_image(sample("church"))
    for zm in trio:
        r = explain_model(image, zm)
        with torch.no_grad():
            probs = zm.model(to_tensor(r.view, zm.entry.preprocessing)).softmax(1)[0]
        assert [p.index for p in r.top5] == probs.topk(5).indices.tolist()
        np.testing.assert_allclose([p.probability for p in r.top5], probs.topk(5).values.numpy(), rtol=1e-5)


def test_target_policies(trio):
    shared = explain(sample("golf_ball"), trio, target="golf ball")
    assert {r.explained.index for r in shared} == {8}
    by_index = explain(sample("golf_ball"), trio, target="3")
    assert {r.explained.name for r in by_index} == {"chain saw"}
    label = explain(sample("golf_ball"), trio, target=TargetPolicy.parse("label", "n03888257"))
    assert {r.explained.name for r in label} == {"parachute"}
    with pytest.raises(ValueError, match="unknown class 'golf bal x'.*did you mean: golf ball"):
        explain(sample("golf_ball"), trio, target="golf bal x")
    with pytest.raises(ValueError, match="out of range 0..9"):
        explain(sample("golf_ball"), trio, target="10")
    with pytest.raises(ValueError, match="not among the 10 classes"):
        explain(sample("golf_ball"), trio, target=TargetPolicy("label", "n01443537"))
    with pytest.raises(ValueError, match="no known label"):
        TargetPolicy.parse("label", None)
    with pytest.raises(ValueError, match="unknown CAM method"):
        explain(sample("golf_ball"), trio, method="gradcam3")


HEAD_METHODS = [name for name, m in METHODS.items() if not m.whole_network]
WHOLE_NETWORK_METHODS = [name for name, m in METHODS.items() if m.whole_network]


def test_the_method_table_covers_both_paths():
    assert HEAD_METHODS and WHOLE_NETWORK_METHODS


@pytest.mark.parametrize("method", HEAD_METHODS)
def test_fast_path_equals_stock_pytorch_grad_cam(trio, method):
    for zm in trio[1:]:
        r = explain(sample("golf_ball"), [zm], method=method, target="tench")[0]
        x = to_tensor(r.view, zm.entry.preprocessing)
        with METHODS[method].cam_class(model=zm.model, target_layers=[zm.model.layer4]) as cam:
            stock = cam(input_tensor=x, targets=[ClassifierOutputTarget(r.explained.index)])[0]
        assert np.abs(stock - r.cam).max() < 1e-4, method


@pytest.mark.parametrize("method", WHOLE_NETWORK_METHODS)
def test_whole_network_methods_equal_stock_and_stop_at_their_time_limit(trio, method):
    image = open_image(sample("golf_ball"))
    r = explain_model(image, trio[0], method)
    x = to_tensor(r.view, trio[0].entry.preprocessing)
    with METHODS[method].cam_class(model=trio[0].model, target_layers=[trio[0].model.layer4]) as cam:
        stock = cam(input_tensor=x, targets=[ClassifierOutputTarget(r.explained.index)])[0]
    assert np.abs(stock - r.cam).max() < 1e-4
    with pytest.raises(CamTimeout, match="time limit"):
        explain_model(image, trio[0], method, time_limit=1e-6)
    assert not any(m._forward_hooks for m in trio[0].model.modules())


def test_threads_get_exactly_the_sequential_results(trio):
    images = sorted((IMAGENETTE / "val").glob("*/*.JPEG"))[::400][:8]
    targets = ["top1", "golf ball", "tench", "3", "church", "top1", "parachute", "9"]
    methods = [HEAD_METHODS[i % len(HEAD_METHODS)] for i in range(len(targets))]
    jobs = [(open_image(p), t, m) for p, t, m in zip(images, targets, methods)]
    sequential = [explain(img, trio, method=m, target=t) for img, t, m in jobs]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda job: explain(job[0], trio, method=job[2], target=job[1]), jobs))
    for seq, par in zip(sequential, threaded):
        for a, b in zip(seq, par):
            assert a.explained == b.explained and a.top5 == b.top5
            np.testing.assert_array_equal(a.cam, b.cam)


def test_no_hooks_grads_or_mode_changes_after_many_calls(trio):
    flags = {zm.name: [p.requires_grad for p in zm.model.parameters()] for zm in trio}
    image = open_image(sample("tench"))
    for i in range(50):
        explain(image, trio[i % 3 : i % 3 + 1], method=HEAD_METHODS[i % len(HEAD_METHODS)])
    for zm in trio:
        assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks for m in zm.model.modules())
        assert all(p.grad is None for p in zm.model.parameters())
        assert not zm.model.training and [p.requires_grad for p in zm.model.parameters()] == flags[zm.name]


def test_focus_numbers_mean_what_readme_says(trio):
    flat = np.ones((10, 10), np.float32)
    spot = np.zeros((10, 10), np.float32)
    spot[3, 4] = 1
    assert top10_mass(flat) == pytest.approx(0.1) and top10_mass(spot) == pytest.approx(1.0)
    assert normalised_entropy(flat) == pytest.approx(1.0) and normalised_entropy(spot) == pytest.approx(0.0)
    r = explain(sample("golf_ball"), trio[:1], with_metrics=True)[0]
    f, cam = r.faithfulness, r.cam.astype(np.float64)
    brightest = np.sort(cam.ravel())[::-1][: cam.size // 10]  # by hand, from the returned map
    assert f.top10_mass == pytest.approx(brightest.sum() / cam.sum(), rel=1e-5)
    p = cam.ravel()[cam.ravel() > 0] / cam.sum()
    assert f.entropy == pytest.approx(-(p * np.log(p)).sum() / np.log(cam.size), rel=1e-6)
    # confidence change: the explained class's probability on image x map, relative to the image
    x = to_tensor(r.view, trio[0].entry.preprocessing)
    with torch.no_grad():
        plain, masked = (
            trio[0].model(t).softmax(1)[0, r.explained.index].item()
            for t in (x, x * torch.from_numpy(r.cam)[None, None])
        )
    assert f.confidence_change == pytest.approx(masked - plain, abs=1e-5)
    assert -1 <= f.road <= 1 and f.road != 0


def test_explain_cli_writes_png_and_json(tiny_zoo, tmp_path, capsys):
    from dsnet.evidence.explain import main

    out, js = tmp_path / "fig.png", tmp_path / "out.json"
    assert (
        main(
            [
                str(sample("parachute")),
                "--zoo",
                "tiny",
                "--target",
                "label",
                "--out",
                str(out),
                "--json",
                str(js),
                "--metrics",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    metrics = re.findall(
        r"(?m)^ +focus: top-10% mass (\d\.\d{3}), entropy (\d\.\d{3}) · faithfulness: "
        r"confidence change ([+-]\d\.\d{3}), ROAD ([+-]\d\.\d{3})$",
        printed,
    )
    assert len(metrics) == 3 and "Faithfulness(" not in printed  # numbers a person reads, not a dataclass repr
    data = json.loads(js.read_text())
    assert [r["model"] for r in data["results"]] == list(TRIO)
    assert {r["explained"]["name"] for r in data["results"]} == {"parachute"}
    assert all(r["faithfulness"]["top10_mass"] > 0 for r in data["results"])
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 3 * 224
    assert main([str(sample("parachute")), "--zoo", "tiny", "--target", "no such class"]) == 2


def test_the_commands_write_nothing_unless_told_where(tiny_zoo, tmp_path, monkeypatch, capsys):
    """explain and evaluate print; files come only from --out / --json (README's commands)."""
    from dsnet.evidence.evaluate import main as evaluate_main
    from dsnet.evidence.explain import main as explain_main

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert explain_main([str(sample("parachute")), "--zoo", "tiny", "--models", "resnet50"]) == 0
    assert (
        evaluate_main(
            [
                "--zoo",
                "tiny",
                "--data",
                str(IMAGENETTE / "val"),
                "--models",
                "resnet50",
                "--limit-per-class",
                "1",
                "--no-timing",
            ]
        )
        == 0
    )
    assert "resnet50" in capsys.readouterr().out and list(cwd.iterdir()) == []


@pytest.mark.slow
def test_figure_cli_grid_and_stats(tiny_zoo, tmp_path):
    from dsnet.evidence.figure import main

    out, stats = tmp_path / "fig5.png", tmp_path / "stats.csv"
    folder = IMAGENETTE / "val" / "n03445777"
    assert (
        main(
            [
                "--images",
                str(folder),
                "--zoo",
                "tiny",
                "--out",
                str(out),
                "--stats",
                str(stats),
                "--limit",
                "3",
                "--columns",
                "2",
                "--tile",
                "96",
            ]
        )
        == 0
    )
    with Image.open(out) as im:
        assert im.size[1] >= 4 * 96  # input row + three model rows
    lines = stats.read_text().splitlines()
    assert len(lines) == 1 + 3 * 3
    summary = stats.with_suffix(".summary.csv").read_text().splitlines()
    assert summary[0].startswith("model,images,top1_accuracy") and len(summary) == 4
    shares = [float(row.split(",")[-1]) for row in summary[1:]]
    assert sum(shares) == pytest.approx(1.0)


@pytest.mark.slow
def test_figure_cli_crop_sets_the_test_size(tiny_zoo, tmp_path):
    from dsnet.evidence.figure import main

    out, stats = tmp_path / "fig5.png", tmp_path / "stats.csv"
    image = str(IMAGENETTE / "val" / "n03445777")
    base = [
        "--images",
        image,
        "--zoo",
        "tiny",
        "--out",
        str(out),
        "--stats",
        str(stats),
        "--limit",
        "1",
        "--tile",
        "64",
    ]
    assert (
        main(base + ["--crop", "96"]) == 0
    )  # resize scaled as dsnet.evidence.evaluate --crops: 96 * 183 / 160 = 109.8 -> 110
    pre = json.loads(stats.with_suffix(".summary.json").read_text())["preprocessing"]
    assert pre == {m: {"resize": 110, "crop": 96} for m in TRIO}
    assert main(base + ["--crop", "96", "--resize", "104"]) == 0
    pre = json.loads(stats.with_suffix(".summary.json").read_text())["preprocessing"]
    assert pre == {m: {"resize": 104, "crop": 96} for m in TRIO}
    with pytest.raises(SystemExit):
        main(base + ["--resize", "104"])


def test_no_model_is_charged_the_grad_cam_import(tmp_path):
    """pytorch-grad-cam's import (seconds) happens before a model's timer starts, so the first model of
    the first request is timed like the others (the app also imports it in the background at start)."""
    import subprocess
    import sys

    probe = (
        "import sys, time\n"
        "import dsnet.cam.service as service\n"
        "from dsnet.cam.images import open_image\n"
        "from dsnet.zoo.loader import load\n"
        "zm = load('imagenette', 'resnet50')\n"
        "assert 'pytorch_grad_cam' not in sys.modules\n"
        "real, seen = time.perf_counter, []\n"
        "time.perf_counter = lambda: (seen.append('pytorch_grad_cam' in sys.modules), real())[1]\n"
        "service.explain_model(open_image(sys.argv[1]), zm)\n"
        "print(seen[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(sample("golf_ball"))], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True"  # imported before the first timer reading
