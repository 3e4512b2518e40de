"""The Space deploy (``python -m app.space``) and the ZeroGPU seam (``app.zerogpu``), without network."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from app import space
from app.space import DeployError, check, deploy
from conftest import ROOT, free_port, sample

WEIGHTS = [f"checkpoints/imagenette/{m}.safetensors" for m in ("resnet50", "dsnet50", "ds2net50")]


def copy_repo(dest: Path) -> Path:
    """The deployable part of this repository, plus things that must never be uploaded."""
    for pattern in (
        "README.md",
        "requirements.txt",
        "pyproject.toml",
        "app.py",
        "app/*.py",
        "dsnet/*.py",
        "checkpoints/manifest.json",
        "checkpoints/imagenette/*",
    ):
        for src in ROOT.glob(pattern):
            (dest / src.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / src.relative_to(ROOT))
    for extra in (
        "tests/test_x.py",
        "runs/x/last.pt",
        "dsnet/__pycache__/zoo.cpython-311.pyc",
        "docs/a.png",
        "app/notes.txt",
    ):
        (dest / extra).parent.mkdir(parents=True, exist_ok=True)
        (dest / extra).write_bytes(b"not for the Space")
    return dest


def refused(root: Path, **kwargs) -> str:
    with pytest.raises(DeployError) as e:
        deploy("alice/dsnet-explain", dry_run=True, root=root, **kwargs)
    return str(e.value)


def test_dry_run_on_the_repository_passes(capsys):
    assert space.main(["deploy", "alice/dsnet-explain", "--dry-run"]) == 0
    out = capsys.readouterr().out
    plan = check(ROOT)
    assert plan.ok, plan.problems
    for path in [
        "app.py",
        "app/__init__.py",
        "app/layout.py",
        "app/zerogpu.py",
        "dsnet/zoo/loader.py",
        "dsnet/cam/service.py",
        "checkpoints/manifest.json",
        "requirements.txt",
        "README.md",
        *WEIGHTS,
    ]:
        assert path in plan.files, path
        assert path in out
    assert not [p for p in plan.files if p.startswith(("tests/", "runs/", "benchmarks/", "scripts/", "."))]
    from app.evidence import FILES as EVIDENCE

    # the pictures README shows, the page's evidence, and the pages README links to
    docs = {p for p in plan.files if p.startswith("docs/") and not p.endswith(".md")}
    assert {p for p in plan.files if p.endswith(".md") and p.startswith("docs/")} == {
        f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")
    }
    assert set(EVIDENCE) <= docs and docs <= {
        "docs/screenshot.png",
        "docs/screenshot-phone.png",
        "docs/figure4-imagenette.png",
        "docs/figure5-imagenette.png",
        *EVIDENCE,
    }
    assert not [p for p in plan.files if p.startswith("dsnet/evidence/") or p == "app/space.py"]  # not the app's
    assert not [p for p in plan.files if "__pycache__" in p or p.endswith(".log.jsonl")]
    assert plan.files["checkpoints/imagenette/dsnet50.safetensors"] == (ROOT / WEIGHTS[1]).stat().st_size
    assert f"{len(plan.files)} files" in out and "all checks passed" in out
    assert "imagenet/resnet50: not shipped; downloads on first use" in out


def test_the_copy_passes_and_ships_only_the_allow_list(tmp_path):
    plan = check(copy_repo(tmp_path))
    assert plan.ok, plan.problems
    assert set(plan.files) == {
        p.relative_to(tmp_path).as_posix()
        for p in tmp_path.rglob("*")
        if p.is_file() and (space.allowed(p.relative_to(tmp_path).as_posix()) or p.suffix == ".safetensors")
    }
    for stray in (
        "tests/test_x.py",
        "runs/x/last.pt",
        "dsnet/__pycache__/zoo.cpython-311.pyc",
        "docs/a.png",
        "app/notes.txt",
        "pyproject.toml",
        "checkpoints/imagenette/dsnet50.log.jsonl",
    ):
        assert stray not in plan.files


def test_a_missing_weight_is_refused(tmp_path):
    root = copy_repo(tmp_path)
    (root / WEIGHTS[1]).unlink()
    message = refused(root)
    assert "imagenette/dsnet50: missing weight file checkpoints/imagenette/dsnet50.safetensors" in message
    assert "1 problem(s)" in message


def test_a_tampered_weight_is_refused(tmp_path):
    root = copy_repo(tmp_path)
    data = bytearray((root / WEIGHTS[0]).read_bytes())
    data[-1] ^= 1
    (root / WEIGHTS[0]).write_bytes(bytes(data))
    message = refused(root)
    assert "imagenette/resnet50: tampered or corrupt: SHA-256 mismatch" in message


def _edit_front_matter(root: Path, old: str, new: str) -> None:
    readme = root / "README.md"
    text = readme.read_text()
    assert old in text
    readme.write_text(text.replace(old, new, 1))


def test_sdk_version_differing_from_the_gradio_pin_is_refused(tmp_path):
    root = copy_repo(tmp_path)
    pin = space.requirement_pins(root / "requirements.txt")["gradio"]
    _edit_front_matter(root, f"sdk_version: {pin}", "sdk_version: 5.0.0")
    message = refused(root)
    assert f"sdk_version is '5.0.0' but requirements.txt pins gradio=={pin}" in message


def test_a_stray_env_file_is_refused_wherever_it_lies(tmp_path):
    root = copy_repo(tmp_path)
    (root / ".env").write_text("HF_TOKEN=placeholder\n")
    (root / "app" / ".env.local").write_text("X=1\n")
    (root / ".env.example").write_text("HF_TOKEN=\n")  # a template, not a secret
    message = refused(root)
    assert "secret: .env lies in the folder being deployed" in message
    assert "secret: app/.env.local lies in the folder" in message
    assert ".env.example" not in message


def test_every_problem_is_listed_at_once(tmp_path):
    root = copy_repo(tmp_path)
    (root / WEIGHTS[2]).unlink()
    (root / ".env").write_text("A=1\n")
    _edit_front_matter(root, 'python_version: "3.11"', "python_version: 3.10")  # YAML reads 3.1
    _edit_front_matter(root, "app_file: app.py", "app_file: main.py")
    token = "hf_" + "a1B2" * 9
    (root / "dsnet" / "leak.py").write_text(f"TOKEN = '{token}'\n")
    message = refused(root, hardware="zero-a10g", max_total_mb=1)
    for reason in [
        "imagenette/ds2net50: missing weight",
        "secret: .env",
        "python_version is 3.1",
        "quote it",
        "app_file is 'main.py'",
        "dsnet/leak.py contains a Hugging Face access token",
        "over the 1 MB limit",
        "6 problem(s)",
    ]:
        assert reason in message, reason
    assert token not in message


def test_zerogpu_hardware_needs_spaces_in_requirements(tmp_path):
    root = copy_repo(tmp_path)
    req = root / "requirements.txt"
    req.write_text("".join(line for line in req.read_text().splitlines(True) if not line.startswith("spaces")))
    assert check(root).ok
    assert "ZeroGPU hardware needs the `spaces` package" in refused(root, hardware="zero-a10g")


class Recorder:
    """Stands in for the HfApi methods the deploy calls: records each call, touches no network."""

    def __init__(self, present):
        self.calls, self.present = [], present

    def method(self, name, result=None):
        def record(api, *args, **kwargs):
            self.calls.append((name, args, kwargs))
            return result

        return record


def test_upload_calls_the_hub_api_with_exactly_the_checked_files(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    root = copy_repo(tmp_path)
    rec = Recorder(None)
    present = [
        ".gitattributes",
        "README.md",
        "dsnet/old_module.py",
        "checkpoints/imagenette/old.safetensors",
        "user/notes.md",
    ]
    monkeypatch.setattr(HfApi, "create_repo", rec.method("create_repo"))
    monkeypatch.setattr(HfApi, "request_space_hardware", rec.method("request_space_hardware"))
    monkeypatch.setattr(HfApi, "list_repo_files", rec.method("list_repo_files", present))
    monkeypatch.setattr(HfApi, "create_commit", rec.method("create_commit", types.SimpleNamespace(oid="abc123")))
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    plan = deploy("alice/dsnet-explain", private=True, hardware="zero-a10g", root=root)

    names = [c[0] for c in rec.calls]
    assert names == ["create_repo", "request_space_hardware", "list_repo_files", "create_commit"]
    assert rec.calls[0][1:] == (
        ("alice/dsnet-explain",),
        dict(repo_type="space", space_sdk="gradio", private=True, space_hardware="zero-a10g", exist_ok=True),
    )
    assert rec.calls[1][1:] == (("alice/dsnet-explain", "zero-a10g"), {})
    assert rec.calls[2][1:] == (("alice/dsnet-explain",), dict(repo_type="space"))
    (repo_id, operations), kwargs = rec.calls[3][1:]
    assert repo_id == "alice/dsnet-explain" and kwargs["repo_type"] == "space"
    assert kwargs["commit_message"].startswith("Deploy DSNet Explain from ")
    adds = [op for op in operations if isinstance(op, CommitOperationAdd)]
    deletes = [op.path_in_repo for op in operations if isinstance(op, CommitOperationDelete)]
    assert [op.path_in_repo for op in adds] == list(plan.files)
    assert all(op.path_or_fileobj == str(root / op.path_in_repo) for op in adds)
    assert {op.path_in_repo for op in adds} >= {"app.py", "README.md", *WEIGHTS}
    # Stale files the deploy owns go; the Hub's .gitattributes and files added on the Hub stay.
    assert deletes == ["dsnet/old_module.py", "checkpoints/imagenette/old.safetensors"]


def test_nothing_is_called_when_the_checks_fail(tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    root = copy_repo(tmp_path)
    (root / ".env").write_text("A=1\n")
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("the Hub was called"))
    with pytest.raises(DeployError, match="secret: .env"):
        deploy("alice/dsnet-explain", root=root)


def _run_cli(env_extra: dict, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), **env_extra)  # no stored token either
    return subprocess.run(
        [sys.executable, "-m", "app.space", "deploy", "alice/dsnet-explain", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_deploy_without_a_token_says_how_to_get_one(tmp_path):
    r = _run_cli({}, tmp_path)
    assert r.returncode == 1
    assert "no Hugging Face token: set HF_TOKEN or run `hf auth login`" in r.stderr
    assert "Traceback" not in r.stderr


def test_deploy_offline_fails_clearly_not_with_a_traceback(tmp_path):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there: as offline as it gets
    r = _run_cli({"HF_TOKEN": "hf_" + "x" * 34, "HF_ENDPOINT": endpoint}, tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"cannot reach the Hugging Face Hub at {endpoint}" in r.stderr and "offline?" in r.stderr
    assert "Traceback" not in r.stderr
    r = _run_cli({"HF_TOKEN": "hf_" + "x" * 34, "HF_HUB_OFFLINE": "1"}, tmp_path)
    assert r.returncode == 1 and "HF_HUB_OFFLINE is set" in r.stderr and "Traceback" not in r.stderr


def test_a_bad_space_id_is_refused(tmp_path):
    with pytest.raises(DeployError, match="expected USER/NAME"):
        deploy("dsnet-explain", dry_run=True)


# ------------------------------------------------------------------------------------------ ZeroGPU


def _same(a, b) -> None:
    assert (a.zoo, a.model, a.method, a.top5, a.explained, a.notes, a.device, a.faithfulness) == (
        b.zoo,
        b.model,
        b.method,
        b.top5,
        b.explained,
        b.notes,
        b.device,
        b.faithfulness,
    )
    for name in ("view", "cam", "overlay"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_on_gpu_returns_what_the_plain_service_returns_on_the_cpu(monkeypatch):
    spaces = pytest.importorskip("spaces")
    from app.zerogpu import on_gpu, on_zerogpu, serving_device
    from dsnet.cam.service import explain
    from dsnet.zoo.loader import load_available

    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    monkeypatch.setenv("DSNET_DEVICE", "cpu")
    assert not on_zerogpu() and serving_device() == "cpu"
    models, missing = load_available("imagenette")
    assert not missing and len(models) == 3
    image = sample("golf_ball")
    plain = explain(image, models, method="gradcam", target="top1")
    for decorated in (on_gpu(duration=60)(explain), spaces.GPU(duration=60)(explain)):
        got = decorated(image, models, method="gradcam", target="top1")
        assert len(got) == 3
        for a, b in zip(got, plain):
            _same(a, b)
    # On ZeroGPU the results come back from a forked worker through pickle: they must survive it.
    for a, b in zip(pickle.loads(pickle.dumps(plain)), plain):
        _same(a, b)

    def stream(image):
        yield from explain(image, models)

    for a, b in zip(on_gpu(duration=60)(stream)(image), plain):  # generators too
        _same(a, b)


def test_on_gpu_is_spaces_gpu_on_zerogpu(monkeypatch):
    from app.zerogpu import on_gpu, on_zerogpu

    seen = []
    fake = types.ModuleType("spaces")

    def GPU(task=None, *, duration=None):
        def wrap(fn):
            def inner(*args, **kwargs):
                seen.append(duration)
                return fn(*args, **kwargs)

            return inner

        return wrap

    fake.GPU = GPU
    monkeypatch.setitem(sys.modules, "spaces", fake)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    assert on_zerogpu()
    assert on_gpu(duration=42)(lambda x: x * 2)(21) == 42 and seen == [42]
    monkeypatch.setenv("SPACES_ZERO_GPU", "false")
    f = lambda x: x
    assert on_gpu(duration=42)(f) is f and seen == [42]


def test_serving_device_follows_the_zoo(monkeypatch):
    from app.zerogpu import serving_device
    from dsnet.zoo.loader import pick_device

    monkeypatch.delenv("DSNET_DEVICE", raising=False)
    assert serving_device() == pick_device().type
    monkeypatch.setenv("DSNET_DEVICE", "cuda")  # as on GPU hardware, where CUDA is picked
    assert serving_device() == "cuda"
