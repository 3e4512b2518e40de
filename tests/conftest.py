"""Shared fixtures: paths to the shared data, and a tiny real zoo written by the tests themselves."""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import dsnet
from dsnet.core.files import free_port, wait_until_serving
from dsnet.core.provenance import revision
from dsnet.zoo import loader as zoo
from dsnet.zoo.manifest import MANIFEST_PATH
from dsnet.zoo.weights import save_safetensors

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("DSNET_DATA", ROOT.parent / "shared" / "data"))
SAMPLES = DATA / "imagenet-samples"
IMAGENETTE = DATA / "imagenette"
TRIO = ("resnet50", "dsnet50", "ds2net50")


def sample(name: str) -> Path:
    """An imagenet-samples image by class name, e.g. sample("golf_ball")."""
    if not SAMPLES.is_dir():  # collection goes on; the tests that read it are skipped (or CI stops)
        return SAMPLES / f"missing_{name}.JPEG"
    hits = sorted(SAMPLES.glob(f"n*_{name}.JPEG"))
    assert hits, f"no sample image for {name} in {SAMPLES}"
    return hits[0]


def write_tiny_zoo(folder: Path, width: float = 0.125, unavailable: tuple[str, ...] = ()) -> Path:
    """A manifest with zoo "tiny": the trio at ``width``, 10 Imagenette classes, seeded random weights."""
    raw = json.loads(MANIFEST_PATH.read_text())
    base = raw["zoos"]["imagenette"]["models"]["resnet50"]
    models = {}
    for i, name in enumerate(TRIO):
        torch.manual_seed(i)
        model = dsnet.get_model(name, width=width, num_classes=10)
        (folder / "tiny").mkdir(parents=True, exist_ok=True)
        sha = save_safetensors(model, folder / "tiny" / f"{name}.safetensors")
        models[name] = {
            **base,
            "builder": name,
            "kwargs": {"num_classes": 10, "width": width},
            "file": f"tiny/{name}.safetensors",
            "sha256": sha,
            "sources": {"local": f"tiny/{name}.safetensors", "hub": None, "url": None},
            "unavailable": "weights withheld by the test" if name in unavailable else None,
        }
    raw["zoos"] = {"tiny": {"description": "test zoo", "models": models}}
    path = folder / "manifest.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture
def tiny_zoo(tmp_path, monkeypatch) -> Path:
    path = write_tiny_zoo(tmp_path)
    monkeypatch.setenv("DSNET_MANIFEST", str(path))
    monkeypatch.setenv("DSNET_CACHE", str(tmp_path / "cache"))
    yield path  # a new manifest file: zoo.load & co. use a new zoo object (zoo.default_zoo(path))
    zoo.default_zoo(path).forget()


@dataclass(frozen=True)
class LiveApp:
    url: str
    zoo: str
    port: int


@pytest.fixture(scope="session")
def live_app():
    """The real app on 127.0.0.1 with the shipped zoo (or $DSNET_MANIFEST's first zoo), offline, in this
    process; its per-visitor limits are raised so one test client can send many requests at once (the
    limits themselves are tested against ``python app.py`` in test_security.py and test_abuse.py)."""
    from dataclasses import replace

    from app import build_app, launch
    from app.settings import ServingSettings
    from dsnet.zoo.manifest import load_manifest

    zoos = list(load_manifest().zoos)
    zoo_name = "imagenette" if "imagenette" in zoos else zoos[0]
    settings = replace(
        ServingSettings.from_env(),
        per_client=1000,
        running_per_client=1000,
        pages_per_client=100_000,
        connections_per_client=1000,
    )
    built = build_app(None, zoo_name, settings)
    port = free_port()
    launch(built, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield LiveApp(f"http://127.0.0.1:{port}/", zoo_name, port)
    built.demo.close()


def pytest_collection_modifyitems(config, items):
    """Without the shared data, the tests that read it skip with the reason (under CI they must not)."""
    if (SAMPLES.is_dir() and IMAGENETTE.is_dir()) or not items:
        return
    if os.environ.get("CI"):
        raise pytest.UsageError(f"the shared data is missing at {DATA} (set DSNET_DATA); CI needs it")
    skip = pytest.mark.skip(
        reason=f"needs the shared data at {DATA} (set DSNET_DATA to the folder holding "
        "imagenet-samples/ and imagenette/)"
    )
    import inspect

    words = ("sample(", "IMAGENETTE", "SAMPLES", "DATA", "photo(", "bad_inputs(", "awkward_inputs(")
    derived: dict[str, tuple[str, ...]] = {}  # per module: its constants made from the data (e.g. TINY)
    for item in items:  # a test whose own code names the data (or something made from it) reads it
        path = str(item.fspath)
        if path not in derived:
            lines = Path(path).read_text().splitlines()
            derived[path] = tuple(
                m.group(1)
                for line in lines
                if (m := re.match(r"([A-Z_][A-Z0-9_]*) = (.*)", line)) and any(w in m.group(2) for w in words)
            )
        function = getattr(item, "function", None)
        try:
            code = inspect.getsource(function) if function else ""
        except (OSError, TypeError):
            code = ""
        if any(w in code for w in words + derived[path]):
            item.add_marker(skip)


@dataclass
class SpawnedApp:
    """``python app.py`` as a Space starts it: repository root, no arguments unless given."""

    url: str
    port: int
    proc: subprocess.Popen
    temp_dir: Path  # GRADIO_TEMP_DIR: uploads and outputs
    log: Path  # the server's stdout + stderr

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig=None) -> int:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def spawn_app(folder: Path, *args: str, env: dict | None = None, timeout: float = 120) -> SpawnedApp:
    """Start ``python app.py`` in the repository root on a free port and wait until it serves."""
    import subprocess
    import sys

    port = free_port()
    temp_dir = folder / "gradio-tmp"
    temp_dir.mkdir(parents=True, exist_ok=True)
    log = folder / "server.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DSNET_MANIFEST", "GRADIO_"))}
    full_env.update(
        {
            "GRADIO_SERVER_PORT": str(port),
            "GRADIO_TEMP_DIR": str(temp_dir),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
    )
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py", *args], cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT
        )
    app = SpawnedApp(f"http://127.0.0.1:{port}/", port, proc, temp_dir, log)
    try:
        wait_until_serving(proc, app.url, timeout, poll=0.5)
    except RuntimeError as e:
        app.stop()
        raise RuntimeError(f"{e}:\n{app.log_text()[-3000:]}") from None
    return app


def record(artifact: str, key: str, value) -> None:
    """A measured value for README: kept in $DSNET_RECORD_DIR/<artifact>.json (with commit and date)
    when that variable is set, e.g. ``DSNET_RECORD_DIR=docs python -m pytest tests/test_security.py``."""
    import datetime

    folder = os.environ.get("DSNET_RECORD_DIR")
    print(f"\n{artifact.upper()} {key}: {value}")
    if not folder:
        return
    path = Path(folder) / f"{artifact}.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(
        {
            "commit": revision(ROOT).commit,
            "date": datetime.date.today().isoformat(),
            "command": f"DSNET_RECORD_DIR={folder} python -m pytest tests/test_{artifact}.py -q",
        }
    )
    data.setdefault("values", {})[key] = value
    path.write_text(json.dumps(data, indent=1) + "\n")
