"""What one visitor's page holds between requests, and the shape of what a run shows."""

from __future__ import annotations

from dataclasses import dataclass, field

from dsnet.cam.localisation import Box
from dsnet.cam.service import CamResult
from dsnet.zoo.loader import DEFAULT_MODELS

from .params import ExplainParams

EXPLAIN_GROUP = "explain"  # the concurrency group of everything that runs a model or draws pictures
DIFFERENCES = (("dsnet50", "resnet50"), ("ds2net50", "resnet50"))  # (a, b): where a looks and b does not
# status, model view, (heatmap, summary, top-5) per model, download, then (added later, so the API's first
# outputs kept their places) one difference view per pair and the localisation numbers
DOWNLOAD = 2 + 3 * len(DEFAULT_MODELS)  # the download's place among the outputs
N_OUT = DOWNLOAD + 1 + len(DIFFERENCES) + 1


@dataclass
class Session:
    """One visitor's page: the image last explained (bytes, never a file) and the last results."""

    upload_path: str | None = None  # the upload this image came from (deleted from disk already)
    upload_data: bytes | str | None = None
    results: dict[str, CamResult] = field(default_factory=dict)
    params: ExplainParams | None = None  # the last run's (for the download after an opacity change)
    view_boxes: dict[str, list[Box]] = field(default_factory=dict)  # per model: the example's boxes in its view
    generation: int = 0  # +1 for every run and every new image: a run whose image was replaced stops
    busy: bool = False  # a run is on


@dataclass(frozen=True)
class Outcome:
    """What the three columns show; ``values()`` is the order of the output components."""

    status: str = ""
    view: object = None
    columns: tuple = tuple((None, "", None) for _ in DEFAULT_MODELS)
    download: str | None = None
    differences: tuple = tuple(None for _ in DIFFERENCES)
    localisation: dict | None = None  # per model, for an example with object boxes

    def values(self) -> list:
        return [
            self.status,
            self.view,
            *[v for col in self.columns for v in col],
            self.download,
            *self.differences,
            self.localisation,
        ]


def new_image(session: Session | None) -> list:
    """The result components and the session for a new image: the last results no longer apply (and the
    opacity slider must not bring them back)."""
    session = session or Session()
    session.results, session.params = {}, None
    session.generation += 1  # a run still on stops before it shows anything more
    return [*Outcome(status="New image: press **Explain**.").values(), session]
