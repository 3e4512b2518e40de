"""README's results equal the saved artifacts in docs/ (and the manifest): a stale number fails here.

Each check parses a table or sentence of README and the JSON that the command shown next to it
wrote. When an artifact is regenerated, README must be updated with it (and vice versa).
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
FLAT = " ".join(README.split())  # README with line breaks as spaces, for sentences
DOCS = ROOT / "docs"
TRIO = ("resnet50", "dsnet50", "ds2net50")


def load(name: str) -> dict:
    return json.loads((DOCS / name).read_text())


def section(heading: str) -> str:
    """README text from ``heading`` (a whole heading line) to the next heading of the same or a higher
    level (lines inside fenced code blocks are not headings)."""
    level = len(heading.split(" ")[0])
    lines = README[README.index(heading + "\n") + len(heading) + 1:].splitlines(keepends=True)
    out, fenced = [], False
    for line in lines:
        fenced ^= line.startswith("```")
        m = re.match(r"(#+) ", line)
        if m and not fenced and len(m.group(1)) <= level:
            break
        out.append(line)
    return "".join(out)


def table(text: str, header_start: str) -> dict[str, list[str]]:
    """The markdown table whose header row starts with ``| header_start``: first cell -> the other cells."""
    lines = text[text.index("| " + header_start):].splitlines()
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip().strip("*") for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def manifest_models() -> dict:
    return json.loads((ROOT / "checkpoints" / "manifest.json").read_text())["zoos"]["imagenette"]["models"]


def result(artifact: dict, model: str, crop: int) -> dict:
    return next(r for r in artifact["models"] if r["model"] == model and r["crop"] == crop)


def comparison(artifact: dict, kind: str, model: str, crop: int) -> dict:
    return next(c for c in artifact["comparisons"] if c["kind"] == kind and c["b"] == {"model": model, "crop": crop})


def flat(text: str) -> str:
    return " ".join(text.split())


def interval(c: dict) -> str:
    return f"{c['diff']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]"


def test_every_artifact_named_with_a_commit_in_readme_is_that_commit_and_date():
    cited = re.findall(r"(docs/[\w.-]+\.(?:json|csv))`?,\s+commit\s+([0-9a-f]{7}),\s+(\d{4}-\d{2}-\d{2})", README)
    assert len(cited) >= 4, cited
    for path, commit, date in cited:
        artifact = json.loads((ROOT / path.replace(".csv", ".summary.json")).read_text())
        assert (artifact["commit"], artifact["date"][:10]) == (commit, date), path


def test_zoo_table_equals_the_manifest_and_the_export_measurement():
    export = load("evaluate-imagenette-export.json")
    rows = table(section("### The shipped Imagenette zoo (measured)"), "model | top-1 (%), 160 px")
    models = manifest_models()
    assert list(rows) == list(TRIO)
    for m in TRIO:
        at160, at128 = result(export, m, 160), result(export, m, 128)
        entry = models[m]
        assert entry["preprocessing"]["crop"] == 160 and entry["preprocessing"]["resize"] == at160["resize"]
        assert (entry["metrics"][0]["top1"], entry["metrics"][0]["top5"]) == (at160["top1"], at160["top5"])
        assert rows[m][:4] == [f"{at160['top1']:.2f}", f"{at160['top5']:.2f}", f"{at128['top1']:.2f}", f"{at128['top5']:.2f}"]
        assert rows[m][4] == f"{entry['provenance']['train_seconds'] / 60:.1f} min"
        exported = entry["provenance"]["test_size"]["at_128px"]
        assert (exported["top1"], exported["top5"]) == (at128["top1"], at128["top5"])  # export's own numbers


def test_zoo_paired_table_equals_the_export_measurement():
    export = load("evaluate-imagenette-export.json")
    rows = table(section("### The shipped Imagenette zoo (measured)"), "vs resnet50")
    for m in ("dsnet50", "ds2net50"):
        c128, c160 = comparison(export, "model", m, 128), comparison(export, "model", m, 160)
        assert rows[m] == [interval(c128), f"{c128['p_value']:.2g}", interval(c160), f"{c160['p_value']:.2g}"]


def test_the_earlier_18_epoch_run_is_quoted_from_its_manifest():
    old = load("zoo-c27b5ed-imagenette.json")
    top1 = " / ".join(f"{old['models'][m]['top1']:.2f}" for m in TRIO)
    assert f"top-1 {top1} for ResNet50" in FLAT
    seconds = " / ".join(str(old["models"][m]["train_seconds"]) for m in TRIO)
    assert f"18-epoch runs took {seconds} s" in FLAT
    assert all(old["models"][m]["epochs"] == 18 for m in TRIO)
    gpu = " / ".join(str(manifest_models()[m]["provenance"]["train_seconds"]) for m in TRIO)
    assert f"60-epoch run took {gpu} s" in FLAT


def test_manifest_says_60_epochs():
    raw = json.loads((ROOT / "checkpoints" / "manifest.json").read_text())["zoos"]["imagenette"]
    assert "60 epochs" in raw["description"] and "18 epochs" not in raw["description"]
    assert all(e["provenance"]["epochs"] == 60 for e in raw["models"].values())


def test_test_size_table_equals_its_artifact():
    sizes = load("test-size-imagenette.json")
    assert sizes["crops"] == [128, 160, 192, 224] and all(r["images"] == 3791 for r in sizes["models"])
    rows = table(section("### Test size (finer maps): the rule, fixed before measuring"), "model | 128 px")
    for m in TRIO:
        cells = [f"{result(sizes, m, 128)['top1']:.2f}"]
        for crop in (160, 192, 224):
            c = comparison(sizes, "size", m, crop)
            cells.append(f"{result(sizes, m, crop)['top1']:.2f} ({interval(c)}, p = {c['p_value']:.2g})")
        assert rows[m] == cells
    # the rule: the largest size at which no model is below its own 128 px top-1
    chosen = max(c for c in sizes["crops"]
                 if all(result(sizes, m, c)["top1"] >= result(sizes, m, 128)["top1"] for m in TRIO))
    assert chosen == 160 and f"zoo's test size is **{chosen} px**" in FLAT


def test_test_size_caveat_quotes_the_export_measurement():
    export = load("evaluate-imagenette-export.json")
    c = comparison(export, "size", "dsnet50", 160)
    text = flat(section("### Test size (finer maps): the rule, fixed before measuring"))
    assert f"DSNet50 is {-c['diff']:.2f} points *below*" in text
    assert f"({c['mean_b']:.2f} vs {c['mean_a']:.2f}; interval [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]; McNemar p = {c['p_value']:.2g})" in text


def test_evaluation_block_equals_its_artifact():
    ev = load("evaluate-imagenette.json")
    text = section("## Evaluation (Table 9's layout)")
    block = text[text.index("--json docs/evaluate-imagenette.json"):]
    block = block[: block.index("```")]
    for r in ev["models"]:
        pattern = (rf"(?m)^{r['model']}\s+{r['run']}\s+{r['crop']}\s+{r['top1']:.2f}\s+{r['top5']:.2f}\s+"
                   rf"{r['params_m']:.3f}\s+{r['gmacs']:.3f}\s+{r['train_memory_mb']:.1f} \(")
        assert re.search(pattern, block), f"{r['model']}: {pattern}"
    for c in ev["comparisons"]:
        assert f"{interval(c)}  McNemar p = {c['p_value']:.2g}" in block.replace(" points ", " ")
    assert "CPU latency" not in block.splitlines()[1]  # the noisy latency column is not shown


FOCUS = "### Figure 5, and §4.4 as a measurement"


def test_focus_tables_equal_the_summary_artifact():
    summary = load("focus-imagenette.summary.json")
    text = section(FOCUS)
    assert f"on {summary['images']} val images" in flat(text)
    rows = table(text, "model | top-1 on these")
    for s in summary["models"]:
        cells = [f"{s['top1_accuracy']:.1f}"] + [f"{s[k]['mean']:.3f} ± {s[k]['ci95_t']:.3f}"
                                                  for k in ("top10_mass", "entropy", "confidence_change", "road")]
        assert rows[s["model"]] == cells + [f"{100 * s['most_focused']:.0f} %"]
    paired = table(text, "model − resnet50")
    for m in ("dsnet50", "ds2net50"):
        cells = []
        for metric in ("top1 (points)", "top10_mass", "entropy", "confidence_change", "road"):
            c = next(c for c in summary["comparisons"] if c["b"] == m and c["metric"] == metric)
            digits = 2 if metric == "top1 (points)" else 3
            cells.append(f"{c['diff']:+.{digits}f} [{c['ci_low']:+.{digits}f}, {c['ci_high']:+.{digits}f}] p = {c['p_value']:.2g}")
        assert paired[m] == cells


def test_the_earlier_50_image_focus_numbers_are_quoted_from_their_artifact():
    old = load("focus-imagenette-50.summary.json")
    text = flat(section(FOCUS))
    for m in ("dsnet50", "ds2net50"):
        c = next(c for c in old["comparisons"] if c["b"] == m and c["metric"] == "confidence_change")
        assert f"{c['diff']:+.2f} (p = {c['p_value']:.2g})" in text


def test_zoo_list_transcript_shows_the_manifest_top1():
    models = manifest_models()
    for m in TRIO:
        assert re.search(rf"(?m)^imagenette/{m}\s+verified\s+{models[m]['metrics'][0]['top1']:.2f}\s", README), m


def test_pipeline_and_timing_sentences_quote_their_artifacts():
    ev, export = load("evaluate-imagenette.json"), load("evaluate-imagenette-export.json")
    c = comparison(ev, "model", "dsnet50", 160)
    assert f"give {interval(c)}, McNemar p = {c['p_value']:.2g}: the resize implementation alone moves ResNet50 from " \
           f"{result(ev, 'resnet50', 160)['top1']:.2f} to {result(export, 'resnet50', 160)['top1']:.2f} %" in FLAT
    trial, run = load("focus-imagenette-trial10.summary.json"), load("focus-imagenette.summary.json")
    assert f"{trial['seconds_per_image']} s per image for the three models" in FLAT
    assert f"took {run['seconds']} s ({run['seconds_per_image']} s per image)" in FLAT
    assert all(p == {"resize": 183, "crop": 160} for p in run["preprocessing"].values())


FOCUS_SIZES = (128, 160, 192, 224)
FOCUS_METRICS = (("top1_accuracy", "top1 (points)", 1), ("top10_mass", "top10_mass", 3), ("entropy", "entropy", 3),
                 ("confidence_change", "confidence_change", 3), ("road", "road", 3))


def test_focus_by_test_size_table_equals_its_artifacts():
    """The focus/faithfulness numbers on the same images at every test size (dsnet.evidence.figure --crop)."""
    rows = table(section(FOCUS), "size, model")
    images = set()
    for size in FOCUS_SIZES:
        s = load(f"focus-imagenette-size{size}.summary.json")
        assert all(p["crop"] == size for p in s["preprocessing"].values())
        assert f"--crop {size} --resize {s['preprocessing']['resnet50']['resize']}" in s["command"]
        assert [m["model"] for m in s["models"]] == list(TRIO)
        images.add(frozenset(r["image"] for r in csv.DictReader(open(DOCS / f"focus-imagenette-size{size}.csv"))))
        for m in s["models"]:
            cells = []
            for key, metric, digits in FOCUS_METRICS:
                cell = f"{(m[key] if key == 'top1_accuracy' else m[key]['mean']):.{digits}f}"
                if m["model"] != s["baseline"]:
                    c = next(c for c in s["comparisons"] if c["b"] == m["model"] and c["metric"] == metric)
                    cell += f" ({c['diff']:+.{digits}f}, p = {c['p_value']:.2g})"
                cells.append(cell)
            assert rows[f"{size} px, {m['model']}"] == cells, (size, m["model"])
    assert len(images) == 1  # the same images at every size
    assert len(rows) == len(FOCUS_SIZES) * len(TRIO)


def test_focus_by_test_size_times_and_repeat_quote_their_artifacts():
    runs = [load(f"focus-imagenette-size{size}.summary.json") for size in FOCUS_SIZES]
    assert f"The runs took {' / '.join(str(r['seconds']) for r in runs)} s " \
           f"({' / '.join(str(r['seconds_per_image']) for r in runs)} s per image" in FLAT

    def rows(name):
        return {(r["image"], r["model"]): r for r in csv.DictReader(open(DOCS / name))}
    worst = {}
    for new, old in (("focus-imagenette-size128.csv", "focus-imagenette-50.csv"),
                     ("focus-imagenette-size160.csv", "focus-imagenette.csv")):
        a, b = rows(new), rows(old)
        for k in ("top10_mass", "entropy", "confidence_change", "road"):
            worst[k] = max([worst.get(k, 0.0)] + [abs(float(r[k]) - float(b[key][k])) for key, r in a.items()])
    assert all(worst[k] < 1e-6 for k in ("top10_mass", "entropy", "confidence_change"))
    assert f"ROAD to within {worst['road']:.2g} per image" in FLAT


def test_focus_by_test_size_reading_holds_in_the_artifacts():
    """The sentence reading the table: each claim it makes, checked on the summaries."""
    text = flat(section(FOCUS))
    assert "(top10_mass higher, every p < 0.001; entropy lower, every p < 0.01)" in text
    gaps, worse = {m: [] for m in ("dsnet50", "ds2net50")}, {m: [] for m in ("dsnet50", "ds2net50")}
    for size in FOCUS_SIZES:
        s = load(f"focus-imagenette-size{size}.summary.json")
        for m in gaps:
            c = {c["metric"]: c for c in s["comparisons"] if c["b"] == m}
            assert c["top10_mass"]["diff"] > 0 and c["top10_mass"]["p_value"] < 0.001
            assert c["entropy"]["diff"] < 0 and c["entropy"]["p_value"] < 0.01
            assert c["confidence_change"]["diff"] < 0 and c["confidence_change"]["p_value"] < 0.05
            assert c["road"]["p_value"] > 0.05 and c["top1 (points)"]["p_value"] > 0.05
            gaps[m].append(c["top10_mass"]["diff"])
            worse[m].append(-c["confidence_change"]["diff"])
    assert all(g == sorted(g) for g in gaps.values())  # the top10_mass gap grows with the size
    assert "the largest gaps at 192 and 224 px" in text
    assert all(min(w[2:]) > max(w[:2]) for w in worse.values())


def test_command_line_help_times():
    data = load("cli-help.json")
    text = " ".join(section("## Benchmarks").split())
    rows = data["commands"]
    fast = [rows[f"python {c}"]["median_seconds"] for c in ("app.py", "-m dsnet.zoo", "-m app.space", "-m dsnet.evidence.curves")]
    torch_users = [rows[f"python -m dsnet.{c}"]["median_seconds"] for c in ("train", "evaluate", "explain", "figure")]
    assert f"commit {data['commit'][:7]}, {data['date'][:10]}" in text
    assert f"in at most {max(fast):.2f} s" in text
    assert f"in {min(torch_users):.2f}–{max(torch_users):.2f} s" in text
    assert f"({data['import_torch_seconds']:.2f} s in the same run)" in text


def test_the_cam_cost_table_lists_every_method_of_the_method_table_once():
    from dsnet.cam.service import METHODS
    rows = table(section("## Grad-CAM service"), "method | cost per model")
    listed = [name.strip() for first in rows for name in first.split(",")]
    assert sorted(listed) == sorted(METHODS)


def test_the_builder_list_is_the_registry():
    import dsnet
    line = " ".join(re.search(r"Registered builders: (.*?); every builder", FLAT).group(1).strip("`").split())
    names = []
    for word in line.split():
        m = re.fullmatch(r"\{(.*)\}\{(.*)\}", word)
        names += [a + b for a in m.group(1).split(",") for b in m.group(2).split(",")] if m else [word]
    assert sorted(names) == dsnet.list_models()
