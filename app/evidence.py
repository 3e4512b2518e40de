"""The page's evidence section: the zoo's saved measurements as pictures and short tables.

Everything here is read from artifacts in ``docs/`` (written by the evidence command lines, see the
commands below); no model runs when the page loads. The files travel with a Space upload
(``FILES``: app/space.py's allow-list includes them). A missing file is said, not hidden.
"""

from __future__ import annotations

import json
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
LOCALISATION = DOCS / "localisation-imagenette.json"
LOCALISATION_PLOT = DOCS / "localisation-imagenette.png"
SANITY = DOCS / "sanity-imagenette.json"
SANITY_PLOT = DOCS / "sanity-imagenette.png"
SEEDS = DOCS / "seeds-imagenette.json"
FILES = tuple(
    p.relative_to(DOCS.parent).as_posix() for p in (LOCALISATION, LOCALISATION_PLOT, SANITY, SANITY_PLOT, SEEDS)
)
MODELS = ("resnet50", "dsnet50", "ds2net50")


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sanity_verdicts(path: Path = SANITY) -> dict[str, str]:
    """method -> its worst verdict over the models ("passes", "weak", "fails"), from the sanity artifact
    (``verdicts``: method -> model -> verdict, written by ``python -m dsnet.evidence.sanity``)."""
    order = ("passes", "weak", "fails")
    out = {}
    for method, per_model in ((_read(path) or {}).get("verdicts") or {}).items():
        seen = [v for v in (per_model.values() if isinstance(per_model, dict) else [per_model]) if v in order]
        if seen:
            out[method] = max(seen, key=order.index)
    return out


def method_label(method: str, summary: str, verdicts: dict[str, str] | None = None) -> str:
    """The CAM method menu's text, marked when the method failed the weight-randomisation check."""
    verdict = (sanity_verdicts() if verdicts is None else verdicts).get(method)
    mark = {
        "fails": " ⚠ fails the randomisation check: its maps barely depend on the weights",
        "weak": " ⚠ weak in the randomisation check",
    }.get(verdict or "", "")
    return f"{method} — {summary}{mark}"


def _pct(v: dict) -> str:
    return f"{100 * v['mean']:.0f} % [{100 * v['ci95'][0]:.0f}, {100 * v['ci95'][1]:.0f}]"


def localisation_table(data: dict, method: str = "gradcam") -> str:
    """Markdown: per model (and the two baselines) pointing, energy vs coverage, MaxBoxAccV2, for one method."""
    groups = data["groups"]
    rows = [
        "| map | pointing game | energy in the boxes (the boxes cover) | MaxBoxAccV2 |",
        "| --- | --- | --- | --- |",
    ]
    for name in [f"{method}/{m}" for m in MODELS] + ["-/centre", "-/flat"]:
        g = groups.get(name)
        if not g:
            continue
        label = name.split("/")[1] if not name.startswith("-/") else f"baseline: {name[2:]} map"
        point = _pct(g["pointing"]) if name != "-/flat" else "— (every pixel ties)"
        box = g["max_box_acc_v2"]
        rows.append(
            f"| {label} | {point} | {_pct(g['energy'])} ({100 * g['coverage']:.0f} %) | "
            f"{box['value']:.1f} [{box['ci95'][0]:.1f}, {box['ci95'][1]:.1f}] |"
        )
    tests = []
    for c in data.get("comparisons", []):
        if c["method"] == method and c["subset"] == "all":
            p, e = c["pointing"], c["energy"]
            tests.append(
                f"{c['b']} − {c['a']}: pointing {p['diff']:+.1f} points (McNemar p = {p['p_value']:.2g}), "
                f"map mass in the boxes {100 * e['diff']:+.1f} points (Wilcoxon p = {e['p_value']:.2g})"
            )
    return "\n".join(rows) + ("\n\nPaired, on the same images: " + "; ".join(tests) + "." if tests else "")


def evidence_markdown() -> str:
    """The section's text: what was measured, the tables, the commands that recompute them."""
    parts = []
    loc = _read(LOCALISATION)
    if loc:
        parts.append(
            f"**Is the map on the object?** {loc['images']} ILSVRC2012 validation images of the 10 classes "
            f"(never trained on), each explained for its true class, scored against its ground-truth boxes "
            f"carried into the model's view. *Pointing game*: the map's maximum lies in a box. *Energy*: the "
            f"share of the map's mass inside the boxes (a flat map scores the share of the view they cover). "
            f"*MaxBoxAccV2*: how often a box drawn around the map's hot region overlaps a true box (IoU "
            f"≥ 30/50/70 %, the best threshold), averaged. Grad-CAM, 95 % intervals:\n\n" + localisation_table(loc)
        )
    else:
        parts.append("_The localisation artifact (docs/localisation-imagenette.json) is missing._")
    seeds = _read(SEEDS)
    if seeds:
        acc = ", ".join(f"{m} {v['mean']:.2f} ± {v['sd']:.2f}" for m, v in seeds["models"].items())
        parts.append(
            f"**Accuracy over {len(seeds['seeds'])} training seeds** (Imagenette val top-1, %): {acc}. "
            f"{seeds.get('reading', '')}"
        )
    verdicts = sanity_verdicts()
    if verdicts:
        parts.append(
            "**Sanity check** (the weights randomised from the top layer down; a map that stays the same "
            "explains nothing): " + ", ".join(f"{m}: {v}" for m, v in sorted(verdicts.items())) + "."
        )
    parts.append(
        "Recompute: `python -m dsnet.evidence.localise --data <ilsvrc-val-boxes> --out "
        "docs/localisation-imagenette` · `python -m dsnet.evidence.sanity --data <ilsvrc-val-boxes> --json "
        "docs/sanity-imagenette.json` (docs/results.md explains every number)."
    )
    return "\n\n".join(parts)


def evidence_panel() -> None:
    """The section's components, inside the caller's Blocks context (pictures first, then the text)."""
    import gradio as gr

    pictures = [(p, c) for p, c in ((LOCALISATION_PLOT, "localisation"), (SANITY_PLOT, "sanity check")) if p.is_file()]
    if pictures:
        with gr.Row():
            for path, caption in pictures:
                gr.Image(str(path), label=caption, interactive=False, buttons=["fullscreen"], height=360)
    gr.Markdown(evidence_markdown(), elem_id="evidence-text")
