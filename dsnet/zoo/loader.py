"""The model-zoo loader: find the weights, verify the full SHA-256, then build and load.

Resolution order for an entry's file: ``sources.local`` (relative to the manifest's folder), then
``$DSNET_WEIGHTS_DIR``, then the download cache (``$DSNET_CACHE/weights``), then a download from
``sources.hub`` (Hugging Face Hub, pinned revision) or ``sources.url`` into that cache. Every file is
hashed before it is deserialised, wherever it came from. ``ModelZoo`` holds one manifest's loaded models
(each model and device under its own lock) and its failed downloads; the module functions use the shared
one of each manifest file (``default_zoo``). ``python -m dsnet.zoo list|verify``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dsnet.core.files import cache_root
from dsnet.models import get_builder
from dsnet.zoo.manifest import Entry, LabelSet, Manifest, load_manifest, manifest_path
from dsnet.zoo.weights import ChecksumError, read_state_dict, verify

if TYPE_CHECKING:  # PyTorch is imported on use: `python -m dsnet.zoo list` never needs it
    import torch
    from torch import nn

__all__ = [
    "ZooError",
    "WeightsUnavailable",
    "NotInZoo",
    "ChecksumError",
    "ZooModel",
    "ModelZoo",
    "default_zoo",
    "load",
    "load_available",
    "load_or_skip",
    "pick_device",
]


class ZooError(RuntimeError):
    """A zoo model cannot be served; the message says why and what to do (for logs and developers),
    ``summary`` says it in one line without paths (for the people using a public app)."""

    def __init__(self, message: str, summary: str = "This model cannot be served right now.") -> None:
        super().__init__(message)
        self.summary = summary


class WeightsUnavailable(ZooError):
    """No weights exist (yet) or they cannot be found or fetched."""


class NotInZoo(ZooError):
    """The manifest has no such zoo, or the zoo has no such model."""


@dataclass(frozen=True)
class ZooModel:
    """A verified, loaded model with what is needed to use it (labels, preprocessing)."""

    zoo: str
    name: str
    model: nn.Module
    entry: Entry
    labels: LabelSet
    device: torch.device

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def cache_dir() -> Path:
    return cache_root() / "weights"


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA, else MPS, else CPU, unless ``device`` or ``$DSNET_DEVICE`` says otherwise."""
    import torch

    device = device or os.environ.get("DSNET_DEVICE")
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def candidate_paths(entry: Entry, root: Path) -> list[Path]:
    """Where the entry's file may already be, in the order they are tried."""
    if not entry.file:
        return []
    name = Path(entry.file).name
    paths = []
    if entry.sources.local:
        paths.append(root / entry.sources.local)
    if os.environ.get("DSNET_WEIGHTS_DIR"):
        paths.append(Path(os.environ["DSNET_WEIGHTS_DIR"]) / name)
    if entry.sha256:
        paths.append(cache_dir() / entry.sha256[:16] / name)
    return paths


def how_to_get(entry: Entry, root: Path) -> str:
    ways = []
    if entry.sources.local:
        ways.append(f"put the file at {root / entry.sources.local}")
    ways.append(f"or in $DSNET_WEIGHTS_DIR as {Path(entry.file).name}")
    if entry.sources.hub:
        h = entry.sources.hub
        ways.append(f"or download it with `huggingface-cli download {h.repo_id} {h.filename} --revision {h.revision}`")
    if entry.sources.url:
        ways.append(f"or download {entry.sources.url}")
    return "; ".join(ways)


def retry_seconds() -> float:
    """How long a failed download is remembered: requests to a server cannot trigger downloads at will."""
    return float(os.environ.get("DSNET_DOWNLOAD_RETRY_SECONDS", 600))


def _download(entry: Entry) -> Path:
    """One attempt, no memory of earlier ones: the Hub, then the URL, into the cache."""
    target_dir = cache_dir() / entry.sha256[:16]
    errors = []
    if entry.sources.hub:
        h = entry.sources.hub
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(h.repo_id, h.filename, revision=h.revision, local_dir=target_dir))
        except Exception as e:
            errors.append(f"Hugging Face Hub {h.repo_id}@{h.revision}: {type(e).__name__}: {e}")
    if entry.sources.url:
        target = target_dir / Path(entry.file).name
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            from torch.hub import download_url_to_file

            download_url_to_file(entry.sources.url, str(target), progress=sys.stderr.isatty())
            return target
        except Exception as e:
            errors.append(f"{entry.sources.url}: {type(e).__name__}: {e}")
    raise WeightsUnavailable("download failed (offline?): " + " | ".join(errors))


def verified_local(entry: Entry, zoo: str, root: Path) -> Path | None:
    """The entry's file where it already is (``candidate_paths``), verified; None where it is not.

    Raises WeightsUnavailable for an entry without verifiable weights, ChecksumError for a damaged file."""
    label = f"{zoo}/{entry.name}"
    if entry.unavailable:
        raise WeightsUnavailable(f"{label}: {entry.unavailable}", f"No {zoo} weights exist for {entry.name} yet.")
    if not entry.file or not entry.sha256:
        raise WeightsUnavailable(
            f"{label}: the manifest gives no file and SHA-256; weights are never loaded unverified",
            f"{entry.name} has no verifiable weights.",
        )
    for path in candidate_paths(entry, root):
        if path.is_file():
            verify(path, entry.sha256)
            return path
    return None


def not_installed(entry: Entry, zoo: str, root: Path) -> WeightsUnavailable:
    return WeightsUnavailable(
        f"{zoo}/{entry.name}: weight file {Path(entry.file).name} not found and not downloaded; "
        + how_to_get(entry, root),
        f"The {entry.name} weights are not installed on this server.",
    )


def build(entry: Entry) -> nn.Module:
    return get_builder(entry.builder)(**entry.kwargs)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], label: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:

        def show(xs):
            return ", ".join(xs[:6]) + (f" (+{len(xs) - 6} more)" if len(xs) > 6 else "")

        raise ZooError(
            f"{label}: the weights do not fit the architecture in the manifest. "
            f"missing keys: [{show(missing)}]; unexpected keys: [{show(unexpected)}]; "
            f"shape mismatches: [{show(shapes)}]",
            "The weights do not fit this model.",
        )
    model.load_state_dict(state, strict=True)


DEFAULT_MODELS = ("resnet50", "dsnet50", "ds2net50")


class ModelZoo:
    """The zoos of one manifest: verified models, each loaded once and cached; failed downloads remembered.

    ``ModelZoo(path)`` reads the manifest file (default: ``$DSNET_MANIFEST``, else the shipped one) on every
    load that misses the cache, so entries exported while it runs are found; ``ModelZoo(manifest)`` serves
    a ``Manifest`` as given. Weight files are looked for relative to ``root`` (default: the manifest's
    folder). Threads share one freely: each (zoo, model, device) has its own lock, held while that model
    is found, downloaded, verified and built, so a slow download of one model never delays another (and
    each weight file has its own download lock). A new object starts empty; ``forget()`` empties one.
    The module functions (``load``, ``load_available``, ...) use ``default_zoo()``, one per manifest file.
    """

    def __init__(
        self, manifest: Manifest | str | os.PathLike | None = None, root: str | os.PathLike | None = None
    ) -> None:
        self._manifest = manifest if isinstance(manifest, Manifest) else None
        self.path = self._manifest.path if self._manifest else Path(manifest or manifest_path())
        self.root = Path(root) if root else self.path.parent
        self._loaded: dict[tuple[str, str, str], ZooModel] = {}  # (zoo, model, device) -> the served model
        self._failed: dict[str, tuple[float, str]] = {}  # sha256 -> (when its download failed, why)
        self._locks: dict[tuple[str, ...], threading.Lock] = {}  # one per model and device, one per download
        self._lock = threading.Lock()  # guards the three dicts; never held while loading

    @property
    def manifest(self) -> Manifest:
        return self._manifest or load_manifest(self.path)

    def _lock_for(self, *key: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    def forget(self) -> None:
        """Drop the cached models and the remembered failed downloads (a load in progress still caches its model)."""
        with self._lock:
            self._loaded.clear()
            self._failed.clear()

    def load(self, zoo: str, name: str, device: str | torch.device | None = None) -> ZooModel:
        """The verified model in eval mode on ``pick_device(device)``; one shared instance per (zoo, name, device).

        Callers must not train or modify it: the app serves it. ``fresh_model`` gives a model of one's own."""
        device = pick_device(device)
        key = (zoo, name, str(device))
        with self._lock_for("load", *key):
            with self._lock:
                if key in self._loaded:
                    return self._loaded[key]
            manifest = self.manifest
            entry = self._entry(manifest, zoo, name)
            loaded = ZooModel(
                zoo, name, self._verified_model(entry, zoo).to(device), entry, manifest.labels(entry), device
            )
            with self._lock:
                self._loaded[key] = loaded
            return loaded

    def fresh_model(self, zoo: str, name: str, device: str | torch.device = "cpu") -> nn.Module:
        """A new instance with the entry's verified weights, in eval mode on ``device``, shared with no one."""
        return self._verified_model(self._entry(self.manifest, zoo, name), zoo).to(device)

    @staticmethod
    def _entry(manifest: Manifest, zoo: str, name: str) -> Entry:
        try:
            return manifest.entry(zoo, name)
        except ValueError as e:  # a zoo with other models than the app's three columns, or a typo
            raise NotInZoo(str(e), f"The {zoo} zoo has no {name}.") from None

    def _verified_model(self, entry: Entry, zoo: str) -> nn.Module:
        path = self.resolve(entry, zoo)  # verified before it is deserialised
        model = build(entry)
        load_state(model, read_state_dict(path, entry.format), f"{zoo}/{entry.name}")
        return model.eval()

    def load_available(
        self, zoo: str, names: list[str] | tuple[str, ...] = DEFAULT_MODELS, device: str | None = None
    ) -> tuple[list[ZooModel], dict[str, str]]:
        """The models that can be served, and for the others the reason (never a stand-in model)."""
        loaded, missing = [], {}
        for name in names:
            try:
                loaded.append(self.load(zoo, name, device))
            except (ZooError, ChecksumError) as e:
                missing[name] = str(e)
        return loaded, missing

    def load_or_skip(
        self, zoo: str, names: list[str] | tuple[str, ...] = DEFAULT_MODELS, device: str | None = None
    ) -> list[ZooModel]:
        """``load_available``'s models; each other one is named on stderr with the reason (for command lines)."""
        loaded, missing = self.load_available(zoo, names, device)
        for name, why in missing.items():
            print(f"skipped {zoo}/{name}: {why}", file=sys.stderr)
        return loaded

    def resolve(self, entry: Entry, zoo: str, allow_download: bool = True) -> Path:
        """Path of the entry's verified weight file; raises WeightsUnavailable / ChecksumError.

        The order: ``sources.local`` (relative to the manifest's folder), ``$DSNET_WEIGHTS_DIR``, the
        download cache, then a download."""
        path = verified_local(entry, zoo, self.root)
        if path is not None:
            return path
        if not allow_download or os.environ.get("DSNET_OFFLINE") or not (entry.sources.hub or entry.sources.url):
            raise not_installed(entry, zoo, self.root)
        with self._lock_for("download", entry.sha256):
            path = verified_local(entry, zoo, self.root)  # fetched meanwhile for another device?
            if path is None:
                try:
                    path = self.download(entry)
                except WeightsUnavailable as e:
                    raise WeightsUnavailable(
                        f"{zoo}/{entry.name}: weight file {Path(entry.file).name} not found locally and {e}. "
                        + how_to_get(entry, self.root),
                        f"The {entry.name} weights could not be downloaded; the server tries again "
                        f"in {max(1, round(retry_seconds() / 60))} minutes.",
                    ) from None
                verify(path, entry.sha256)
        return path

    def download(self, entry: Entry) -> Path:
        """Fetch the entry's file into the cache (hub first, then URL). Verification is the caller's.

        A failure is remembered for ``retry_seconds()``; until then the download is not tried again."""
        with self._lock:
            failed = self._failed.get(entry.sha256)
        if failed and time.monotonic() - failed[0] < retry_seconds():
            raise WeightsUnavailable(
                f"download failed {time.monotonic() - failed[0]:.0f} s ago and is not retried "
                f"for {retry_seconds():.0f} s (DSNET_DOWNLOAD_RETRY_SECONDS): {failed[1]}"
            )
        try:
            return _download(entry)
        except WeightsUnavailable as e:
            with self._lock:
                self._failed[entry.sha256] = (time.monotonic(), str(e))
            raise


_DEFAULTS: dict[str, ModelZoo] = {}
_DEFAULTS_LOCK = threading.Lock()


def default_zoo(manifest: str | os.PathLike | None = None) -> ModelZoo:
    """The shared ``ModelZoo`` of a manifest file (default: ``$DSNET_MANIFEST``, else the shipped one), made
    on first use: the app, the command lines and the functions below load through it."""
    path = str(Path(manifest or manifest_path()))
    with _DEFAULTS_LOCK:
        if path not in _DEFAULTS:
            _DEFAULTS[path] = ModelZoo(path)
        return _DEFAULTS[path]


def load(
    zoo: str, name: str, device: str | torch.device | None = None, manifest: str | os.PathLike | None = None
) -> ZooModel:
    """``default_zoo(manifest).load``: the shared, verified model in eval mode."""
    return default_zoo(manifest).load(zoo, name, device)


def load_available(
    zoo: str, names: list[str] | tuple[str, ...] = DEFAULT_MODELS, device: str | None = None
) -> tuple[list[ZooModel], dict[str, str]]:
    """``default_zoo().load_available``: the models that can be served, and for the others the reason."""
    return default_zoo().load_available(zoo, names, device)


def load_or_skip(
    zoo: str, names: list[str] | tuple[str, ...] = DEFAULT_MODELS, device: str | None = None
) -> list[ZooModel]:
    """``default_zoo().load_or_skip``: the models that can be served; the others named on stderr."""
    return default_zoo().load_or_skip(zoo, names, device)


@dataclass(frozen=True)
class EntryStatus:
    zoo: str
    name: str
    builder: str
    available: bool
    present: bool
    verified: bool
    path: str | None
    message: str
    top1: float | None  # the manifest's (first) metric
    measured: str | None  # what that top-1 was measured on and how (``Metrics.measurement``)


def status_word(entry: Entry) -> str:
    """For weights not here yet: whether they download on first use (a source, and downloads allowed)."""
    if (entry.sources.hub or entry.sources.url) and not os.environ.get("DSNET_OFFLINE"):
        return "downloads"
    return "missing"


def entry_status(zoo: str, entry: Entry, root: Path) -> EntryStatus:
    present = next((p for p in candidate_paths(entry, root) if p.is_file()), None)
    metric = entry.metrics[0] if entry.metrics else None
    top1, measured = (metric.top1, metric.measurement()) if metric else (None, None)
    try:
        path = verified_local(entry, zoo, root)
        if path is None:
            raise not_installed(entry, zoo, root)
        return EntryStatus(zoo, entry.name, entry.builder, True, True, True, str(path), "ok", top1, measured)
    except (ZooError, ChecksumError) as e:
        return EntryStatus(
            zoo,
            entry.name,
            entry.builder,
            entry.unavailable is None,
            present is not None,
            False,
            str(present) if present else None,
            str(e),
            top1,
            measured,
        )


def top1_legend(rows: list[EntryStatus]) -> list[str]:
    """What each top-1 of ``rows`` was measured on and how: one line per zoo and measurement."""
    groups: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        if r.measured:
            groups.setdefault((r.zoo, r.measured), []).append(r.name)
    return [f"  {zoo}/{', '.join(names)}: {measured}" for (zoo, measured), names in groups.items()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dsnet.zoo", description="List and verify the model zoos.")
    p.add_argument("command", choices=["list", "verify"])
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--manifest", type=Path, help="manifest file (default: $DSNET_MANIFEST, else checkpoints/manifest.json)"
    )
    args = p.parse_args(argv)
    manifest = load_manifest(args.manifest)
    rows = [entry_status(z, e, manifest.path.parent) for z, zoo in manifest.zoos.items() for e in zoo.entries.values()]
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=1))
    else:
        print(f"{'zoo/model':<22} {'weights':<12} {'top-1':>6}  details (downloads: fetched and verified on first use)")
        for r in rows:
            state = (
                "verified"
                if r.verified
                else (
                    "MISMATCH"
                    if r.present
                    else (status_word(manifest.zoo(r.zoo).entries[r.name]) if r.available else "none yet")
                )
            )
            top1 = f"{r.top1:.2f}" if r.top1 is not None else "-"
            print(f"{r.zoo + '/' + r.name:<22} {state:<12} {top1:>6}  {r.path if r.verified else r.message}")
        if any(r.measured for r in rows):
            print("top-1 (%): the manifest's number for each model, measured on")
            print("\n".join(top1_legend(rows)))
            print(
                "(the app preprocesses with PIL, which gives other numbers: "
                "python -m dsnet.evidence.evaluate --pipeline app measures them)"
            )
    if args.command == "verify":
        bad = [r for r in rows if r.present and not r.verified]
        for r in bad:
            print(f"FAILED {r.zoo}/{r.name}: {r.message}", file=sys.stderr)
        print(
            f"{sum(r.verified for r in rows)} verified, {len(bad)} failed, "
            f"{sum(not r.present for r in rows)} not present"
        )
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
