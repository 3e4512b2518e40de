"""The app's handlers in this process: the page and API doors, examples, states, labels (no browser)."""

import base64
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from app.examples import FIGURE5_WNIDS, SHIPPED, load_examples
from app.layout import build_app
from app.params import ExplainRequest, ParameterError
from app.state import DOWNLOAD, N_OUT, Session
from conftest import IMAGENETTE, SAMPLES, TRIO, sample, write_tiny_zoo
from dsnet.cam.service import METHODS
from dsnet.zoo.manifest import load_manifest

TOP1 = "each model's top-1"


def data_url(path: Path) -> dict:
    return {"path": None, "url": "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()}


def stream(
    handlers,
    image=None,
    zoo="tiny",
    method="gradcam",
    explain=TOP1,
    cls="",
    opacity=0.5,
    metrics=False,
    example="",
    session=None,
):
    request = ExplainRequest(image, zoo, method, explain, cls, opacity, metrics, example)
    return list(handlers.stream(request, session, lambda *a, **k: None))


@pytest.fixture
def tiny_app(tiny_zoo):
    return build_app(None, "tiny")


def test_the_api_needs_only_the_image_and_names_every_output(tiny_app):
    api = tiny_app.demo.get_api_info()["named_endpoints"]
    explain = api["/explain"]
    names = [p["parameter_name"] for p in explain["parameters"]]
    assert names == ["image", "zoo", "method", "explain", "class_name", "opacity", "metrics", "example"]
    assert all(p["parameter_has_default"] for p in explain["parameters"])
    labels = [r["label"] for r in explain["returns"]]
    assert len(labels) == N_OUT and all(label and not label.startswith("value_") for label in labels), labels
    assert "Hello" not in str(explain)
    fn = next(f for f in tiny_app.demo.fns.values() if f.api_name == "explain")
    assert "example id" in fn.api_description
    assert "/examples" in api
    example_param = explain["parameters"][-1]
    assert example_param["example_input"] in load_examples(load_manifest()).ids()


def test_the_method_menu_is_the_method_table(tiny_app):
    [menu] = [b for b in tiny_app.demo.blocks.values() if getattr(b, "label", None) == "CAM method"]
    assert [value for _, value in menu.choices] == list(METHODS)
    assert all(METHODS[value].summary in label for label, value in menu.choices)


def picture(path: str) -> np.ndarray:
    """An output picture (a file the app wrote) as an H x W x 3 array."""
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_streams_one_column_per_model_for_a_data_url(tiny_app):
    handlers = tiny_app.handlers
    steps = stream(handlers, data_url(sample("golf_ball")))  # faithfulness numbers: tests/test_cam.py
    assert len(steps) == 1 + 3 + 1  # cleared, one per model as it finishes, then the download
    assert steps[0].columns[0][1] == "_waiting…_" and steps[1].columns[1][1] == "_waiting…_"
    final = steps[-1]
    for heatmap, summary, top5 in final.columns:
        assert picture(heatmap).shape == (256, 256, 3)  # the zoo's view, shown at 256
        assert "(explained)" in summary and " · cpu" in summary
        assert len(top5) == 5 and abs(sum(top5.values()) - 1) < 0.2
    assert picture(final.view).shape == (256, 256, 3)
    # each picture is a file of its own, written once: a column re-sent with the next one keeps its file,
    # and the same picture again is a new file (Gradio would rewrite an array's file under a reader)
    assert steps[1].columns[0][0] == final.columns[0][0] and steps[1].view == final.view
    again = stream(handlers, data_url(sample("golf_ball")))[-1]
    assert np.array_equal(picture(again.columns[0][0]), picture(final.columns[0][0]))
    assert not {again.view, *(c[0] for c in again.columns)} & {final.view, *(c[0] for c in final.columns)}
    assert "say" in final.status or "disagree" in final.status
    with Image.open(final.download) as im:
        assert im.format == "PNG" and im.width >= 4 * 320
    assert "dsnet-tiny-gradcam-" in Path(final.download).name


def test_an_example_is_picked_by_id_and_marked_right_or_wrong(tiny_app):
    handlers = tiny_app.handlers
    example = next(e for e in handlers.examples.examples if e.caption == "parachute")
    final = stream(handlers, None, example=example.id)[-1]
    assert "True class: **parachute**" in final.status
    for _, summary, _ in final.columns:
        assert ("✓ top-1 is the true class (parachute)" in summary) or (
            "✗ top-1 is" in summary and "the true class is parachute" in summary
        )
    final = stream(handlers, None, explain="the true class", example=example.id)[-1]
    assert all(summary.startswith("**parachute**") for _, summary, _ in final.columns)
    with pytest.raises(ParameterError, match="unknown example"):
        stream(handlers, None, example="../../etc/passwd")


def test_one_class_for_all_and_bad_parameters(tiny_app):
    handlers = tiny_app.handlers
    final = stream(handlers, data_url(sample("golf_ball")), explain="one class for all", cls="tench")[-1]
    assert all(summary.startswith("**tench**") for _, summary, _ in final.columns)
    for kwargs, message in [
        ({"method": "nomethod"}, "method must be one of"),
        ({"metrics": "false"}, "metrics must be true or false"),
        ({"opacity": "0.5"}, "opacity must be a number"),
        ({"explain": "the true class"}, "true class is known only for the examples"),
        ({"explain": "one class for all", "cls": "x" * 10_000}, "unknown class"),
    ]:
        with pytest.raises(ParameterError, match=message) as e:
            stream(handlers, data_url(sample("tench")), **kwargs)
        assert len(str(e.value)) < 400


def test_the_page_keeps_an_error_in_the_page_and_opacity_reblends_without_a_model(tiny_app, monkeypatch):
    handlers = tiny_app.handlers
    session = Session()
    no_progress = lambda *a, **k: None
    steps = list(
        handlers.page(
            data_url(sample("tench")), "tiny", "gradcam", TOP1, "", 0.5, False, "", True, session, no_progress
        )
    )
    assert set(session.results) == set(TRIO)
    first = picture(steps[-1][2])
    import app.handlers

    monkeypatch.setattr(app.handlers, "explain_zoo", lambda *a, **k: pytest.fail("a model ran"))
    view, *maps, download, dsnet_diff, ds2net_diff = handlers.reblend(session, 0.9)
    assert len(maps) == 3 and not np.array_equal(picture(maps[0]), first)
    assert Path(download).is_file() and download != steps[-1][DOWNLOAD]  # the download follows the opacity
    assert picture(dsnet_diff).shape == picture(view).shape  # the difference views are drawn again too
    bad = list(
        handlers.page(
            {"path": "/etc/hostname"}, "tiny", "gradcam", TOP1, "", 0.5, False, "", True, session, no_progress
        )
    )
    assert len(bad) == 1 and bad[0][0].startswith("⚠️ This image input is not accepted")
    assert all(v is None for v in bad[0][1 : N_OUT - 1 : 3])  # old maps cleared


def test_a_new_image_clears_the_last_results_and_the_example(tiny_app):
    handlers = tiny_app.handlers
    session = Session()
    no_progress = lambda *a, **k: None
    example = handlers.examples.examples[0]
    shown = list(handlers.page(None, "tiny", "gradcam", TOP1, "", 0.5, False, example.id, True, session, no_progress))[
        -1
    ]
    assert session.results and shown[2] is not None
    cleared = handlers.own_image(example.id, session)  # an upload after an example
    assert cleared[:2] == ("", "") and cleared[4] == "New image: press **Explain**."
    assert [v for v in cleared[5 : 4 + N_OUT] if v not in (None, "")] == []  # no view, map, caption, top-5 or download
    assert cleared[-1] is session and session.results == {}
    assert handlers.reblend(session, 0.8) == (gr.skip(),) * 7  # the slider brings nothing back
    assert all(v == gr.skip() for v in handlers.own_image("", session))  # nothing to forget: no update


def test_a_missing_model_degrades_to_a_friendly_line_in_its_column(tmp_path, monkeypatch):
    from dsnet.zoo import loader as zoo

    monkeypatch.setenv("DSNET_MANIFEST", str(write_tiny_zoo(tmp_path, unavailable=("dsnet50",))))
    handlers = build_app(None, "tiny").handlers
    final = stream(handlers, data_url(sample("tench")))[-1]
    assert final.columns[1] == (None, "**Not available.** No tiny weights exist for dsnet50 yet.", None)
    assert final.columns[0][0] is not None and final.columns[2][0] is not None
    assert str(tmp_path) not in str(final.values())
    zoo.default_zoo().forget()


def test_examples_ship_with_the_app_and_a_gallery_adds_a_sample():
    manifest = load_manifest()
    shipped = load_examples(manifest)
    files = [p for p in SHIPPED.rglob("*") if p.is_file()]
    assert len(shipped) == len([p for p in files if p.suffix == ".JPEG"]) and 20 <= len(shipped) <= 40
    assert sum(p.stat().st_size for p in files) < 2_000_000
    boxed = [e for e in shipped.examples if e.boxes]
    assert len(boxed) == 10 and {e.wnid for e in boxed} == set(manifest.label_sets["imagenette10"].wnids)
    assert shipped.examples[:10] == boxed and all(e.origin.startswith("ILSVRC2012 val") for e in boxed)
    assert all(0 <= b.x0 < b.x1 <= 224 and 0 <= b.y0 < b.y1 <= 224 for e in boxed for b in e.boxes)
    assert {e.caption for e in shipped.examples} == set(manifest.label_sets["imagenette10"].names)
    for e in shipped.examples:
        with Image.open(e.path) as im:
            assert max(im.size) <= 256
    with_gallery = load_examples(manifest, str(SAMPLES), "imagenet")
    extra = with_gallery.examples[len(shipped) :]
    assert {e.wnid for e in extra[:10]} == set(FIGURE5_WNIDS)  # Figure 5's classes first
    assert all(e.id.startswith("gallery:") and not e.id.startswith("gallery:/") for e in extra)
    assert with_gallery.get(extra[0].id) == extra[0] and with_gallery.get(len(shipped)) == extra[0]
    nette = load_examples(manifest, str(IMAGENETTE / "val"))
    assert len(nette) == len(shipped) + 30


def test_gradio_client_one_argument_call(live_app):
    from gradio_client import Client, handle_file

    client = Client(live_app.url, verbose=False)
    out = client.predict(handle_file(str(sample("golf_ball"))), api_name="/explain")
    assert len(out) == N_OUT
    for i in (2, 5, 8):
        with Image.open(out[i]) as im:
            assert im.size == (256, 256) and np.asarray(im).std() > 5
        assert "(explained)" in out[i + 1]
        assert len(out[i + 2]["confidences"]) == 5
    assert Path(out[DOWNLOAD]).stat().st_size > 10_000
    for diff in out[DOWNLOAD + 1 : -1]:  # where DSNet50 / DS2Net50 look and ResNet50 does not
        with Image.open(diff) as im:
            assert im.size == (256, 256)
    assert out[-1] is None  # an upload has no object boxes: no localisation numbers
    ids = client.predict(api_name="/examples")
    assert ids[0]["boxes"] >= 1 and ids[0]["origin"].startswith("ILSVRC2012 val")
    out = client.predict(None, example=ids[0]["id"], method="gradcam++", opacity=0.3, api_name="/explain")
    assert f"True class: **{ids[0]['class']}**" in out[0]
    numbers = out[-1]
    assert set(numbers) == set(TRIO)
    for model, n in numbers.items():
        assert len(n["boxes_in_view"]) >= 1 and 0 < n["box_coverage"] < 1 and 0 <= n["energy_in_boxes"] <= 1
        assert isinstance(n["peak_in_box"], bool)
        assert ("peak inside the box ✓" if n["peak_in_box"] else "peak inside the box ✗") in out[
            3 + 3 * TRIO.index(model)
        ]


def test_a_run_whose_image_is_replaced_stops_and_leaves_the_new_state_alone(tiny_app):
    handlers = tiny_app.handlers
    session = Session()
    no_progress = lambda *a, **k: None
    example = handlers.examples.examples[0]
    run = handlers.page(None, "tiny", "gradcam", TOP1, "", 0.5, False, example.id, True, session, no_progress)
    next(run), next(run)  # cleared, then the first column
    assert session.busy and session.results
    handlers.own_image(example.id, session)  # a new image while the run is on
    assert list(run) == []  # nothing more of the old run is shown
    assert session.results == {} and not session.busy


def test_box_numbers_say_when_the_map_explains_another_class_than_the_boxed_one(tiny_app):
    handlers = tiny_app.handlers
    boxed = next(e for e in handlers.examples.examples if e.boxes and e.caption != "golf ball")
    final = stream(handlers, None, explain="one class for all", cls="golf ball", example=boxed.id)[-1]
    for _, summary, _ in final.columns:
        assert f"the box is the {boxed.caption}'s, the map explains golf ball" in summary
    final = stream(handlers, None, explain="the true class", example=boxed.id)[-1]
    assert all("the box is the" not in summary for _, summary, _ in final.columns)
