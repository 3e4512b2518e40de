import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import IMAGENETTE, ROOT, TRIO
from dsnet.cam.images import model_view, open_image, to_tensor
from dsnet.evidence.evaluate import evaluate_zoo
from dsnet.evidence.train import main as train_main
from dsnet.evidence.train import save_atomic
from dsnet.zoo import loader as zoo
from dsnet.zoo.manifest import MANIFEST_PATH, load_manifest

TINY = [
    "--data",
    str(IMAGENETTE),
    "--width",
    "0.125",
    "--batch-size",
    "8",
    "--train-crop",
    "48",
    "--eval-resize",
    "56",
    "--eval-crop",
    "48",
    "--threads",
    "1",
    "--limit-per-class",
    "4",
]


@pytest.fixture
def manifest_copy(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    shutil.copy(MANIFEST_PATH, path)
    monkeypatch.setenv("DSNET_MANIFEST", str(path))
    monkeypatch.setenv("DSNET_CACHE", str(tmp_path / "cache"))
    yield path
    zoo.default_zoo(path).forget()


def test_tiny_training_exports_a_loadable_checkpoint_and_manifest_entry(tmp_path, manifest_copy):
    out = tmp_path / "run"
    assert (
        train_main(
            [
                "--model",
                "ds2net50",
                *TINY,
                "--epochs",
                "2",
                "--out",
                str(out),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--export",
                "mini",
                "--export-dir",
                str(tmp_path / "mini"),
                "--manifest",
                str(manifest_copy),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and (out / "curves.png").stat().st_size > 1000
    entry = load_manifest(manifest_copy).entry("mini", "ds2net50")
    assert entry.labels == "imagenette10" and entry.metrics[0].images == 40
    assert entry.metrics[0].top1 == round(rows[-1]["val_top1"], 2) and entry.provenance["epochs"] == 2
    assert entry.metrics[0].protocol == (
        "export's preprocessing: torchvision antialiased resize of the shorter side to 56 px, centre crop 48 px"
    )
    [measured] = evaluate_zoo("mini", IMAGENETTE / "val", ["ds2net50"], timing=False, pipeline="export", per_class=4)
    assert measured.images == 40 and measured.top1 == pytest.approx(rows[-1]["val_top1"], abs=0.01)
    assert measured.protocol == entry.metrics[0].protocol  # evaluate's export pipeline is the one export used


def test_resume_gives_the_same_state_as_an_uninterrupted_run(tmp_path):
    common = ["--model", "dsnet50", *TINY, "--epochs", "3", "--cache-dir", str(tmp_path / "cache")]
    assert train_main([*common, "--out", str(tmp_path / "straight")]) == 0
    assert train_main([*common, "--out", str(tmp_path / "sliced"), "--stop-after", "1"]) == 0
    assert torch.load(tmp_path / "sliced" / "last.pt", weights_only=True)["epoch"] == 1
    assert train_main([*common, "--out", str(tmp_path / "sliced"), "--resume"]) == 0
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "sliced" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["history"][-1]["val_top1"] == b["history"][-1]["val_top1"]


@pytest.mark.slow
def test_compiled_training_trains_the_same_model(tmp_path, capsys):
    """--compile trains the step torch.compile traces (here with aot_eager: AOT autograd's forward and
    backward graphs, without Inductor's minutes of code generation) to eager's weights."""
    common = ["--model", "ds2net50", *TINY, "--epochs", "1", "--cache-dir", str(tmp_path / "cache")]
    assert train_main([*common, "--out", str(tmp_path / "eager")]) == 0
    assert train_main([*common, "--out", str(tmp_path / "compiled"), "--compile", "aot_eager"]) == 0
    eager, compiled = (torch.load(tmp_path / run / "last.pt", weights_only=True) for run in ("eager", "compiled"))
    assert compiled["config"]["compile"] == "aot_eager" and eager["config"]["compile"] is None
    for name, tensor in eager["model"].items():
        torch.testing.assert_close(compiled["model"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert compiled["history"][0]["train_loss"] == pytest.approx(eager["history"][0]["train_loss"], rel=1e-5)
    capsys.readouterr()
    assert train_main([*common, "--out", str(tmp_path / "typo"), "--compile", "inductr"]) == 2
    assert re.fullmatch(
        r"error: unknown --compile backend 'inductr'; torch.compile has .*inductor.*\n", capsys.readouterr().err
    )
    assert not (tmp_path / "typo").exists()  # refused before any work


def test_export_of_a_finished_run_measures_this_data_and_keeps_the_training_provenance(tmp_path, manifest_copy):
    """How the shipped zoo was made: trained on a GPU machine (on a packed copy), exported here."""
    out, cache = tmp_path / "run", str(tmp_path / "cache")
    run = ["--model", "resnet50", *TINY, "--epochs", "1", "--workers", "2", "--out", str(out), "--cache-dir", cache]
    assert train_main(run) == 0  # trained on 4 images per class
    more_val = [
        "--limit-per-class",
        "6",
        "--resume",
        "--export",
        "mini",
        "--export-dir",
        str(tmp_path / "mini"),
        "--manifest",
        str(manifest_copy),
    ]  # the later flag wins
    assert train_main(run + more_val) == 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 1  # nothing trained again
    entry = load_manifest(manifest_copy).entry("mini", "resnet50")
    assert entry.metrics[0].images == 60  # measured at export, on the export's --data
    assert "--limit-per-class 4" in entry.provenance["command"] and entry.provenance["train_images"] == 40
    [measured] = evaluate_zoo("mini", IMAGENETTE / "val", ["resnet50"], timing=False, pipeline="export", per_class=6)
    assert measured.images == 60 and measured.top1 == pytest.approx(entry.metrics[0].top1, abs=0.01)


WRITER = """
import sys
from pathlib import Path
import torch
from dsnet.evidence.train import save_atomic
print("writing", flush=True)
i = int(sys.argv[2])
while True:
    i += 1
    save_atomic({"version": i, "blob": torch.full((8_000_000,), float(i))}, Path(sys.argv[1]))
"""


@pytest.mark.slow
def test_a_kill_during_a_checkpoint_write_leaves_the_previous_one_intact(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"version": 0, "blob": torch.zeros(8_000_000)}, path)
    version = 0
    for delay in (0.05, 0.2, 0.45):  # after the child has started writing: mid-write at some point
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(version)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = torch.load(path, weights_only=True)
        assert torch.all(state["blob"] == float(state["version"]))
        assert state["version"] >= version  # never older than what was there
        version = state["version"]
    assert version >= 2, "the child never completed a write: the kill tested nothing"
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):
        save_atomic({"bad": lambda: None}, path)  # a failing write ...
    assert torch.load(path, weights_only=True)["version"] == state["version"]  # ... changes nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # and leaves no temp files


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    """DDP over two processes, with channels_last (the default) and the dense shortcut weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "dsnet.evidence.train",
            "--model",
            "ds2net50",
            *TINY,
            "--epochs",
            "1",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Grad strides do not match" not in result.stderr  # DDP copied gradients into its buckets
    row = json.loads((out / "log.jsonl").read_text())
    assert row["epoch"] == 1 and (out / "last.pt").is_file()
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["config"]["world_size"] == 2 and state["config"]["val_images"] == 40


def test_evaluate_matches_a_hand_computation(tiny_zoo, tmp_path):
    folder = tmp_path / "val"
    items = []
    for wnid_dir in sorted((IMAGENETTE / "val").iterdir()):
        for p in sorted(wnid_dir.glob("*.JPEG"))[:2]:
            (folder / wnid_dir.name).mkdir(parents=True, exist_ok=True)
            os.symlink(p, folder / wnid_dir.name / p.name)
            items.append((p, wnid_dir.name))
    reports = evaluate_zoo("tiny", folder, ["dsnet50", "resnet50"], timing=False)
    zm = zoo.load("tiny", "dsnet50")
    correct = 0
    for path, wnid in items:
        x = to_tensor(model_view(open_image(path).image, zm.entry.preprocessing), zm.entry.preprocessing)
        with torch.no_grad():
            correct += int(zm.model(x).argmax()) == zm.labels.wnids.index(wnid)
    assert reports[0].model == "dsnet50" and reports[0].images == 20
    assert reports[0].top1 == pytest.approx(100 * correct / 20, abs=0.01)


def test_evaluate_accepts_flat_wnid_named_files_and_counts_foreign_classes(tiny_zoo):
    from conftest import SAMPLES

    reports = evaluate_zoo("tiny", SAMPLES, ["resnet50"], timing=False)
    assert reports[0].images == 10 and reports[0].skipped == 990


def test_shipped_imagenette_zoo_loads_verifies_and_classifies(monkeypatch):
    monkeypatch.delenv("DSNET_MANIFEST", raising=False)
    zoo.default_zoo().forget()  # loaded and verified afresh
    val = sorted((IMAGENETTE / "val").iterdir())
    images = [p for d in val for p in sorted(d.glob("*.JPEG"))[5:300:30]]  # 10 per class, spread out
    for name in TRIO:
        zm = zoo.load("imagenette", name, "cpu")
        assert zm.entry.metrics[0].top1 >= 80, "the shipped models' measured Imagenette val top-1 (README)"
        correct = 0
        for path in images:
            x = to_tensor(model_view(open_image(path).image, zm.entry.preprocessing), zm.entry.preprocessing)
            with torch.no_grad():
                correct += zm.labels.wnids[int(zm.model(x).argmax())] == path.parent.name
        assert correct >= 75, f"{name}: {correct}/100 real val images right (chance: 10; measured top-1 > 83 %)"


def test_the_width_is_part_of_the_recipe_and_the_command_line_overrides_it(tmp_path):
    from dsnet.evidence.train import build_parser, config_from_args

    def config(*extra):
        return config_from_args(build_parser().parse_args(["--data", str(tmp_path), "--out", str(tmp_path), *extra]))

    assert config().recipe.width == 0.25 and config().recipe_name == "imagenette"  # the shipped zoo's width
    assert config("--recipe", "imagenet").recipe.width == 1.0
    assert config("--recipe", "imagenet", "--width", "0.5").recipe.width == 0.5
    cfg = config("--epochs", "3", "--no-cache", "--model-kwargs", '{"norm": "batch"}', "--export", "z")
    assert (cfg.recipe.epochs, cfg.recipe.cache, cfg.model_kwargs, cfg.export_zoo) == (3, False, {"norm": "batch"}, "z")


def test_curves_plots_the_logs_of_several_runs(tmp_path):
    from PIL import Image

    from dsnet.evidence.curves import main as curves_main

    for run, offset in (("resnet50", 0), ("dsnet50", 5)):
        (tmp_path / run).mkdir()
        rows = [{"epoch": e, "train_top1": 10 * e + offset, "val_top1": 9 * e + offset} for e in (1, 2, 3)]
        (tmp_path / run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "figure.png"
    assert (
        curves_main(
            [str(tmp_path / "resnet50" / "log.jsonl"), str(tmp_path / "dsnet50" / "log.jsonl"), "--out", str(out)]
        )
        == 0
    )
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (720, 480)
        assert len(set(im.convert("RGB").getdata())) > 20  # lines and a legend, not a blank canvas


def test_export_follows_dsnet_manifest_and_puts_the_weights_beside_it(tmp_path, manifest_copy):
    """With $DSNET_MANIFEST set (manifest_copy sets it) and no --manifest / --export-dir, the entry goes
    into that manifest and the weights into its folder, never into the shipped checkpoints/."""
    shipped = MANIFEST_PATH.read_bytes()
    assert (
        train_main(
            [
                "--model",
                "resnet50",
                *TINY,
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "run"),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--export",
                "mine",
            ]
        )
        == 0
    )
    entry = load_manifest(manifest_copy).entry("mine", "resnet50")
    assert (manifest_copy.parent / entry.sources.local).is_file()
    assert entry.sources.local == "mine/resnet50.safetensors"
    assert MANIFEST_PATH.read_bytes() == shipped and not (MANIFEST_PATH.parent / "mine").exists()
