"""The batched training augmentation (dsnet.data.augment) against torchvision and the DataLoader, and the
seed study (dsnet.evidence.seedstudy) end to end on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import pytest
import torch
from scipy.stats import ks_2samp
from torch.utils.data import DataLoader, TensorDataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from conftest import IMAGENETTE, ROOT
from dsnet.data.augment import epoch_draws, resized_crop_boxes, resized_crops
from dsnet.evidence.seedstudy import seeds_that_fit
from dsnet.evidence.train import RECIPES


@pytest.mark.parametrize("epoch_seed", [0, 7, 3 * 100003 + 59])
def test_the_epoch_order_is_the_dataloaders_for_the_same_seed(epoch_seed):
    n, batch = 500, 32
    loader = DataLoader(
        TensorDataset(torch.arange(n)),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(epoch_seed),
    )
    order = torch.cat([b[0] for b in loader])
    assert torch.equal(epoch_draws(n, epoch_seed, 146, 146, (0.25, 1.0)).order[: len(order)], order)


def test_crop_boxes_have_torchvisions_distribution():
    recipe = RECIPES["imagenette"]
    torch.manual_seed(0)
    reference = v2.RandomResizedCrop(recipe.train_crop, scale=(recipe.min_scale, 1.0))
    image = torch.zeros(3, 146, 146, dtype=torch.uint8)
    ref = torch.tensor(
        [[p["top"], p["left"], p["height"], p["width"]] for p in (reference.make_params([image]) for _ in range(20000))]
    )
    new = resized_crop_boxes(20000, 146, 146, (recipe.min_scale, 1.0), torch.Generator().manual_seed(1))
    for k in range(4):  # top, left, height, width: two samples of one distribution
        assert ks_2samp(ref[:, k].numpy(), new[:, k].numpy()).pvalue > 1e-3
    area = (new[:, 2] * new[:, 3]).float() / 146**2
    assert area.min() >= recipe.min_scale - 0.02 and area.max() <= 1.0
    assert (new[:, 0] + new[:, 2] <= 146).all() and (new[:, 1] + new[:, 3] <= 146).all() and (new >= 0).all()


@pytest.mark.parametrize(
    "height, width, scale", [(146, 146, (2.0, 3.0)), (100, 300, (0.9, 1.0)), (300, 100, (0.9, 1.0))]
)
def test_when_no_try_fits_the_box_is_torchvisions_central_fallback(height, width, scale):
    torch.manual_seed(0)
    ref = v2.RandomResizedCrop(8, scale=scale).make_params([torch.zeros(3, height, width)])
    new = resized_crop_boxes(200, height, width, scale, torch.Generator().manual_seed(0))
    fallback = torch.tensor([ref["top"], ref["left"], ref["height"], ref["width"]])
    if scale[0] > 1:  # never fits: every box is the fallback
        assert (new == fallback).all()
    else:  # a long image fits sometimes; the rest are the fallback
        assert ((new == fallback).all(1) | (new[:, 2] * new[:, 3] >= scale[0] * height * width * 0.97)).all()


def test_resized_crops_equal_torchvisions_resized_crop_and_flip():
    images = torch.randint(0, 256, (5, 3, 146, 146), dtype=torch.uint8)
    boxes = torch.tensor([[0, 0, 146, 146], [10, 20, 73, 90], [5, 3, 140, 100], [30, 40, 60, 60], [0, 100, 146, 46]])
    flip = torch.tensor([False, True, False, True, True])
    out = resized_crops(images, boxes, flip, 112)
    assert out.shape == (5, 3, 112, 112) and out.dtype == torch.float32
    for b in range(5):
        top, left, h, w = boxes[b].tolist()
        ref = TF.resized_crop(images[b].float(), top, left, h, w, [112, 112], antialias=True)
        ref8 = TF.resized_crop(images[b], top, left, h, w, [112, 112], antialias=True)
        if flip[b]:
            ref, ref8 = ref.flip(-1), ref8.flip(-1)
        assert (out[b] - ref).abs().max() < 1e-3  # the same filter in float32
        assert (out[b] - ref8.float()).abs().max() <= 1.01  # torchvision's uint8 result is rounded


def test_the_budget_rule_keeps_the_lowest_seeds_that_fit():
    assert seeds_that_fit([0, 1, 2, 3, 4], 3, 0.5, 40, 1000) == [0, 1, 2, 3, 4]  # 5 * 3 * 0.5 * 40 = 300
    assert seeds_that_fit([0, 1, 2, 3, 4], 3, 0.5, 40, 200) == [0, 1, 2]  # 3 seeds: 180 s
    assert seeds_that_fit([0, 1, 2], 3, 10, 40, 5) == [0]  # at least one


@pytest.mark.slow
def test_the_study_trains_exports_and_packs_every_seed_on_the_cpu(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "dsnet.evidence.seedstudy",
        "--data",
        str(IMAGENETTE),
        "--runs",
        str(runs),
        "--pack",
        str(out),
        "--seeds",
        "0",
        "3",
        "--epochs",
        "2",
        "--limit-per-class",
        "4",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    study = json.loads((out / "study.json").read_text())
    assert set(study["runs"]) == {f"seed{s}/{m}" for s in (0, 3) for m in ("resnet50", "dsnet50", "ds2net50")}
    for name, run in study["runs"].items():
        assert run["epochs"] == 2 and run["rounding"]["dtype"] == "float16", name
        assert run["rounding"]["predictions_changed"] <= 2
    for seed in (0, 3):
        with tarfile.open(out / f"seed{seed}-gpu.tar") as tar:
            names = set(tar.getnames())
        assert {f"seed{seed}-gpu/{m}.safetensors" for m in ("resnet50", "dsnet50", "ds2net50")} <= names
        assert f"seed{seed}-gpu/manifest.json" in names and f"seed{seed}-gpu/dsnet50/log.jsonl" in names
        from dsnet.zoo.manifest import load_manifest
        from dsnet.zoo.weights import read_state_dict, verify

        entries = load_manifest(runs / f"seed{seed}-gpu" / "manifest.json").zoo("imagenette").entries
        for m in ("resnet50", "dsnet50", "ds2net50"):
            path = runs / f"seed{seed}-gpu" / f"{m}.safetensors"
            verify(path, entries[m].sha256)
            assert entries[m].provenance["seed"] == seed and entries[m].provenance["epochs"] == 2
            state = read_state_dict(path, "safetensors")
            assert state["fc.weight"].dtype == torch.float16
            assert state["bn1.num_batches_tracked"].dtype == torch.int64
    # one seed's runs differ from another's, and the same seed's models start from different weights
    a = read_state_dict(runs / "seed0-gpu" / "resnet50.safetensors", "safetensors")["fc.weight"]
    b = read_state_dict(runs / "seed3-gpu" / "resnet50.safetensors", "safetensors")["fc.weight"]
    assert not torch.equal(a, b)


def test_sgd_with_a_tensor_lr_steps_as_with_a_float_lr():
    """The study fills a tensor lr for every step (capturable); the step is the float lr's."""
    torch.manual_seed(0)
    a = torch.nn.Linear(4, 3)
    b = torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    lr = torch.tensor(0.0)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4)
    opt_b = torch.optim.SGD(b.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for step in range(3):
        x = torch.randn(8, 4)
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).square().mean().backward()
        lr.fill_(0.2 * (step + 1) / 3)
        for g in opt_a.param_groups:
            g["lr"] = 0.2 * (step + 1) / 3
        opt_a.step()
        opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-7)


def test_the_seed_report_pairs_models_within_seeds_and_counts_the_order_across_seeds():
    from dsnet.evidence.seedreport import sentence, sign_test, summarise, t_interval

    assert sign_test(5, 5) == pytest.approx(2 / 32) and sign_test(4, 5) == pytest.approx(12 / 32)
    assert sign_test(0, 5) == sign_test(5, 5) and sign_test(2, 4) == 1.0
    low, high = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.303
    assert (low, high) == pytest.approx((2 - 4.303 / 3**0.5, 2 + 4.303 / 3**0.5), abs=1e-3)
    n = 200  # resnet right on the first 160 images; dsnet on 170 (seed 0) and 165 (seed 1); the shipped run ignored
    bits = {
        "seed0/resnet50/160": "1" * 160 + "0" * 40,
        "seed0-gpu/resnet50/160": "1" * 160 + "0" * 40,
        "seed0-gpu/dsnet50/160": "1" * 170 + "0" * 30,
        "seed1-gpu/resnet50/160": "1" * 160 + "0" * 40,
        "seed1-gpu/dsnet50/160": "0" * 5 + "1" * 170 + "0" * 25,
    }
    summary = summarise({"runs": [], "per_image": {"correct": bits}}, r"seed(\d+)-gpu")
    assert summary["seeds"] == [0, 1] and summary["images"] == n
    assert summary["models"]["resnet50"] == {"top1": [80.0, 80.0], "mean": 80.0, "sd": 0.0}
    assert summary["models"]["dsnet50"]["top1"] == [85.0, 85.0]
    (pair,) = summary["pairs"]
    assert (pair["a"], pair["b"], pair["diff_mean"], pair["seeds_b_better"], pair["ordering_holds"]) == (
        "resnet50",
        "dsnet50",
        5.0,
        2,
        True,
    )
    seed0, seed1 = pair["per_seed"]
    assert (seed0["only_a_right"], seed0["only_b_right"]) == (0, 10)  # images 160-169
    assert (seed1["only_a_right"], seed1["only_b_right"]) == (5, 15)  # images 0-4 / 160-174
    assert sentence(summary).startswith("dsnet50 beats resnet50 on all 2 seeds (mean 5.00 points")


def test_the_seed_report_of_no_matching_run_is_an_error_naming_the_runs(tmp_path, capsys):
    import json

    from dsnet.evidence.seedreport import NoRuns, main, summarise

    report = {"runs": ["seed0"], "per_image": {"correct": {"seed0/resnet50/160": "10"}}}
    with pytest.raises(NoRuns, match=r"^no run matches .*-gpu' in the report \(runs: \['seed0'\]\)$"):
        summarise(report, r"seed(\d+)-gpu")
    path = tmp_path / "evaluate.json"
    path.write_text(json.dumps(report))
    assert main([str(path)]) == 2
    assert capsys.readouterr().err.startswith("error: no run matches")
