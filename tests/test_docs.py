"""README and docs/: every results table is the rendering of its saved artifact, the claims the prose
makes around the tables hold in the artifacts, and what README names (builders, CAM methods, serving
settings, commands, links) exists. Fast: no model, no server.

The tables are rendered by ``python -m dsnet.evidence.report`` (``--check`` is what the first test
runs); when an artifact is regenerated, run it and commit the files it rewrites.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import ROOT
from dsnet.evidence import report

README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
TRIO = ("resnet50", "dsnet50", "ds2net50")
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def load(name: str) -> dict:
    return json.loads((DOCS / name).read_text())


def flat(text: str) -> str:
    return " ".join(text.split())


def section(text: str, heading: str) -> str:
    """``text`` from the heading line ``heading`` to the next heading of the same or a higher level
    (lines inside fenced code blocks are not headings)."""
    level = len(heading.split(" ")[0])
    lines = text[text.index(heading + "\n") + len(heading) + 1 :].splitlines(keepends=True)
    out, fenced = [], False
    for line in lines:
        fenced ^= line.startswith("```")
        m = re.match(r"(#+) ", line)
        if m and not fenced and len(m.group(1)) <= level:
            break
        out.append(line)
    return "".join(out)


def table(text: str, header_start: str) -> dict[str, list[str]]:
    """The Markdown table whose header row starts with ``| header_start``: first cell -> the other cells."""
    lines = text[text.index("| " + header_start) :].splitlines()
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def manifest() -> dict:
    return json.loads((ROOT / "checkpoints" / "manifest.json").read_text())


# ---------------------------------------------------------------- (a) the tables are their artifacts' rendering


def test_the_docs_equal_the_rendering_of_the_artifacts():
    out = io.StringIO()
    assert report.check(ROOT, stream=out) == 0, (
        "README/docs tables differ from the artifacts; run `python -m dsnet.evidence.report`:\n" + out.getvalue()
    )


def test_every_table_is_in_a_file_and_every_marker_names_a_table():
    found = {m.group(1) for page in PAGES for m in report.MARKER.finditer(page.read_text())}
    assert found == set(report.TABLES)
    assert "<!-- table:readme-results -->" in README


def test_the_rendering_is_a_pure_function_of_the_artifacts():
    first = {p: new for p, (_, new) in report.render(ROOT).items()}
    again = {p: new for p, (_, new) in report.render(ROOT).items()}
    assert first == again
    source = (ROOT / "dsnet" / "evidence" / "report.py").read_text()
    for clock in (
        "import datetime",
        "import time",
        "import subprocess",
        "import random",
        "from random",
        "from datetime",
        "from time",
    ):
        assert clock not in source, clock


# ---------------------------------------------------------------- (b) a number edited by hand fails the check


@pytest.fixture
def copy_of_the_docs(tmp_path: Path) -> Path:
    """README, the Markdown and artifacts of docs/ (no pictures) and the manifest, in a temporary tree."""
    shutil.copy2(ROOT / "README.md", tmp_path / "README.md")
    shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("*.png"))
    (tmp_path / "checkpoints").mkdir()
    shutil.copy2(ROOT / "checkpoints" / "manifest.json", tmp_path / "checkpoints" / "manifest.json")
    return tmp_path


@pytest.mark.parametrize(
    "page, before, after",
    [
        ("docs/results.md", "| dsnet50 | 86.55 | 98.87 |", "| dsnet50 | 86.95 | 98.87 |"),  # the shipped zoo's top-1
        ("README.md", "| DSNet50 | 86.59 ± 0.32 |", "| DSNet50 | 86.99 ± 0.32 |"),  # README's results
        ("docs/benchmarks.md", "| 1.603 [1.56-1.71] |", "| 1.203 [1.56-1.71] |"),  # a GPU ratio
    ],
)
def test_a_number_edited_by_hand_fails_the_check(copy_of_the_docs, capsys, page, before, after):
    root = copy_of_the_docs
    assert report.main(["--check", "--root", str(root)]) == 0
    path = root / page
    text = path.read_text()
    assert before in text, before
    path.write_text(text.replace(before, after, 1))
    capsys.readouterr()
    assert report.main(["--check", "--root", str(root)]) == 1
    diff = capsys.readouterr().out
    assert f"--- {page} (committed)" in diff and any(
        line.startswith("-") and after.strip("| ") in line for line in diff.splitlines()
    )
    assert report.main(["--root", str(root)]) == 0  # rewriting renders it back
    assert path.read_text() == text
    assert report.main(["--check", "--root", str(root)]) == 0


def test_an_edited_artifact_fails_the_check_until_rendered(copy_of_the_docs, capsys):
    root = copy_of_the_docs
    art = root / "docs" / "seeds-imagenette.json"
    data = json.loads(art.read_text())
    data["models"]["dsnet50"]["mean"] = 12.34
    art.write_text(json.dumps(data))
    assert report.main(["--check", "--root", str(root)]) == 1
    assert "12.34 ± 0.32" in capsys.readouterr().out


def test_unknown_or_unclosed_markers_and_missing_tables_are_errors(copy_of_the_docs, capsys):
    root = copy_of_the_docs
    page = root / "docs" / "results.md"
    text = page.read_text()
    page.write_text(text + "\n<!-- table:no-such-table -->\n<!-- /table:no-such-table -->\n")
    assert report.main(["--check", "--root", str(root)]) == 2
    assert "unknown table 'no-such-table'" in capsys.readouterr().err
    page.write_text(text + "\n<!-- table:focus-50 -->\n")
    assert report.main(["--check", "--root", str(root)]) == 2
    assert "never closed" in capsys.readouterr().err
    page.write_text(re.sub(r"<!-- table:focus-50 -->.*?<!-- /table:focus-50 -->\n", "", text, flags=re.S))
    assert report.main(["--check", "--root", str(root)]) == 2
    assert "tables in no file: focus-50" in capsys.readouterr().err


# ---------------------------------------------------------------- (c) what README names exists


def test_readme_is_for_users():
    lines = README.splitlines()
    assert len(lines) <= 250, len(lines)
    body = README.split("---", 2)[2]  # after the Space's front matter
    assert not re.search(r"\b(?:commit|at) [0-9a-f]{7,40}\b", body), "commit hashes belong in docs/"
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", body), "dates belong in docs/"
    assert "/tmp/" not in body
    for word in ("session", "lent ", "issue #", "issue 1", "issue 2"):
        assert word not in body.lower().replace("session_hash", ""), word  # the API's field is named so
    assert "```bash\npython -m pytest -q " in README  # the test command CI runs (.ci/run)
    assert "\npython -m pytest -q\n" in (ROOT / ".ci" / "run").read_text()


def test_the_builder_list_is_the_registry():
    import dsnet

    line = " ".join(re.search(r"Registered builders: (.*?); every builder", flat(README)).group(1).strip("`").split())
    names = []
    for word in line.split():
        m = re.fullmatch(r"\{(.*)\}\{(.*)\}", word)
        names += [a + b for a in m.group(1).split(",") for b in m.group(2).split(",")] if m else [word]
    assert sorted(names) == dsnet.list_models()


def test_the_cam_cost_table_lists_every_method_of_the_method_table_once():
    from dsnet.cam.service import METHODS

    rows = table(README, "method | cost per model")
    listed = [name.strip() for first in rows for name in first.split(",")]
    assert sorted(listed) == sorted(METHODS)


def test_the_settings_table_names_every_serving_setting_with_its_default():
    from app.settings import ServingSettings

    rows = {name.strip("`"): cells for name, cells in table(README, "variable | default | what").items()}
    defaults = ServingSettings()
    for field in dataclasses.fields(ServingSettings):
        name = f"DSNET_{field.name.upper()}"
        assert name in rows, name
        if field.name != "trusted_proxies":  # 1 on a Space, else 0
            assert rows[name][0] == f"{getattr(defaults, field.name):g}", name
    code = "".join(p.read_text() for p in [*(ROOT / "app").rglob("*.py"), *(ROOT / "dsnet").rglob("*.py")])
    for name in rows:
        for var in re.findall(r"[A-Z_]{6,}", name):
            assert var.startswith("GRADIO_") or var in code, f"{var}: in README's settings table, read nowhere"


COMMAND = re.compile(r"(?:python3? |torchrun[^`\n]*? )-m ([A-Za-z_][\w.]*)")
SCRIPT = re.compile(r"(?<![\w/.])((?:scripts|benchmarks)/[\w.-]+\.(?:sh|py)|app\.py)\b")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_command_named_in_the_docs_exists(page):
    """``python -m X`` of this project names a runnable module; scripts named exist."""
    text = page.read_text()
    for module in set(COMMAND.findall(text)):
        if module.split(".")[0] not in ("dsnet", "app"):
            continue  # pytest, pip, venv, zipfile
        path = ROOT / Path(*module.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__main__.py").is_file(), f"{page.name}: {module}"
    for script in set(SCRIPT.findall(text)):
        assert (ROOT / script).is_file(), f"{page.name}: {script}"


def test_every_readme_command_answers_help_in_the_cli_benchmark_or_its_own_module():
    """Each command line README lists is one of benchmarks/cli_help.py's (its --help is tested in test_cli)
    or is a module whose --help needs nothing slow (the report, localise)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cli_help", ROOT / "benchmarks" / "cli_help.py")
    cli_help = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli_help)
    commands = table(section(README, "### Command lines"), "command | what")
    modules = {re.match(r"`python -m ([\w.]+)", c).group(1) for c in commands}
    known = {name.removeprefix("python -m ") for name in cli_help.COMMANDS}
    assert modules - known <= {"dsnet.evidence.localise", "dsnet.evidence.report"}, modules - known


def slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_into_the_repository_resolves(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: {target}"
        if anchor and file.suffix == ".md":
            headings = {slug(h) for h in re.findall(r"(?m)^#+ (.*)$", file.read_text())}
            assert anchor in headings, f"{page.name}: {target}"


def test_the_localisation_and_sanity_sections_are_generated():
    results = (DOCS / "results.md").read_text()
    assert "## Localisation: is the map on the object?" in results and "READING_PENDING" not in results
    for name in ("localisation-gradcam", "localisation-methods", "localisation-paired", "sanity"):
        assert f"<!-- table:{name} -->" in results, name
    assert "<!-- table:readme-localisation -->" in (ROOT / "README.md").read_text()


# ---------------------------------------------------------------- (c) the manifest and the artifacts agree


def test_manifest_says_60_epochs():
    raw = manifest()["zoos"]["imagenette"]
    assert "60 epochs" in raw["description"] and "18 epochs" not in raw["description"]
    assert all(e["provenance"]["epochs"] == 60 for e in raw["models"].values())


def test_the_manifest_metrics_are_the_export_measurement():
    export = load("evaluate-imagenette-export.json")
    for m, entry in manifest()["zoos"]["imagenette"]["models"].items():
        at160, at128 = report.result(export, m, 160), report.result(export, m, 128)
        assert entry["preprocessing"]["crop"] == 160 and entry["preprocessing"]["resize"] == at160["resize"]
        assert (entry["metrics"][0]["top1"], entry["metrics"][0]["top5"]) == (at160["top1"], at160["top5"])
        exported = entry["provenance"]["test_size"]["at_128px"]
        assert (exported["top1"], exported["top5"]) == (at128["top1"], at128["top5"])  # export's own numbers


def test_the_test_size_rule_gives_the_manifest_test_size():
    sizes = load("test-size-imagenette.json")
    assert sizes["crops"] == [128, 160, 192, 224] and all(r["images"] == 3791 for r in sizes["models"])
    chosen = report.chosen_test_size(sizes)
    for entry in manifest()["zoos"]["imagenette"]["models"].values():
        assert entry["preprocessing"]["crop"] == chosen
        assert entry["preprocessing"]["resize"] == report.result(sizes, "resnet50", chosen)["resize"]


def test_the_zoo_list_transcript_shows_the_manifest_top1():
    models = (DOCS / "models.md").read_text()
    zoos = manifest()["zoos"]
    for zoo in ("imagenette", "imagenet"):
        for m, entry in zoos[zoo]["models"].items():
            top1 = f"{entry['metrics'][0]['top1']:.2f}" if entry["metrics"] else "-"
            assert re.search(rf"(?m)^{zoo}/{m}\s+\S+(?: yet)?\s+{re.escape(top1)}\s", models), f"{zoo}/{m}"


def test_the_seed_study_reading_holds_in_the_artifacts():
    """README's and results.md's sentences about the seed study, each checked on the report's JSON."""
    seeds, ev = load("seeds-imagenette.json"), load("evaluate-imagenette-seeds.json")
    pairs = {(q["a"], q["b"]): q for q in seeds["pairs"]}
    text = flat(README)
    for m in ("dsnet50", "ds2net50"):
        q = pairs[("resnet50", m)]
        assert q["seeds_b_better"] == q["seeds"] == len(seeds["seeds"]) == 5 and q["ordering_holds"]
        assert all(s["diff"] > 0 for s in q["per_seed"])
        assert q["diff_t95"][0] > 0  # both t intervals over seeds exclude 0 (results.md)
        assert q["sign_test_p"] == 0.0625 == 2 * 0.5 ** q["seeds"]  # the smallest five seeds allow
        assert q["mcnemar_p_below_0.05"] == 3 == sum(s["p_value"] < 0.05 for s in q["per_seed"])
    gaps = [pairs[("resnet50", m)]["diff_mean"] for m in ("dsnet50", "ds2net50")]
    assert f"the mean gaps are about a point ({gaps[0]:+.2f} and {gaps[1]:+.2f})" in text
    assert "p = 0.0625 is the smallest 5 seeds allow" in text and "below 0.05 on only 3 of the 5" in text
    ds2 = pairs[("dsnet50", "ds2net50")]
    assert not ds2["ordering_holds"] and ds2["seeds_b_better"] == 4 and "(4 of 5 seeds)" in text
    shipped = max(
        abs(report.result(ev, m, 160, "seed0")["top1"] - report.result(ev, m, 160, "seed0-gpu")["top1"]) for m in TRIO
    )
    assert round(shipped, 2) <= 0.15 and "within 0.15 points of the study's seed 0" in text


def test_the_focus_reading_holds_in_the_artifacts():
    """results.md's reading of the 300-image run: more concentrated, not more faithful, more often right."""
    s = load("focus-imagenette.summary.json")
    assert s["images"] == 300 and all(p == {"resize": 183, "crop": 160} for p in s["preprocessing"].values())
    for m in ("dsnet50", "ds2net50"):
        c = {c["metric"]: c for c in s["comparisons"] if c["b"] == m}
        assert c["top10_mass"]["diff"] > 0 and c["top10_mass"]["p_value"] < 1e-6
        assert c["entropy"]["diff"] < 0 and c["entropy"]["p_value"] < 1e-6
        assert c["road"]["ci_low"] < 0 < c["road"]["ci_high"]
        assert c["confidence_change"]["ci_high"] < 0 and c["confidence_change"]["p_value"] < 0.05
        assert c["top1 (points)"]["diff"] > 0
    most = {r["model"]: r["most_focused"] for r in s["models"]}
    assert most["resnet50"] < min(most["dsnet50"], most["ds2net50"])


FOCUS_SIZES = (128, 160, 192, 224)


def test_the_focus_by_test_size_reading_holds_in_the_artifacts():
    """The sentence reading the per-size table: each claim it makes, checked on the summaries."""
    import csv

    text = flat((DOCS / "results.md").read_text())
    assert "(top10_mass higher, every p < 0.001; entropy lower, every p < 0.01)" in text
    gaps, worse, images = {m: [] for m in TRIO[1:]}, {m: [] for m in TRIO[1:]}, set()
    for size in FOCUS_SIZES:
        s = load(f"focus-imagenette-size{size}.summary.json")
        assert all(p["crop"] == size for p in s["preprocessing"].values())
        assert f"--crop {size} --resize {s['preprocessing']['resnet50']['resize']}" in s["command"]
        with open(DOCS / f"focus-imagenette-size{size}.csv", newline="") as f:
            images.add(frozenset(r["image"] for r in csv.DictReader(f)))
        for m in gaps:
            c = {c["metric"]: c for c in s["comparisons"] if c["b"] == m}
            assert c["top10_mass"]["diff"] > 0 and c["top10_mass"]["p_value"] < 0.001
            assert c["entropy"]["diff"] < 0 and c["entropy"]["p_value"] < 0.01
            assert c["confidence_change"]["diff"] < 0 and c["confidence_change"]["p_value"] < 0.05
            assert c["road"]["p_value"] > 0.05 and c["top1 (points)"]["p_value"] > 0.05
            gaps[m].append(c["top10_mass"]["diff"])
            worse[m].append(-c["confidence_change"]["diff"])
    assert len(images) == 1  # the same images at every size
    assert all(g == sorted(g) for g in gaps.values())  # the top10_mass gap grows with the size
    assert "the largest gaps at 192 and 224 px" in text
    assert all(min(w[2:]) > max(w[:2]) for w in worse.values())
