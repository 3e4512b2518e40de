"""The results tables of README and docs/, rendered from the saved artifacts in docs/.

``python -m dsnet.evidence.report`` rewrites every table between its markers, in place: writing the
tracked README.md and docs/*.md of ``--root`` (this repository) is this command's job, and the only
files it writes::

    <!-- table:NAME -->
    ... (rendered: the table, then a line naming its artifact, the command that wrote it, its commit
    and date) ...
    <!-- /table:NAME -->

``--check`` rewrites nothing: it prints a unified diff and exits 1 when a file differs from the
rendering (``tests/test_docs.py`` runs it). Only the text between markers is generated; the prose
around a table is written by hand. The rendering is a pure function of the artifacts (JSON, CSV and
text files under docs/, and ``checkpoints/manifest.json``): no clock, no git, no model.

Every table name in ``TABLES`` must appear in at least one of the files (README.md and docs/*.md), and
every marker must name a table of ``TABLES``. A table may appear in several files.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

from dsnet.evidence.cli import refused

ROOT = Path(__file__).resolve().parents[2]
TRIO = ("resnet50", "dsnet50", "ds2net50")
NAMES = {"resnet50": "ResNet50", "dsnet50": "DSNet50", "ds2net50": "DS2Net50"}
# Commands recorded before the package was split into layers name the modules' old paths.
MOVED = {
    "dsnet.evaluate": "dsnet.evidence.evaluate",
    "dsnet.figure": "dsnet.evidence.figure",
    "dsnet.explain": "dsnet.evidence.explain",
    "dsnet.train": "dsnet.evidence.train",
    "dsnet.curves": "dsnet.evidence.curves",
    "dsnet.seedstudy": "dsnet.evidence.seedstudy",
    "dsnet.seedreport": "dsnet.evidence.seedreport",
    "dsnet.space": "app.space",
}
MARKER = re.compile(r"<!-- table:([\w-]+) -->\n(.*?)<!-- /table:\1 -->", re.S)
OPENING = re.compile(r"<!-- (/?)table:([\w-]+) -->")

TABLES: dict[str, Callable[[Path], str]] = {}


class ReportError(Exception):
    """A marker, an artifact or a table that cannot be rendered."""


def table(name: str):
    def register(fn: Callable[[Path], str]) -> Callable[[Path], str]:
        TABLES[name] = fn
        return fn

    return register


# ---------------------------------------------------------------- reading artifacts, formatting


def load(root: Path, rel: str) -> dict:
    path = root / rel
    if not path.is_file():
        raise ReportError(f"missing artifact {rel}")
    return json.loads(path.read_text())


def rows_of_csv(root: Path, rel: str) -> list[dict]:
    with open(root / rel, newline="") as f:
        return list(csv.DictReader(f))


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def p(value: float) -> str:
    return f"{value:.2g}"


def bound(value: float) -> str:
    """An upper bound with two significant digits, rounded up: 1.2368e-06 -> '1.3e-06'."""
    exponent = math.floor(math.log10(value)) if value > 0 else 0
    step = 10.0 ** (exponent - 1)
    return f"{math.ceil(round(value / step, 9)) * step:.1e}"


def interval(c: dict, digits: int = 2) -> str:
    return f"{c['diff']:+.{digits}f} [{c['ci_low']:+.{digits}f}, {c['ci_high']:+.{digits}f}]"


def current_command(command: str) -> tuple[str, str]:
    """The command with today's module paths, and a note naming the recorded path when it moved."""
    moved = []

    def swap(m: re.Match) -> str:
        moved.append(m.group(1))
        return "-m " + MOVED[m.group(1)]

    pattern = r"-m (" + "|".join(re.escape(k) for k in sorted(MOVED, key=len, reverse=True)) + r")(?![\w.])"
    new = re.sub(pattern, swap, command)
    note = f" (recorded as `{moved[0]}`)" if moved else ""
    return new, note


def date_of(art: dict) -> str:
    """'2026-11-30 01:43 UTC' for every date format the artifacts use."""
    date = str(art.get("date", ""))
    m = re.fullmatch(r"(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}):\d{2}(?:\.\d+)?\+00:00", date)
    return f"{m.group(1)} {m.group(2)} UTC" if m else date


def commit_of(art: dict) -> str:
    commit = str(art.get("commit", ""))[:7]
    dirty = art.get("dirty", art.get("local_changes"))
    return f"commit {commit}" + (" with uncommitted changes" if dirty else "")


def source(rel: str, art: dict, command: str | None = None, brief: bool = False) -> str:
    """One artifact's provenance: its path, the command that wrote it, its commit and date.
    ``brief`` (README) leaves the commit and date to the file."""
    cmd, note = current_command(command if command is not None else art["command"])
    if brief:
        return f"`{rel}`, written by `{cmd}`"
    return f"`{rel}`, written by `{cmd}`{note}; {commit_of(art)}, {date_of(art)}"


def footer(*sources: str) -> str:
    return "Source: " + "; and ".join(sources) + "."


def result(art: dict, model: str, crop: int, run: str | None = None) -> dict:
    return next(
        r for r in art["models"] if r["model"] == model and r["crop"] == crop and (run is None or r["run"] == run)
    )


def comparison(
    art: dict, kind: str, b_model: str, crop: int, a_model: str | None = None, run: str | None = None
) -> dict:
    for c in art["comparisons"]:
        if (
            c["kind"] == kind
            and c["b"] == {"model": b_model, "crop": crop}
            and (run is None or c["run"] == run)
            and (a_model is None or c["a"]["model"] == a_model)
        ):
            return c
    raise ReportError(f"no {kind} comparison for {b_model} at {crop} px")


def manifest_models(root: Path) -> dict:
    return load(root, "checkpoints/manifest.json")["zoos"]["imagenette"]["models"]


# ---------------------------------------------------------------- README

SEEDS = "docs/seeds-imagenette.json"
SEEDS_EVAL = "docs/evaluate-imagenette-seeds.json"


def seed_summary_rows(root: Path) -> list[list[str]]:
    seeds, ev = load(root, SEEDS), load(root, SEEDS_EVAL)
    pairs = {(q["a"], q["b"]): q for q in seeds["pairs"]}
    rows = []
    for m in TRIO:
        s = seeds["models"][m]
        q = pairs.get(("resnet50", m))
        rows.append(
            [
                NAMES[m],
                f"{s['mean']:.2f} ± {s['sd']:.2f}",
                "—" if q is None else f"{q['diff_mean']:+.2f} (sd {q['diff_sd']:.2f})",
                "—" if q is None else f"{q['seeds_b_better']} of {q['seeds']}",
                f"{result(ev, m, 160, 'seed0')['top1']:.2f}",
            ]
        )
    return rows


SEED_HEADER = [
    "model",
    "top-1 (%) over {n} seeds, mean ± sd",
    "minus ResNet50 (points), mean over seeds",
    "seeds ahead of ResNet50",
    "shipped zoo top-1 (%)",
]


@table("readme-results")
def readme_results(root: Path) -> str:
    seeds, ev = load(root, SEEDS), load(root, SEEDS_EVAL)
    header = [h.format(n=len(seeds["seeds"])) for h in SEED_HEADER]
    return (
        markdown(header, seed_summary_rows(root))
        + "\n\n"
        + footer(source(SEEDS, seeds, brief=True), source(SEEDS_EVAL, ev, brief=True))
    )


@table("seeds-reading")
def seeds_reading(root: Path) -> str:
    seeds = load(root, SEEDS)
    return f"In the words of `{SEEDS}` (its `reading`, written by the seed report): *{seeds['reading']}*"


# ---------------------------------------------------------------- docs/results.md: accuracy

EXPORT = "docs/evaluate-imagenette-export.json"
EVAL = "docs/evaluate-imagenette.json"
SIZES = "docs/test-size-imagenette.json"
OLD_ZOO = "docs/zoo-c27b5ed-imagenette.json"


@table("zoo-accuracy")
def zoo_accuracy(root: Path) -> str:
    export, models = load(root, EXPORT), manifest_models(root)
    rows = []
    for m in TRIO:
        at160, at128 = result(export, m, 160), result(export, m, 128)
        rows.append(
            [
                m,
                f"{at160['top1']:.2f}",
                f"{at160['top5']:.2f}",
                f"{at128['top1']:.2f}",
                f"{at128['top5']:.2f}",
                f"{models[m]['provenance']['train_seconds'] / 60:.1f} min",
            ]
        )
    header = [
        "model",
        "top-1 (%), 160 px",
        "top-5 (%), 160 px",
        "top-1 (%), 128 px",
        "top-5 (%), 128 px",
        "training time (one H200 shared by the three)",
    ]
    return (
        markdown(header, rows)
        + "\n\n"
        + footer(
            source(EXPORT, export),
            "`checkpoints/manifest.json` (training time: each entry's `provenance.train_seconds`)",
        )
    )


@table("zoo-paired")
def zoo_paired(root: Path) -> str:
    export = load(root, EXPORT)
    rows = []
    for m in TRIO[1:]:
        c128, c160 = comparison(export, "model", m, 128), comparison(export, "model", m, 160)
        rows.append([m, interval(c128), p(c128["p_value"]), interval(c160), p(c160["p_value"])])
    header = [
        "vs resnet50",
        "128 px: points [95 % interval]",
        "McNemar p",
        "160 px: points [95 % interval]",
        "McNemar p",
    ]
    return markdown(header, rows) + "\n\n" + footer(source(EXPORT, export))


@table("earlier-cpu-zoo")
def earlier_cpu_zoo(root: Path) -> str:
    old = load(root, OLD_ZOO)
    rows = [
        [
            m,
            f"{v['top1']:.2f}",
            f"{v['top5']:.2f}",
            str(v["epochs"]),
            str(v["seed"]),
            v["device"],
            str(v["train_seconds"]),
        ]
        for m, v in ((m, old["models"][m]) for m in TRIO)
    ]
    header = ["model", "top-1 (%)", "top-5 (%)", "epochs", "seed", "device", "train seconds"]
    cmd = f"{old['source']}` (the metrics of that manifest, nothing else"
    return (
        markdown(header, rows)
        + "\n\n"
        + footer(f"`{OLD_ZOO}`, copied from `{cmd}); commit {old['commit']}, {old['date']}")
    )


@table("test-size")
def test_size(root: Path) -> str:
    sizes = load(root, SIZES)
    crops = sizes["crops"]
    rows = []
    for m in TRIO:
        cells = [m, f"{result(sizes, m, crops[0])['top1']:.2f}"]
        for crop in crops[1:]:
            c = comparison(sizes, "size", m, crop)
            cells.append(f"{result(sizes, m, crop)['top1']:.2f} ({interval(c)}, p = {p(c['p_value'])})")
        rows.append(cells)
    grid = {r["crop"]: r["crop"] // 32 for r in sizes["models"]}
    header = ["model"] + [f"{c} px ({grid[c]}×{grid[c]})" for c in crops]
    return markdown(header, rows) + "\n\n" + footer(source(SIZES, sizes))


def chosen_test_size(sizes: dict) -> int:
    """The rule: the largest size at which no model's top-1 is below its own top-1 at the first size."""
    first = sizes["crops"][0]
    return max(
        c for c in sizes["crops"] if all(result(sizes, m, c)["top1"] >= result(sizes, m, first)["top1"] for m in TRIO)
    )


@table("test-size-rule")
def test_size_rule(root: Path) -> str:
    sizes, export = load(root, SIZES), load(root, EXPORT)
    chosen = chosen_test_size(sizes)
    losers = {
        c: [m for m in TRIO if result(sizes, m, c)["top1"] < result(sizes, m, sizes["crops"][0])["top1"]]
        for c in sizes["crops"]
        if c > chosen
    }
    lost = "; ".join(
        f"at {c} px {', '.join(NAMES[m] for m in ms)} {'loses' if len(ms) == 1 else 'lose'}" for c, ms in losers.items()
    )
    c = comparison(export, "size", "dsnet50", chosen)
    return (
        f"By the rule the zoo's test size is **{chosen} px** (resize {result(sizes, 'resnet50', chosen)['resize']}): "
        f"no model loses there; {lost}. Measured the way export measures (`{EXPORT}`), DSNet50 at {chosen} px "
        f"is {c['mean_b']:.2f} against {c['mean_a']:.2f} at {sizes['crops'][0]} px ({interval(c)}, "
        f"McNemar p = {p(c['p_value'])})."
    )


@table("evaluation")
def evaluation(root: Path) -> str:
    ev = load(root, EVAL)
    rows = [
        [
            r["model"],
            r["run"],
            str(r["crop"]),
            f"{r['top1']:.2f}",
            f"{r['top5']:.2f}",
            f"{r['params_m']:.3f}",
            f"{r['gmacs']:.3f}",
            f"{r['train_memory_mb']:.1f} ({r['train_memory_mb'] / ev['models'][0]['train_memory_mb']:.2f}×)",
        ]
        for r in ev["models"]
    ]
    header = ["architecture", "run", "crop", "top-1 (%)", "top-5 (%)", "params (M)", "GMACs", "train mem (MB)"]
    paired = [
        [
            f"{c['b']['model']} − {c['a']['model']} ({c['b']['crop']} px)",
            interval(c),
            p(c["p_value"]),
            str(c["only_a_right"]),
            str(c["only_b_right"]),
        ]
        for c in ev["comparisons"]
    ]
    images = {r["images"] for r in ev["models"]}
    return (
        markdown(header, rows)
        + "\n\n"
        + markdown(
            ["paired", "points [95 % interval]", "McNemar p", "only the first right", "only the second right"], paired
        )
        + "\n\n"
        + footer(source(EVAL, ev) + f"; {', '.join(str(i) for i in sorted(images))} images")
    )


@table("pipelines")
def pipelines(root: Path) -> str:
    ev, export = load(root, EVAL), load(root, EXPORT)
    crop = ev["crops"][0]
    rows = []
    for m in TRIO:
        a, e = result(ev, m, crop)["top1"], result(export, m, crop)["top1"]
        rows.append([m, f"{a:.2f}", f"{e:.2f}", f"{e - a:+.2f}"])
    for art, label in ((ev, "app"), (export, "export")):
        for c in art["comparisons"]:
            if c["kind"] == "model" and c["b"]["crop"] == crop and c["b"]["model"] == "dsnet50":
                rows.append([f"dsnet50 − resnet50 ({label})", "", "", f"{interval(c)}, p = {p(c['p_value'])}"])
    header = [
        "model",
        f"top-1 (%), app's preprocessing (PIL resize), {crop} px",
        f"top-1 (%), export's (torchvision antialiased resize), {crop} px",
        "export − app (points)",
    ]
    return markdown(header, rows) + "\n\n" + footer(source(EVAL, ev), source(EXPORT, export))


# ---------------------------------------------------------------- docs/results.md: the seed study

STUDY = "docs/seed-study-h200.json"


@table("seeds-top1")
def seeds_top1(root: Path) -> str:
    seeds, ev = load(root, SEEDS), load(root, SEEDS_EVAL)
    header = (
        ["model"] + [f"seed {s}" for s in seeds["seeds"]] + ["mean", "sd", "shipped zoo (seed 0, DataLoader pipeline)"]
    )
    rows = [
        [m]
        + [f"{t:.2f}" for t in seeds["models"][m]["top1"]]
        + [
            f"{seeds['models'][m]['mean']:.2f}",
            f"{seeds['models'][m]['sd']:.2f}",
            f"{result(ev, m, 160, 'seed0')['top1']:.2f}",
        ]
        for m in TRIO
    ]
    return (
        markdown(header, rows)
        + "\n\n"
        + footer(
            source(SEEDS, seeds) + f"; top-1 on the {seeds['images']} images of the full Imagenette val",
            source(SEEDS_EVAL, ev),
        )
    )


@table("seeds-pairs")
def seeds_pairs(root: Path) -> str:
    seeds = load(root, SEEDS)
    header = (
        ["b − a"]
        + [f"seed {s}: points (McNemar p)" for s in seeds["seeds"]]
        + ["mean ± sd", "t 95 % interval", "seeds b ahead", "sign test p", "McNemar p < 0.05", "order holds"]
    )
    rows = []
    for q in seeds["pairs"]:
        rows.append(
            [f"{q['b']} − {q['a']}"]
            + [f"{s['diff']:+.2f} ({p(s['p_value'])})" for s in q["per_seed"]]
            + [
                f"{q['diff_mean']:+.2f} ± {q['diff_sd']:.2f}",
                f"[{q['diff_t95'][0]:+.2f}, {q['diff_t95'][1]:+.2f}]",
                f"{q['seeds_b_better']} of {q['seeds']}",
                p(q["sign_test_p"]),
                f"{q['mcnemar_p_below_0.05']} of {q['seeds']}",
                "yes" if q["ordering_holds"] else "no",
            ]
        )
    return markdown(header, rows) + "\n\n" + footer(source(SEEDS, seeds))


@table("seeds-shipped")
def seeds_shipped(root: Path) -> str:
    seeds, ev = load(root, SEEDS), load(root, SEEDS_EVAL)
    first = seeds["seeds"][0]
    run = f"seed{first}-gpu"
    rows = []
    for m in TRIO:
        shipped, study = result(ev, m, 160, "seed0")["top1"], result(ev, m, 160, run)["top1"]
        c = seeds["train_loss_curves"][m]
        rows.append(
            [
                m,
                f"{shipped:.2f}",
                f"{study:.2f}",
                f"{study - shipped:+.2f}",
                f"{c['max_abs_diff_vs_shipped']:.3f}",
                f"{c['final_vs_shipped'][0]:.3f} / {c['final_vs_shipped'][1]:.3f}",
            ]
        )
    header = [
        "model",
        "shipped top-1 (%)",
        f"study seed {first} top-1 (%)",
        "study − shipped (points)",
        "train loss: largest per-epoch difference",
        "final train loss, shipped / study",
    ]
    return markdown(header, rows) + "\n\n" + footer(source(SEEDS_EVAL, ev), source(SEEDS, seeds))


@table("seed-study-device")
def seed_study_device(root: Path) -> str:
    study = load(root, STUDY)
    runs = study["runs"]
    header = [
        "run",
        "epochs",
        "CUDA graph",
        "train seconds",
        "last-epoch val top-1 (%), 1000 images",
        "fp16-rounded top-1 (%)",
        "predictions changed by fp16",
    ]
    rows = [
        [
            name,
            str(r["epochs"]),
            "yes" if r["graph"] else f"no ({r['capture_error']})",
            str(r["train_seconds"]),
            f"{r['rounding']['top1_trained']:.1f}",
            f"{r['rounding']['top1_rounded']:.1f}",
            f"{r['rounding']['predictions_changed']} of {r['rounding']['val_images']}",
        ]
        for name, r in runs.items()
    ]
    changed = sum(r["rounding"]["predictions_changed"] for r in runs.values())
    seen = sum(r["rounding"]["val_images"] for r in runs.values())
    cmd, note = current_command(study["command"])
    text = (
        f"{len(runs)} runs (seeds {', '.join(str(s) for s in study['seeds_asked'])} × {len(TRIO)} models) in one "
        f"process on one {study['device']} (torch {study['torch']}, {study['amp']} autocast), "
        f"{study['seconds']} s in all: {study['setup_seconds']} s of set-up, a first epoch of "
        f"{study['first_epoch_seconds']} s, budget {study['budget']:.0f} s, "
        f"runs dropped: {', '.join(study['dropped']) or 'none'}. The returned weights are fp16; rounding them "
        f"changed {changed} of {seen} predictions on the per-epoch val (the first 100 images of each class)."
    )
    return (
        text
        + "\n\n"
        + markdown(header, rows)
        + "\n\n"
        + footer(
            f"`{STUDY}`, written by `{cmd}`{note} (the device's copy of `study.json`; the study records "
            f"no commit or date: its run folders' manifests and `{SEEDS}` do)"
        )
    )


# ---------------------------------------------------------------- docs/results.md: focus and faithfulness

FOCUS = "docs/focus-imagenette.summary.json"
FOCUS_50 = "docs/focus-imagenette-50.summary.json"
TRIAL = "docs/focus-imagenette-trial10.summary.json"
FOCUS_SIZES = (128, 160, 192, 224)
METRICS = ("top10_mass", "entropy", "confidence_change", "road")
PAIRED = (("top1 (points)", 2), ("top10_mass", 3), ("entropy", 3), ("confidence_change", 3), ("road", 3))


def focus_size(size: int) -> str:
    return f"docs/focus-imagenette-size{size}.summary.json"


def paired_focus(summary: dict, m: str) -> list[str]:
    cells = []
    for metric, digits in PAIRED:
        c = next(c for c in summary["comparisons"] if c["b"] == m and c["metric"] == metric)
        cells.append(f"{interval(c, digits)} p = {p(c['p_value'])}")
    return cells


@table("focus-models")
def focus_models(root: Path) -> str:
    s = load(root, FOCUS)
    header = [
        "model",
        f"top-1 on these {s['images']} (%)",
        "top10_mass ↑",
        "entropy ↓",
        "confidence_change ↑",
        "ROAD ↑",
        "most focused map",
    ]
    rows = [
        [r["model"], f"{r['top1_accuracy']:.1f}"]
        + [f"{r[k]['mean']:.3f} ± {r[k]['ci95_t']:.3f}" for k in METRICS]
        + [f"{100 * r['most_focused']:.0f} %"]
        for r in s["models"]
    ]
    return markdown(header, rows) + "\n\n" + footer(source(FOCUS, s))


def paired_focus_table(root: Path, artifact: str, count: bool = False) -> str:
    s = load(root, artifact)
    header = ["model − resnet50", "top-1 (points)", "top10_mass", "entropy", "confidence_change", "ROAD"]
    rows = [[m] + paired_focus(s, m) for m in TRIO[1:]]
    return markdown(header, rows) + "\n\n" + footer(source(artifact, s) + (f"; {s['images']} images" if count else ""))


@table("focus-paired")
def focus_paired(root: Path) -> str:
    return paired_focus_table(root, FOCUS)


@table("focus-50")
def focus_50(root: Path) -> str:
    return paired_focus_table(root, FOCUS_50, count=True)


@table("focus-sizes")
def focus_sizes(root: Path) -> str:
    header = ["size, model", "top-1 (%)", "top10_mass ↑", "entropy ↓", "confidence_change ↑", "ROAD ↑"]
    rows, sources = [], []
    for size in FOCUS_SIZES:
        s = load(root, focus_size(size))
        for r in s["models"]:
            cells = [f"{size} px, {r['model']}"]
            for key, (metric, _) in zip(("top1_accuracy",) + METRICS, PAIRED):
                digits = 1 if key == "top1_accuracy" else 3
                cell = f"{(r[key] if key == 'top1_accuracy' else r[key]['mean']):.{digits}f}"
                if r["model"] != s["baseline"]:
                    c = next(c for c in s["comparisons"] if c["b"] == r["model"] and c["metric"] == metric)
                    cell += f" ({c['diff']:+.{digits}f}, p = {p(c['p_value'])})"
                cells.append(cell)
            rows.append(cells)
        sources.append(source(focus_size(size), s))
    return markdown(header, rows) + "\n\n" + footer(*sources)


@table("focus-runs")
def focus_runs(root: Path) -> str:
    header = [
        "run",
        "images",
        "test size (resize / crop)",
        "seconds",
        "seconds per image (three models, ROAD included)",
    ]
    rows = []
    for rel, _what in [(TRIAL, "trial"), (FOCUS, "main")] + [(focus_size(s), f"size {s}") for s in FOCUS_SIZES]:
        s = load(root, rel)
        pre = s["preprocessing"]["resnet50"]
        rows.append(
            [
                f"`{rel}`",
                str(s["images"]),
                f"{pre['resize']} / {pre['crop']}",
                str(s["seconds"]),
                str(s["seconds_per_image"]),
            ]
        )
    trial, val = load(root, TRIAL), load(root, EVAL)
    full = {r["images"] for r in val["models"]}.pop()
    rate = trial["seconds_per_image"]
    main_images = load(root, FOCUS)["images"]
    return (
        markdown(header, rows)
        + "\n\n"
        + f"At the trial's rate, {main_images} images take about {main_images * rate / 60:.0f} min and the whole "
        f"val ({full} images) about {full * rate / 3600:.1f} h.\n\n"
        + footer(
            source(TRIAL, trial),
            "the other rows' artifacts (their commands, commits and dates are under the tables above); "
            "other jobs shared the two cores, so the times are upper bounds",
        )
    )


@table("focus-repeat")
def focus_repeat(root: Path) -> str:
    """The size runs against the earlier runs on the images they share: the largest per-image difference."""
    header = ["new run", "earlier run", "images shared"] + [f"{k}: largest difference" for k in METRICS]
    rows = []
    for new, old in (
        ("docs/focus-imagenette-size128.csv", "docs/focus-imagenette-50.csv"),
        ("docs/focus-imagenette-size160.csv", "docs/focus-imagenette.csv"),
    ):
        a = {(r["image"], r["model"]): r for r in rows_of_csv(root, new)}
        b = {(r["image"], r["model"]): r for r in rows_of_csv(root, old)}
        shared = sorted(set(a) & set(b))
        worst = [max(abs(float(a[k][m]) - float(b[k][m])) for k in shared) for m in METRICS]
        rows.append([f"`{new}`", f"`{old}`", str(len({k[0] for k in shared}))] + [f"{w:.2g}" for w in worst])
    return markdown(header, rows) + "\n\n" + footer("the per-image CSVs named in each row")


# ---------------------------------------------------------------- docs/training.md


@table("fixres-estimate")
def fixres_estimate(root: Path) -> str:
    """Training times scaled from measured ones (an estimate: seconds per epoch × epochs × pixels)."""
    models, old = manifest_models(root), load(root, OLD_ZOO)
    header = [
        "model",
        "GPU: 60 epochs at 112 px, measured (s)",
        "GPU: 5 epochs at 224 px, estimate (s)",
        f"CPU: {old['models']['resnet50']['epochs']} epochs at 112 px, measured (s)",
        "CPU: 60 epochs at 112 px, estimate (h)",
        "CPU: 5 epochs at 224 px, estimate (h)",
    ]
    rows, cpu60, cpu5 = [], [], []
    for m in TRIO:
        gpu, cpu = models[m]["provenance"], old["models"][m]
        per_gpu = gpu["train_seconds"] / gpu["epochs"]
        per_cpu = cpu["train_seconds"] / cpu["epochs"]
        cpu60.append(per_cpu * 60 / 3600)
        cpu5.append(per_cpu * 5 * 4 / 3600)
        rows.append(
            [
                m,
                str(gpu["train_seconds"]),
                f"{per_gpu * 5 * 4:.0f}",
                str(cpu["train_seconds"]),
                f"{cpu60[-1]:.1f}",
                f"{cpu5[-1]:.1f}",
            ]
        )
    rows.append(
        [
            "the three, side by side / one after the other",
            "",
            "",
            "",
            f"{max(cpu60):.1f} / {sum(cpu60):.1f}",
            f"{max(cpu5):.1f} / {sum(cpu5):.1f}",
        ]
    )
    return (
        markdown(header, rows)
        + "\n\n"
        + footer(
            "`checkpoints/manifest.json` (`provenance.train_seconds` and `epochs` of the shipped zoo)",
            f"`{OLD_ZOO}` (the earlier CPU runs); the estimates scale seconds per epoch by the epochs and, "
            "at 224 px, by 4 (four times the pixels of 112 px)",
        )
    )


# ---------------------------------------------------------------- docs/benchmarks.md

GPU_STEP = "docs/gpu/train-step-fp32-h200.txt"
GPU_SERVICE = "docs/gpu-service-h200.json"
CLI_HELP = "docs/cli-help.json"
STARTUP = "docs/startup.json"
AUGMENT = "docs/augment-cpu.json"


def parse_models_output(text: str) -> dict:
    """benchmarks/models.py's printed table: its header line, the rows, the paper's ratios."""
    lines = text.splitlines()
    out = {"settings": lines[0], "rows": [], "paper": {}}
    row = re.compile(
        r"^(?P<measure>[a-z][\w ,]+?)\s{2,}(?P<r>\S+)\s+(?P<d>\S+)\s+(?P<d2>\S+)\s+dsnet50 (?P<rd>[\d.]+)"
        r"(?: \[(?P<iqd>[\d.-]+)\])?\s+ds2net50 (?P<rd2>[\d.]+)(?: \[(?P<iqd2>[\d.-]+)\])?$"
    )
    paper = re.compile(r"^(\w+): training time ([\d.]+)x \(paper ([\d.]+)x\), memory ([\d.]+)x \(paper ([\d.]+)x\)$")
    for line in lines[1:]:
        if m := row.match(line):
            out["rows"].append(m.groupdict())
        elif m := paper.match(line):
            out["paper"][m.group(1)] = {"time": m.group(3), "memory": m.group(5)}
    if not out["rows"]:
        raise ReportError(f"{GPU_STEP}: no measurement rows")
    return out


@table("gpu-train-step")
def gpu_train_step(root: Path) -> str:
    path = root / GPU_STEP
    if not path.is_file():
        raise ReportError(f"missing artifact {GPU_STEP}")
    run = parse_models_output(path.read_text())
    header = [
        "measure",
        "resnet50",
        "dsnet50",
        "ds2net50",
        "DSNet50 ratio [IQR]",
        "DS2Net50 ratio [IQR]",
        "paper's ratios (Table 9)",
    ]
    rows = []
    for r in run["rows"]:
        kind = "memory" if "memory" in r["measure"] else "time"
        paper = " / ".join(run["paper"][m][kind] for m in TRIO[1:] if m in run["paper"])
        rows.append(
            [
                r["measure"],
                r["r"],
                r["d"],
                r["d2"],
                r["rd"] + (f" [{r['iqd']}]" if r["iqd"] else ""),
                r["rd2"] + (f" [{r['iqd2']}]" if r["iqd2"] else ""),
                paper,
            ]
        )
    return (
        markdown(header, rows)
        + "\n\n"
        + footer(
            f"`{GPU_STEP}`, the output of `benchmarks/models.py` on the device (its settings line: "
            f'"{run["settings"]}"; the file records no command, commit or date)'
        )
    )


@table("gpu-service")
def gpu_service(root: Path) -> str:
    d = load(root, GPU_SERVICE)
    cases = d["agreement"]["cases"]
    worst = {
        mode: {k: max(c[mode][k] for c in cases.values()) for k in ("top5_prob_max_abs_diff", "cam_max_abs_diff")}
        for mode in ("fp32", "tf32")
    }
    same = sum(all(c[mode]["top5_equal"] for mode in ("fp32", "tf32")) for c in cases.values())
    sp, app = d["speed"], d["app"]
    med = sp["median_s"]
    rows = [
        [
            f"CPU vs CUDA, {len(cases)} cases: the {' and '.join(sorted({k.split('/')[0] for k in cases}))} sets' "
            f"{', '.join(sorted({k.split('/')[1] for k in cases}, key=TRIO.index))}; GradCAM of the CPU's top-1",
            f"top-5 identical in {same} of {len(cases)} cases; fp32: probabilities within "
            f"{bound(worst['fp32']['top5_prob_max_abs_diff'])}, "
            f"maps within {bound(worst['fp32']['cam_max_abs_diff'])}; as served (TF32 convolutions): "
            f"probabilities within "
            f"{bound(worst['tf32']['top5_prob_max_abs_diff'])}, maps within {bound(worst['tf32']['cam_max_abs_diff'])}",
        ],
        [
            "explain / floor (three plain forwards), batch 1, full width, 224 px",
            f"{1000 * med['service: explain (GradCAM)']:.1f} / {1000 * med['floor: 3 inference forwards']:.1f} ms = "
            f"**{sp['service_over_floor']:.2f}**",
        ],
        [
            "stock pytorch-grad-cam / service",
            f"{1000 * med['stock GradCAM recipe']:.1f} / {1000 * med['service: explain (GradCAM)']:.1f} ms = "
            f"**{sp['stock_over_service']:.2f}×**",
        ],
        ["AblationCAM / GradCAM, service", f"{sp['ablation_over_gradcam']:.2f}×"],
        [
            "`python app.py` on the GPU machine",
            f"served in {app['seconds_to_serve']} s; one `/explain` request through gradio_client in "
            f"{app['request_seconds']:.1f} s (the first request: models loaded and verified in it); every column's "
            f"caption says `cuda`: {'yes' if all(app['caption_names_device']) else 'no'}",
        ],
    ]
    cmd = "python benchmarks/cuda_service.py " + " ".join(d["argv"])
    return (
        markdown(["check", "result"], rows)
        + "\n\n"
        + footer(
            f"`{GPU_SERVICE}` ({d['gpu']}, torch {d['torch']}, {sp['rounds']} rounds), written by `{cmd}`; "
            f"commit {d['commit'][:7]} as recorded ({d['commit_note']}), {date_of(d)}"
        )
    )


@table("cli-help")
def cli_help(root: Path) -> str:
    d = load(root, CLI_HELP)
    rows = [
        [f"`{name} --help`", f"{r['median_seconds']:.2f}", f"{r['over_torch_import']:.2f}"]
        for name, r in d["commands"].items()
    ]
    rows.append(["`import torch`", f"{d['import_torch_seconds']:.2f}", "1.00"])
    return (
        markdown(["command", "median seconds", "× `import torch`"], rows)
        + "\n\n"
        + footer(source(CLI_HELP, d) + f"; median of {d['runs']} fresh processes on {d['cpus']} cores")
    )


@table("startup")
def startup(root: Path) -> str:
    d = load(root, STARTUP)
    first = d["first_use"]
    each = ", ".join(f"{r['seconds']:.1f}" for r in d["runs"])
    rows = [
        [
            "`python app.py` until `GET /` answers 200",
            f"{d['median_seconds']:.1f} s (median of {len(d['runs'])}; runs {each} s)",
        ],
        [
            "resident memory then",
            f"{min(r['rss_mb'] for r in d['runs']):.0f}–{max(r['rss_mb'] for r in d['runs']):.0f} MB",
        ],
        ["machine load at the end (1 min)", f"{d['loadavg_1min_at_end']}"],
        [
            f"first use: importing, then loading and SHA-verifying the {len(first['models'])} "
            f"{', '.join(first['models'])} "
            f"models ({first['device']}, fresh process)",
            f"{first['import_seconds']:.2f} s + {first['load_seconds']:.2f} s",
        ],
    ]
    return markdown(["measure", "value"], rows) + "\n\n" + footer(source(STARTUP, d) + f"; {d['cpus']} cores")


@table("augment-cpu")
def augment_cpu(root: Path) -> str:
    d = load(root, AUGMENT)
    rows = [
        [
            "per image (torchvision, the DataLoader path)",
            f"{d['per_image']['median_seconds']:.3f}",
            str(d["per_image"]["images_per_second"]),
        ],
        [
            "batched (`dsnet.data.augment`, the seed study's path)",
            f"{d['batched']['median_seconds']:.3f}",
            str(d["batched"]["images_per_second"]),
        ],
    ]
    return (
        markdown(
            [
                f"augmenting {d['images']} images, batch {d['batch']}, {d['threads']} threads",
                "median seconds",
                "images per second",
            ],
            rows,
        )
        + "\n\n"
        + f"Batched over per-image speed: **{d['batched_over_per_image_speed']}×** on the CPU.\n\n"
        + footer(source(AUGMENT, d) + f"; torch {d['torch']}, median of {d['rounds']} rounds")
    )


# ---------------------------------------------------------------- docs/security.md

ABUSE = "docs/abuse.json"
SECURITY = "docs/security.json"
RELIABILITY = "docs/reliability.json"


@table("security-measured")
def security_measured(root: Path) -> str:
    d = load(root, SECURITY)
    v = d["values"]
    flood = v["one_client_flood"]
    rows = [
        ["server memory growth while refusing the oversized bodies", f"{v['refused_body_memory_mb']} MB"],
        [
            "one client's simultaneous ScoreCAM requests",
            f"{flood['sent']} sent, {flood['accepted']} accepted, {flood['refused_429']} refused with 429; "
            f"another client served meanwhile: {'yes' if flood['other_client_served'] else 'no'}",
        ],
    ]
    return markdown(["measured", "value"], rows) + "\n\n" + footer(source(SECURITY, d))


@table("abuse-measured")
def abuse_measured(root: Path) -> str:
    d = load(root, ABUSE)
    v = d["values"]
    cancel, fair, bodies = v["cancel_and_rejoin"], v["one_running_per_visitor"], v["bodies_in_flight"]
    files = v["cpu_seconds_per_file"]
    cpu = {k: s for k, s in files.items() if k not in ("bytes", "peak_mb_added", "outcome")}
    sizes, peaks, outcomes = files["bytes"], files["peak_mb_added"], files["outcome"]
    sessions, conns = v["session_flood"], v["connections"]
    rows = [
        [
            "cancel and rejoin: 5 rounds of 3 ScoreCAM joins from one visitor, each cancelled",
            f"{cancel['accepted']} of {cancel['joined']} accepted, {cancel['refused_429']} refused with 429; the "
            f"server idle {cancel['idle_after_seconds']} s after the last cancel; another visitor's GradCAM "
            f"{cancel['other_visitor_gradcam_seconds']} s; {cancel['threads_added']} threads added",
        ],
        [
            "another visitor's GradCAM beside one visitor's 3 ScoreCAM requests",
            f"{fair['other_gradcam_seconds_beside_3_scorecams']} s (alone: {fair['gradcam_seconds_again']} s)",
        ],
        [
            "4 chunked 20 MB bodies from one visitor, never finished",
            f"{bodies['refused_429']} refused with 429 as their bytes arrived; "
            f"server memory {bodies['rss_added_mb']:+} MB",
        ],
        ["a body that stalls", f"HTTP 408 after {bodies['stalled_body_answered_408_after_s']} s (timeout set to 2 s)"],
        [
            f"{bodies['header_only_29MB_posts']} header-only 29 MB uploads from 40 addresses",
            f"nothing charged: another visitor's upload answered {bodies['legit_upload_after']}",
        ],
        ["25 new sessions from one address (cap set to 10)", f"{sessions['refused_429']} refused with 429"],
        [
            f"{sessions['api_calls_sent']} API calls without a session_hash from one address (cap 10)",
            f"{sessions['api_calls_refused_429']} refused with 429",
        ],
        [
            f"{conns['idle_connections_opened']} idle connections from one address (cap set to 20, "
            f"head timeout {conns['head_timeout_s']} s)",
            f"{conns['refused_at_once']} closed at once, {conns['closed_after_head_timeout']} after the "
            f"timeout; all closed within {conns['seconds_until_all_closed']} s",
        ],
        [
            f"two one-colour {v['decoded_pixels']['megapixels']} MP JPEGs ({v['decoded_pixels']['file_mb']} MB) from "
            f"one visitor (limit {v['decoded_pixels']['limit_mp']} MP)",
            "the second refused before decoding" if v["decoded_pixels"]["second_refused"] else "both decoded",
        ],
        *[
            [
                f"CPU of the server for `{k}` ({sizes[k] / 1e6:.2f} MB), upload + explain",
                f"{s:.2f} s; peak memory +{peaks[k]} MB; {'served' if outcomes[k] == 'complete' else 'refused'}",
            ]
            for k, s in cpu.items()
        ],
    ]
    return markdown(["measured", "value"], rows) + "\n\n" + footer(source(ABUSE, d))


@table("reliability")
def reliability(root: Path) -> str:
    d = load(root, RELIABILITY)
    v = d["values"]
    mem = v["memory_mb"]
    rows = [
        [
            f"bad inputs, each refused with its own message ({len(v['bad_inputs_refused'])})",
            ", ".join(v["bad_inputs_refused"]),
        ],
        [
            f"awkward inputs, served with a note of what was done ({len(v['awkward_inputs_served'])})",
            ", ".join(v["awkward_inputs_served"]),
        ],
        ["simultaneous requests equal to lone requests", str(v["simultaneous_equal_to_lone"])],
        [
            "flood from many clients at once",
            f"{v['flood']['sent']} sent: {v['flood']['queued_and_served']} queued "
            f"and served, {v['flood']['refused_503']} refused at once with HTTP 503",
        ],
        [
            "resident memory",
            f"{mem['after_40_warm_up']} MB after 40 warm-up requests, {mem['after_300_more']} MB "
            f"after 300 more: growth {mem['growth']} MB",
        ],
    ]
    return markdown(["check", "result"], rows) + "\n\n" + footer(source(RELIABILITY, d))


# ---------------------------------------------------------------- rendering the files


# ---------------------------------------------------------------- localisation and the sanity check

LOCALISATION = "docs/localisation-imagenette.json"
SANITY = "docs/sanity-imagenette.json"


def pct(c: dict) -> str:
    """A share with its interval, in percent."""
    return f"{100 * c['mean']:.1f} [{100 * c['ci95'][0]:.1f}, {100 * c['ci95'][1]:.1f}]"


def box_acc(b: dict) -> str:
    return f"{b['value']:.1f} [{b['ci95'][0]:.1f}, {b['ci95'][1]:.1f}]"


@table("localisation-gradcam")
def localisation_gradcam(root: Path) -> str:
    s = load(root, LOCALISATION)
    header = [
        "map (Grad-CAM)",
        "pointing %",
        "within 15 px %",
        "energy in the boxes %",
        "the boxes cover %",
        "MaxBoxAccV2",
        "IoU at the optimal τ",
    ]
    rows = []
    for key, label in [
        *((f"gradcam/{m}", m) for m in TRIO),
        ("-/centre", "centred Gaussian (baseline)"),
        ("-/flat", "flat map (baseline)"),
    ]:
        g = s["groups"][key]
        point = pct(g["pointing"]) if key != "-/flat" else "— (every pixel ties)"
        rows.append(
            [
                label,
                point,
                pct(g["pointing_tolerant"]) if key != "-/flat" else "—",
                pct(g["energy"]),
                f"{100 * g['coverage']:.1f}",
                box_acc(g["max_box_acc_v2"]),
                f"{g['iou_at_optimal_tau']['mean']:.3f}",
            ]
        )
    return markdown(header, rows) + "\n\n" + footer(source(LOCALISATION, s) + f"; {s['images']} images")


@table("readme-localisation")
def readme_localisation(root: Path) -> str:
    s = load(root, LOCALISATION)
    paired = {c["b"]: c for c in s["comparisons"] if c["method"] == "gradcam" and c["subset"] == "all"}
    header = [
        "Grad-CAM map of",
        "peak in the box (%)",
        "map mass in the box (%)",
        "MaxBoxAccV2",
        "mass in the box − ResNet50 (Wilcoxon p)",
    ]
    rows = []
    for key, label in [*((f"gradcam/{m}", m) for m in TRIO), ("-/centre", "a centred Gaussian (no model)")]:
        g, m = s["groups"][key], key.split("/")[1]
        diff = (
            f"{100 * paired[m]['energy']['diff']:+.1f} points (p = {p(paired[m]['energy']['p_value'])})"
            if m in paired
            else "—"
        )
        rows.append(
            [
                label,
                f"{100 * g['pointing']['mean']:.1f}",
                f"{100 * g['energy']['mean']:.1f}",
                f"{g['max_box_acc_v2']['value']:.1f}",
                diff,
            ]
        )
    cover = s["groups"]["gradcam/resnet50"]["coverage"]
    return (
        markdown(header, rows) + f"\n\nThe boxes cover {100 * cover:.1f} % of the view on average (what a flat map "
        f"scores). " + footer(source(LOCALISATION, s, brief=True) + f"; {s['images']} images")
    )


@table("localisation-methods")
def localisation_methods(root: Path) -> str:
    s = load(root, LOCALISATION)
    methods = list(dict.fromkeys(k.split("/")[0] for k in s["groups"] if not k.startswith("-/")))
    header = ["method", "images"] + [f"{m}: pointing % · energy % · MaxBoxAccV2" for m in TRIO]
    rows = []
    for method in methods:
        cells = []
        for m in TRIO:
            g = s["groups"].get(f"{method}/{m}")
            cells.append(
                "—"
                if g is None
                else f"{100 * g['pointing']['mean']:.1f} · {100 * g['energy']['mean']:.1f} · "
                f"{g['max_box_acc_v2']['value']:.1f}"
            )
        rows.append([method, str(s["groups"][f"{method}/{TRIO[0]}"]["images"]), *cells])
    return markdown(header, rows) + "\n\n" + footer(source(LOCALISATION, s))


@table("localisation-paired")
def localisation_paired(root: Path) -> str:
    s = load(root, LOCALISATION)
    header = [
        "method",
        "images",
        "model − resnet50",
        "pointing (points)",
        "McNemar p",
        "energy",
        "Wilcoxon p",
        "IoU",
        "Wilcoxon p",
    ]
    rows = []
    for subset in ("all", "small_objects"):
        for c in s["comparisons"]:
            if c["subset"] != subset:
                continue
            pt, en, iou = c["pointing"], c["energy"], c["iou"]
            rows.append(
                [
                    c["method"] + (" (boxes < half the view)" if subset != "all" else ""),
                    str(c["images"]),
                    c["b"],
                    interval(pt, 1),
                    p(pt["p_value"]),
                    interval(en, 3),
                    p(en["p_value"]),
                    interval(iou, 3),
                    p(iou["p_value"]),
                ]
            )
    return markdown(header, rows) + "\n\n" + footer(source(LOCALISATION, s))


@table("sanity")
def sanity(root: Path) -> str:
    s = load(root, SANITY)
    header = ["method"] + [f"{m}: Spearman · SSIM after full randomisation" for m in TRIO] + ["verdict"]
    rows = []
    for method in s["methods"]:
        cells, verdicts = [], []
        for m in TRIO:
            r = s["results"][m][method]
            cells.append(f"{r['final_spearman']:+.2f} · {r['final_ssim']:.2f}")
            verdicts.append(r["verdict"])
        worst = max(verdicts, key=("passes", "weak", "fails").index)
        rows.append([method, *cells, worst])
    return (
        markdown(header, rows)
        + "\n\n"
        + f"Rule (fixed before the run): {s['rule']['text']}\n\n"
        + footer(source(SANITY, s) + f"; {s['n_images']} images")
    )


def files(root: Path) -> list[Path]:
    """The Markdown files that may hold tables: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def render_text(text: str, root: Path, where: str = "") -> tuple[str, set[str]]:
    """``text`` with every marked table rendered anew, and the names it holds."""
    opened = [(m.group(1), m.group(2)) for m in OPENING.finditer(text)]
    stack = []
    for closing, name in opened:
        if not closing:
            if stack:
                raise ReportError(f"{where}: table {name} opens inside table {stack[-1]}")
            stack.append(name)
        elif not stack or stack.pop() != name:
            raise ReportError(f"{where}: /table:{name} closes no open table")
    if stack:
        raise ReportError(f"{where}: table {stack[-1]} is never closed")
    names = set()

    def fill(m: re.Match) -> str:
        name = m.group(1)
        if name not in TABLES:
            raise ReportError(f"{where}: unknown table {name!r} (known: {', '.join(sorted(TABLES))})")
        names.add(name)
        return f"<!-- table:{name} -->\n\n{TABLES[name](root).rstrip()}\n\n<!-- /table:{name} -->"

    return MARKER.sub(fill, text), names


def render(root: Path = ROOT) -> dict[Path, tuple[str, str]]:
    """Every file with markers: (the text now, the rendered text)."""
    out, seen = {}, set()
    for path in files(root):
        if not path.is_file():
            continue
        text = path.read_text()
        new, names = render_text(text, root, str(path.relative_to(root)))
        seen |= names
        if names:
            out[path] = (text, new)
    missing = sorted(set(TABLES) - seen)
    if missing:
        raise ReportError(f"tables in no file: {', '.join(missing)} (add <!-- table:NAME --><!-- /table:NAME -->)")
    return out


def check(root: Path = ROOT, stream=None) -> int:
    """0 when every file equals its rendering; else 1, with a unified diff on ``stream`` (stdout)."""
    stream = stream or sys.stdout
    differ = 0
    for path, (text, new) in render(root).items():
        if text != new:
            differ = 1
            rel = path.relative_to(root).as_posix()
            stream.writelines(
                difflib.unified_diff(
                    text.splitlines(keepends=True),
                    new.splitlines(keepends=True),
                    f"{rel} (committed)",
                    f"{rel} (rendered from the artifacts)",
                )
            )
    return differ


def main(argv: list[str] | None = None) -> int:
    p_ = argparse.ArgumentParser(
        prog="python -m dsnet.evidence.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p_.add_argument("--check", action="store_true", help="rewrite nothing; print a diff and exit 1 if a file is stale")
    p_.add_argument(
        "--root",
        type=Path,
        default=ROOT,
        help="the repository whose README.md and docs/*.md are rewritten (default: this one)",
    )
    args = p_.parse_args(argv)
    try:
        if args.check:
            code = check(args.root)
            if code:
                print(
                    "stale: run `python -m dsnet.evidence.report` to render the tables from the artifacts",
                    file=sys.stderr,
                )
            else:
                print(f"up to date: the {len(TABLES)} tables in README.md and docs/ are those of the saved artifacts")
            return code
        for path, (text, new) in render(args.root).items():
            if text != new:
                path.write_text(new)
                print(f"rewrote {path.relative_to(args.root).as_posix()}")
    except ReportError as e:
        return refused(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
