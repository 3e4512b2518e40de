"""The model-parameter randomisation check (dsnet.evidence.sanity) on tiny models: the cascade randomises
exactly its stages, never the shared model, reproducibly; the similarities; the verdict rule; verdicts()."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import dsnet
from dsnet.cam.images import open_image
from dsnet.data.labelled import LabelledImage
from dsnet.evidence import sanity
from dsnet.zoo import loader as zoo

TRIO = ("resnet50", "dsnet50", "ds2net50")


def trained_like(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny model whose every state-dict entry differs from any initial value (as a trained one's do)."""
    torch.manual_seed(seed)
    model = dsnet.get_model(name, width=0.125, num_classes=10)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                value.fill_(7)
            elif key.endswith("running_var"):
                value.copy_(torch.rand_like(value) + 0.5)
            else:
                value.add_(torch.randn_like(value) * 0.1 + 0.05)
    return model.eval()


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", TRIO)
def test_cascade_randomises_exactly_the_listed_stages(name):
    model = trained_like(name)
    before = snapshot(model)
    keys = sanity.stage_keys(model)
    assert sorted(k for ks in keys.values() for k in ks) == sorted(before)  # every entry in exactly one step
    if name != "resnet50":  # the shortcut weights W are part of their stage
        assert any(k.endswith("dense_weight") for k in keys["layer3"])
    if name == "ds2net50":
        assert any(k.endswith("inner_weight") for k in keys["layer1"])
    assert keys["stem"] == [k for k in before if k.startswith(("conv1.", "bn1."))]
    randomised: set[str] = set()
    for (step, private), (expected_step, _) in zip(sanity.cascade(model), sanity.STEPS):
        assert step == expected_step and private is not model
        randomised |= set(keys[step])
        after = private.state_dict()
        for key, value in before.items():
            same = torch.equal(after[key], value)
            assert same != (key in randomised), f"step {step}: {key} {'unchanged' if not same else 'changed'}"
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the original: untouched
    assert randomised == set(before)  # after the stem: nothing trained is left


def test_randomisation_follows_the_constructors_initialisation():
    model = trained_like("dsnet50")
    *_, (_, private) = sanity.cascade(model)
    fresh = dsnet.get_model("dsnet50", width=0.125, num_classes=10)
    for (key, value), ref in zip(private.state_dict().items(), fresh.state_dict().values()):
        if (
            key.endswith(
                ("dense_weight", "running_mean", "running_var", "num_batches_tracked", "bn1.weight", "bn1.bias")
            )
            or ".bn" in key
        ):
            assert torch.equal(value, ref), key  # deterministic initial values
        elif value.dim() == 4 and value.shape[-1] > 1:  # a 3x3/7x7 conv: kaiming_normal, fan_out
            fan_out = value.shape[0] * value[0, 0].numel()
            assert abs(float(value.std()) - (2 / fan_out) ** 0.5) < 0.35 * (2 / fan_out) ** 0.5, key


def test_an_uncovered_parameter_is_an_error():
    model = trained_like("resnet50")
    model.layer4[0].extra = torch.nn.Parameter(torch.zeros(3))  # a module without reset_parameters
    with pytest.raises(RuntimeError, match="layer4.0.extra"):
        sanity.randomise(model, ["layer4"])


def test_the_cascade_is_reproducible():
    model = trained_like("ds2net50")
    first = [snapshot(p) for _, p in sanity.cascade(model, seed=3)]
    again = [snapshot(p) for _, p in sanity.cascade(model, seed=3)]
    other = [snapshot(p) for _, p in sanity.cascade(model, seed=4)]
    for a, b, _ in zip(first, again, other):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(first[0]["fc.weight"], other[0]["fc.weight"])
    assert not torch.equal(first[-1]["layer2.0.conv2.weight"], other[-1]["layer2.0.conv2.weight"])
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    list(sanity.cascade(model))
    assert torch.equal(torch.rand(3), expected)  # the global RNG is left alone


def test_similarities():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64]
    cam = np.exp(-((yy - 20) ** 2 + (xx - 40) ** 2) / 200).astype(np.float32) + 0.05 * rng.random((64, 64), np.float32)
    cam = (cam - cam.min()) / (cam.max() - cam.min())
    assert sanity.spearman(cam, cam) == pytest.approx(1.0)
    assert sanity.ssim(cam, cam) == pytest.approx(1.0)
    shuffled = rng.permutation(cam.ravel()).reshape(cam.shape)
    assert abs(sanity.spearman(cam, shuffled)) < 0.1
    assert sanity.ssim(cam, shuffled) < 0.2
    assert sanity.spearman(cam, 1 - cam) == pytest.approx(-1.0)
    flat = np.zeros_like(cam)
    assert sanity.spearman(cam, flat) == 0.0 and sanity.spearman(flat, flat) == 1.0


@pytest.mark.parametrize(
    "value, expected",
    [
        (0.93, "fails"),
        (0.5, "fails"),
        (0.4999, "weak"),
        (0.2, "weak"),
        (0.1999, "passes"),
        (0.0, "passes"),
        (-0.7, "passes"),
        (float("nan"), "no data"),
    ],
)
def test_the_verdict_rule(value, expected):
    assert sanity.verdict(value) == expected


def test_verdicts_reads_only_the_json(tmp_path):
    def r(v):
        return {"verdict": v, "final_spearman": 0.0, "final_ssim": 0.0, "steps": {}}

    path = tmp_path / "sanity.json"
    path.write_text(
        json.dumps(
            {
                "rule": sanity.RULE,
                "results": {
                    "resnet50": {"gradcam": r("passes"), "eigencam": r("weak"), "layercam": r("passes")},
                    "dsnet50": {"gradcam": r("passes"), "eigencam": r("fails"), "layercam": r("weak")},
                    "ds2net50": {"gradcam": r("passes"), "eigencam": r("passes"), "layercam": r("passes")},
                },
            }
        )
    )
    assert sanity.verdicts(path) == {"gradcam": "passes", "eigencam": "fails", "layercam": "weak"}
    assert sanity.verdicts(path, "resnet50") == {"gradcam": "passes", "eigencam": "weak", "layercam": "passes"}
    assert sanity.verdicts(path, "nosuchmodel") == {}
    assert sanity.verdicts(tmp_path / "missing.json") == {}


def _images(n: int) -> list[tuple[LabelledImage, object]]:
    rng = np.random.default_rng(1)
    wnids = ["n01440764", "n03888257"]
    out = []
    for i in range(n):
        pixels = (rng.random((90, 120, 3)) * 255).astype(np.uint8)
        out.append((LabelledImage(None, wnids[i % 2]), open_image(Image.fromarray(pixels))))
    return out


def test_sanity_never_touches_the_shared_model(tiny_zoo):
    models = [zoo.load("tiny", name) for name in ("resnet50", "dsnet50")]
    before = [snapshot(zm.model) for zm in models]
    threads = torch.get_num_threads()
    with sanity.limited_threads(1):  # EigenCAM's SVDs: OpenBLAS threads crawl on a busy machine
        assert torch.get_num_threads() == 1
        report = sanity.sanity(_images(3), models, ["gradcam", "eigencam"], progress=False)
    assert torch.get_num_threads() == threads
    for zm, state in zip(models, before):
        assert zoo.load("tiny", zm.name) is zm  # still the one cached instance
        assert all(torch.equal(v, state[k]) for k, v in zm.model.state_dict().items())
    steps = [s for s, _ in sanity.STEPS]
    for name in ("resnet50", "dsnet50"):
        assert list(report["accuracy"][name]) == ["trained"] + steps
        for method in ("gradcam", "eigencam"):
            r = report["results"][name][method]
            assert list(r["steps"]) == steps
            assert r["verdict"] == sanity.verdict(r["final_spearman"])
            assert r["final_spearman"] == r["steps"]["stem"]["spearman"]["mean"]
            for s in r["steps"].values():
                for key in ("spearman", "ssim"):
                    low, high = s[key]["ci95"]
                    assert s[key]["n"] == 3 and low <= s[key]["mean"] <= high and -1 <= low and high <= 1
    assert report["verdicts"]["gradcam"].keys() == {"resnet50", "dsnet50"}


def test_command_line_writes_the_artifact_and_plot(tiny_zoo, tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(2)
    for wnid in ("n01440764", "n02102040", "n99999999"):  # the last class is in no tiny model's label set
        (data / wnid).mkdir(parents=True)
        for i in range(3):
            Image.fromarray((rng.random((80, 100, 3)) * 255).astype(np.uint8)).save(data / wnid / f"{i}.JPEG")
    out, png = tmp_path / "sanity.json", tmp_path / "sanity.png"
    assert (
        sanity.main(
            [
                "--data",
                str(data),
                "--zoo",
                "tiny",
                "--models",
                "resnet50,ds2net50",
                "--per-class",
                "2",
                "--methods",
                "gradcam,hirescam",
                "--json",
                str(out),
                "--plot",
                str(png),
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["command"].startswith("python -m dsnet.evidence.sanity --data")
    assert report["n_images"] == 4 and report["skipped_images"] == 2
    assert report["images"][0] == "n01440764/0.JPEG"
    assert report["rule"]["fails_at"] == sanity.FAILS_AT and report["seconds"] > 0
    assert [s["name"] for s in report["steps"]] == [s for s, _ in sanity.STEPS]
    assert set(sanity.verdicts(out)) == {"gradcam", "hirescam"}
    assert png.stat().st_size > 10_000 and Image.open(png).size[0] > Image.open(png).size[1]
