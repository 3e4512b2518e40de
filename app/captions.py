"""What the page says: the zoo selector, the label notice, each column's caption, the agreement line."""

from __future__ import annotations

import math

from dsnet.cam.localisation import Box, MapScore
from dsnet.cam.service import CamResult
from dsnet.zoo.loader import entry_status
from dsnet.zoo.manifest import LabelSet, Manifest


def zoo_label(manifest: Manifest, zoo: str) -> str:
    """The zoo selector's text: how many classes, which models it has, what downloads on first use."""
    entries = list(manifest.zoo(zoo).entries.values())
    n = len(manifest.labels(entries[0]).names) if entries else 0
    ready, download, none = [], [], []
    for e in entries:
        st = entry_status(zoo, e, manifest.path.parent)
        (
            ready if st.verified else download if e.unavailable is None and (e.sources.hub or e.sources.url) else none
        ).append(e.name)
    parts = [f"{zoo} ({n} classes)"]
    if ready:
        parts.append(", ".join(ready))
    if download:
        parts.append(f"{', '.join(download)} downloads on first use")
    if none:
        parts.append(f"no weights yet: {', '.join(none)}")
    return " · ".join(parts)


def label_notice(manifest: Manifest, zoo: str) -> str:
    """A visible line for a small label set: anything else is forced into one of its classes."""
    entries = list(manifest.zoo(zoo).entries.values())
    names = manifest.labels(entries[0]).names if entries else []
    if len(names) >= 1000 or not names:
        return f"These models know the {len(names)} ImageNet classes."
    return (
        f"⚠️ **These models know only {len(names)} classes:** {', '.join(names)}. "
        "A photo of anything else is still forced into one of them, often with high confidence."
    )


def localisation_line(score: MapScore | None) -> str:
    """One line for a map against the example's boxes (None: the crop left no box in the view)."""
    if score is None:
        return "the object's box is outside what the model sees"
    mark = "✓" if score.hit else "✗"
    if score.peaks > 1 and 0 < score.hit_share < 1:  # a plateau of equal maxima, partly in the box
        mark += f" ({100 * score.hit_share:.0f} % of its {score.peaks} tied maxima)"
    energy = "no mass" if math.isnan(score.energy) else f"{100 * score.energy:.0f} % of the map inside the box"
    return f"peak inside the box {mark} · {energy} (the box covers {100 * score.coverage:.0f} %)"


def localisation_numbers(scores: dict[str, MapScore | None], view_boxes: dict[str, list[Box]]) -> dict:
    """What the API returns for an example with boxes: per model, the boxes in its view and its map's numbers."""
    out = {}
    for model, s in scores.items():
        boxes = [[round(v, 1) for v in (b.x0, b.y0, b.x1, b.y1)] for b in view_boxes.get(model, [])]
        out[model] = {"boxes_in_view": boxes} | (
            {}
            if s is None
            else {
                "peak_in_box": s.hit,
                "peak_within_15px": s.hit_tolerant,
                "peak_in_box_ties_at_random": round(s.hit_share, 3),
                "energy_in_boxes": None if math.isnan(s.energy) else round(s.energy, 4),
                "box_coverage": round(s.coverage, 4),
            }
        )
    return out


def caption(
    r: CamResult, labels: LabelSet, true_wnid: str | None, score: MapScore | None = None, boxed: bool = False
) -> str:
    """A column's text: the class explained, right or wrong against the true class, the map against the
    example's box, time, method and device, the faithfulness numbers and the image's notes."""
    lines = [f"**{r.explained.name}** {100 * r.explained.probability:.1f}% (explained)"]
    if true_wnid in labels.wnids:
        true = labels.wnids.index(true_wnid)
        lines.append(
            f"✓ top-1 is the true class ({labels.names[true]})"
            if r.top5[0].index == true
            else f"✗ top-1 is {r.top5[0].name}; the true class is {labels.names[true]}"
        )
    if boxed:
        line = localisation_line(score)
        if true_wnid in labels.wnids and r.explained.index != labels.wnids.index(true_wnid):
            true_name = labels.names[labels.wnids.index(true_wnid)]
            line += f" — the box is the {true_name}'s, the map explains {r.explained.name}"
        lines.append(line)
    lines.append(f"{1000 * r.seconds:.0f} ms · {r.method} · {r.device}")
    if r.faithfulness:
        f = r.faithfulness
        lines.append(
            f"focus: top-10% mass {f.top10_mass:.2f} · entropy {f.entropy:.3f}  \n"
            f"faithfulness: confidence change {f.confidence_change:+.3f} · ROAD {f.road:+.3f}"
        )
    lines += [f"_{n}_" for n in r.notes]
    return "  \n".join(lines)


def agreement(results: list[CamResult], true_name: str | None) -> str:
    if not results:
        return ""
    said = {r.model: r.top5[0].name for r in results}
    if len(set(said.values())) == 1:
        text = f"{'All three models' if len(said) == 3 else 'The models'} say **{next(iter(said.values()))}**."
    else:
        text = "The models disagree: " + ", ".join(f"{m} says **{n}**" for m, n in said.items()) + "."
    if true_name:
        text += f" True class: **{true_name}**."
    return text


def zoo_class_names(manifest: Manifest, zoo: str) -> list[str]:
    """The zoo's class names (the class menu)."""
    entries = list(manifest.zoo(zoo).entries.values())
    return list(manifest.label_sets[entries[0].labels].names) if entries else []
