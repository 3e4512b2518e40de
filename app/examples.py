"""The app's example photos: addressed by id on the server, never by a path a client sends.

The shipped set (``app/examples``: Imagenette val photos, and ILSVRC2012 val photos with their object
boxes in ``boxes.csv``; see its README) is always there, so a Space
visitor gets a result in one click; ``--gallery DIR`` / ``$DSNET_GALLERY`` adds a sample of a labelled
folder anywhere on disk. The gallery shows thumbnails made here, so no file path ever has to be
served or allowed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dsnet.cam.localisation import Box, read_boxes
from dsnet.core.text import quoted
from dsnet.data.labelled import scan_labelled
from dsnet.zoo.manifest import Manifest

SHIPPED = Path(__file__).resolve().parent / "examples"
EXTRA_SAMPLE = 30  # images shown from --gallery DIR (a spread of classes, the same on every start)
THUMBNAIL = 160
# The classes of the paper's Figure 5 (shown first from a gallery for the imagenet zoo): obelisk, knee
# pad, airship, bittern, langur, jacamar, wolf spider, redshank, black widow, ground beetle.
FIGURE5_WNIDS = (
    "n03837869",
    "n03623198",
    "n02692877",
    "n02011460",
    "n02488291",
    "n01843065",
    "n01775062",
    "n02028035",
    "n01774384",
    "n02167151",
)


@dataclass(frozen=True)
class Example:
    id: str  # what clients send: the file's stem (shipped) or "gallery:<stem>"
    path: Path  # server side only
    wnid: str
    caption: str  # the class name
    boxes: tuple[Box, ...] = ()  # ground-truth object boxes in the file's pixels (a boxes.csv beside it), if any
    origin: str = "Imagenette val"


class ExampleSet:
    """The examples in gallery order, and lookup by id or gallery index."""

    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples
        self._by_id = {e.id: e for e in examples}

    def __len__(self) -> int:
        return len(self.examples)

    def get(self, key: str | int) -> Example:
        """The example with this id (or gallery index); ValueError for anything else."""
        if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(self.examples):
            return self.examples[key]
        if isinstance(key, str) and key in self._by_id:
            return self._by_id[key]
        raise ValueError(f"unknown example {quoted(str(key))}; the ids are listed by the API's `examples` endpoint")

    def ids(self) -> list[str]:
        return [e.id for e in self.examples]

    def thumbnails(self) -> list[tuple[Image.Image, str]]:
        """(thumbnail, caption) pairs for a gr.Gallery."""
        out = []
        for e in self.examples:
            with Image.open(e.path) as im:
                im = im.convert("RGB")
                im.thumbnail((THUMBNAIL, THUMBNAIL))
                out.append((im, e.caption))
        return out


def folder_boxes(root: Path) -> dict[str, list[Box]]:
    """The boxes of a folder with a ``boxes.csv`` (the ilsvrc-val-boxes layout), by relative path; else none."""
    return read_boxes(root) if (root / "boxes.csv").is_file() else {}


def load_examples(
    manifest: Manifest, gallery: str | None = None, zoo: str = "imagenette", shipped: Path = SHIPPED
) -> ExampleSet:
    """The shipped examples (the boxed ILSVRC val ones first), then a seeded sample of ``gallery``
    (Figure 5's classes first for imagenet)."""
    names = manifest.class_names()
    boxes = folder_boxes(shipped)
    examples = []
    for it in scan_labelled(shipped):
        rel = it.path.relative_to(shipped).as_posix()
        boxed = tuple(boxes.get(rel, ()))
        examples.append(
            Example(
                it.path.stem,
                it.path,
                it.wnid,
                names.get(it.wnid, it.wnid),
                boxed,
                "ILSVRC2012 val, with its object boxes" if boxed else "Imagenette val",
            )
        )
    examples.sort(key=lambda e: not e.boxes)  # stable: the boxed ones first, each group in file order
    if gallery:
        root = Path(gallery)
        items = scan_labelled(root)
        gallery_boxes = folder_boxes(root)
        first = [it for it in items if it.wnid in FIGURE5_WNIDS] if zoo == "imagenet" else []
        rest = [it for it in items if it not in first]
        random.Random(0).shuffle(rest)
        for it in (first + rest)[:EXTRA_SAMPLE]:
            stem = it.path.relative_to(root).with_suffix("").as_posix()
            boxed = tuple(gallery_boxes.get(it.path.relative_to(root).as_posix(), ()))
            examples.append(
                Example(
                    f"gallery:{stem}",
                    it.path,
                    it.wnid,
                    names.get(it.wnid, it.wnid),
                    boxed,
                    "with its object boxes" if boxed else "gallery",
                )
            )
    return ExampleSet(examples)
