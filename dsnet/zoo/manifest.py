"""The zoo manifest (``checkpoints/manifest.json``) as typed dataclasses.

One entry per checkpoint: builder + kwargs, label set, preprocessing, file name, full SHA-256,
sources, measured metrics with their dataset, and provenance. Data, not code: the weights' card.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from dsnet.core.files import atomic_path
from dsnet.core.text import quoted

CHECKPOINTS_DIR = Path(__file__).resolve().parents[2] / "checkpoints"
MANIFEST_PATH = CHECKPOINTS_DIR / "manifest.json"
SCHEMA = 1  # the manifest layout this code reads and writes (its "schema" field)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class LabelSet:
    wnids: list[str]
    names: list[str]

    def index(self, query: str | int) -> int:
        """Class index from an index, a wnid or a (case-insensitive, unique-prefix) class name."""
        if isinstance(query, int) or (isinstance(query, str) and query.strip().isdigit()):
            i = int(query)
            if not 0 <= i < len(self.names):
                raise ValueError(f"class index {i} is out of range 0..{len(self.names) - 1}")
            return i
        q = str(query).strip().lower()
        if q in (w.lower() for w in self.wnids):
            return [w.lower() for w in self.wnids].index(q)
        exact = [i for i, n in enumerate(self.names) if n.lower() == q]
        if exact:
            return exact[0]
        partial = [i for i, n in enumerate(self.names) if n.lower().startswith(q)]
        if len(partial) == 1:
            return partial[0]
        close = [self.names[i] for i in partial[:8]] or difflib.get_close_matches(
            str(query), self.names, n=5, cutoff=0.6
        )
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown class {quoted(str(query))} for this label set of {len(self.names)} classes{hint}")


def class_names(label_sets: Iterable[LabelSet]) -> dict[str, str]:
    """wnid -> readable class name over ``label_sets`` (a later set's name wins; the sets agree)."""
    names: dict[str, str] = {}
    for label_set in label_sets:
        names.update(zip(label_set.wnids, label_set.names))
    return names


@dataclass(frozen=True)
class Preprocessing:
    """Eval transform: resize shorter side, centre crop, normalise (RGB, float in [0, 1] first)."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    filename: str
    revision: str  # a commit hash: a moving branch cannot be verified reproducibly


@dataclass(frozen=True)
class Sources:
    local: str | None = None  # relative to the checkpoints folder
    hub: HubSource | None = None
    url: str | None = None


# How a top-1 was measured: the two ways this project preprocesses an image for a model. They differ by
# up to a point of top-1 on the 0.25x-width Imagenette models (docs/results.md, "The resize implementation
# matters"), so a number always names its protocol.
PROTOCOLS = {
    "app": "the app's preprocessing: PIL bilinear resize of the shorter side to {resize} px, centre crop {crop} px",
    "export": "export's preprocessing: torchvision antialiased resize of the shorter side to {resize} px, "
    "centre crop {crop} px",
}


def protocol(pipeline: str, pre: Preprocessing) -> str:
    """The text of ``PROTOCOLS[pipeline]`` at ``pre``'s sizes, as a ``Metrics.protocol``."""
    return PROTOCOLS[pipeline].format(resize=pre.resize, crop=pre.crop)


@dataclass(frozen=True)
class Metrics:
    dataset: str
    images: int
    top1: float
    top5: float
    protocol: str | None = None  # how each image became the model's input (``protocol``); None: not recorded

    def measurement(self) -> str:
        """What the numbers were measured on and how, in one line (the label of its top-1)."""
        return f"{self.dataset} ({self.images} images); {self.protocol or 'preprocessing not recorded'}"


@dataclass(frozen=True)
class Entry:
    name: str
    builder: str
    kwargs: dict[str, Any]
    labels: str
    preprocessing: Preprocessing
    file: str | None
    sha256: str | None
    sources: Sources
    format: str = "safetensors"  # or "torch" (a torchvision .pth, loaded with weights_only=True)
    metrics: list[Metrics] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
    unavailable: str | None = None  # why there are no weights (never replaced by random ones)

    @staticmethod
    def from_json(name: str, d: dict[str, Any]) -> Entry:
        src = d.get("sources", {})
        return Entry(
            name=name,
            builder=d["builder"],
            kwargs=d.get("kwargs", {}),
            labels=d["labels"],
            preprocessing=Preprocessing(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in d.get("preprocessing", {}).items()}
            ),
            file=d.get("file"),
            sha256=d.get("sha256"),
            sources=Sources(
                local=src.get("local"), url=src.get("url"), hub=HubSource(**src["hub"]) if src.get("hub") else None
            ),
            format=d.get("format", "safetensors"),
            metrics=[Metrics(**m) for m in d.get("metrics", [])],
            provenance=d.get("provenance", {}),
            unavailable=d.get("unavailable"),
        )

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("name")
        return d


@dataclass(frozen=True)
class Zoo:
    name: str
    description: str
    entries: dict[str, Entry]


@dataclass(frozen=True)
class Manifest:
    label_sets: dict[str, LabelSet]
    zoos: dict[str, Zoo]
    path: Path

    def zoo(self, name: str) -> Zoo:
        if name not in self.zoos:
            raise ValueError(f"unknown zoo {name!r}; zoos: {', '.join(self.zoos)}")
        return self.zoos[name]

    def entry(self, zoo: str, model: str) -> Entry:
        entries = self.zoo(zoo).entries
        if model not in entries:
            raise ValueError(f"zoo {zoo!r} has no model {model!r}; its models: {', '.join(entries)}")
        return entries[model]

    def labels(self, entry: Entry) -> LabelSet:
        return self.label_sets[entry.labels]

    def class_names(self) -> dict[str, str]:
        """wnid -> readable class name, over every label set of the manifest (a wnid no set names: absent)."""
        return class_names(self.label_sets.values())


def manifest_path() -> Path:
    """``$DSNET_MANIFEST`` if set (another zoo, tests), else the shipped checkpoints/manifest.json."""
    return Path(os.environ.get("DSNET_MANIFEST") or MANIFEST_PATH)


class ManifestError(ValueError):
    """A manifest this code cannot read (its schema is missing or another version)."""


def read_raw(path: Path) -> dict[str, Any]:
    """The manifest's JSON, after checking its ``"schema"`` is the one this code knows."""
    raw = json.loads(path.read_text())
    schema = raw.get("schema") if isinstance(raw, dict) else None
    if schema != SCHEMA:
        found = 'has no "schema" field' if schema is None else f"has schema {schema!r}"
        raise ManifestError(f"{path} {found}; this version of dsnet reads manifest schema {SCHEMA} only")
    return raw


def load_manifest(path: str | os.PathLike | None = None) -> Manifest:
    path = Path(path) if path else manifest_path()
    raw = read_raw(path)
    return Manifest(
        label_sets={k: LabelSet(**v) for k, v in raw["label_sets"].items()},
        zoos={
            z: Zoo(z, v.get("description", ""), {m: Entry.from_json(m, e) for m, e in v["models"].items()})
            for z, v in raw["zoos"].items()
        },
        path=path,
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[dict[str, Any]]:
    """The manifest's JSON, under an exclusive lock on ``<name>.lock`` (processes and threads; any OS)."""
    with FileLock(str(path.with_suffix(".lock"))):
        yield read_raw(path)


def write_entry(zoo: str, entry: Entry, path: str | os.PathLike) -> None:
    """Add or replace one entry, atomically and under a lock (parallel trainings export at once)."""
    path = Path(path)
    with _locked(path) as raw:
        raw["zoos"].setdefault(zoo, {"description": "", "models": {}})["models"][entry.name] = entry.to_json()
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(raw, indent=1) + "\n")


def label_set_for(wnids: list[str], path: str | os.PathLike, zoo: str = "custom") -> str:
    """Name of the manifest's label set with exactly these wnids, adding one if there is none."""
    path = Path(path)
    with _locked(path) as raw:
        for name, ls in raw["label_sets"].items():
            if ls["wnids"] == list(wnids):
                return name
        known = class_names(LabelSet(**ls) for ls in raw["label_sets"].values())
        name = f"{zoo}{len(wnids)}"
        raw["label_sets"][name] = {"wnids": list(wnids), "names": [known.get(w, w) for w in wnids]}
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(raw, indent=1) + "\n")
        return name
