import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import os

from app.ui import FIGURE5_WNIDS, build_app, explain_handler, gallery_items

from conftest import IMAGENETTE, SAMPLES, TRIO, sample, write_tiny_zoo

TOP1 = "each model's top-1"


def run_handler(*args):
    """All yields of the streaming handler; the last one is the final state."""
    return list(explain_handler(*args))


def test_blocks_build_with_a_named_api(tiny_zoo):
    demo = build_app(str(SAMPLES), "tiny")
    api = demo.get_api_info()
    assert "/explain" in api["named_endpoints"]
    assert len(api["named_endpoints"]["/explain"]["parameters"]) == 8


def test_handler_streams_three_results_for_a_real_image(tiny_zoo):
    steps = run_handler(str(sample("golf_ball")), "tiny", "gradcam", TOP1, None, 0.5, True, "")
    assert len(steps) == 4  # one update per model as it finishes, then the download
    final = steps[-1]
    for i in range(3):
        overlay, caption, top5 = final[3 * i: 3 * i + 3]
        assert overlay.shape == (256, 256, 3) and overlay.dtype == np.uint8  # 128 px view, shown at 256
        assert caption.startswith("**Explains:**") and "Focus:" in caption
        assert len(top5) == 5 and abs(sum(top5.values()) - 1) < 0.2
    assert steps[0][3] is None and steps[1][3] is not None  # column 2 arrived after column 1
    with Image.open(final[-1]) as im:
        assert im.format == "PNG"


def test_one_class_for_all_and_true_class(tiny_zoo):
    final = run_handler(str(sample("golf_ball")), "tiny", "gradcam", "one class for all", "golf ball", 0.5, False, "")[-1]
    assert all("golf ball" in final[3 * i + 1] for i in range(3))
    final = run_handler(str(sample("golf_ball")), "tiny", "gradcam", "the true class", None, 0.5, False, "n03888257")[-1]
    assert all("parachute" in final[3 * i + 1] for i in range(3))


def test_a_missing_model_degrades_to_a_message_in_its_column(tmp_path, monkeypatch):
    from dsnet import zoo
    monkeypatch.setenv("DSNET_MANIFEST", str(write_tiny_zoo(tmp_path, unavailable=("dsnet50",))))
    zoo._LOADED.clear()
    final = run_handler(str(sample("tench")), "tiny", "gradcam", TOP1, None, 0.5, False, "")[-1]
    assert final[3] is None and final[4].startswith("**Not available.**") and "withheld" in final[4]
    assert final[0] is not None and final[6] is not None
    zoo._LOADED.clear()


def test_gallery_reads_labelled_folders_and_falls_back_to_gradio_photos(tmp_path):
    items = gallery_items(str(SAMPLES), "imagenet")
    assert {it.wnid for it in items[:10]} == set(FIGURE5_WNIDS)  # Figure 5's classes first
    assert {it.caption for it in items[:10]} >= {"obelisk", "knee pad", "airship", "ground beetle"}
    nette = gallery_items(str(IMAGENETTE / "val"), "imagenette")
    assert all(it.wnid and it.caption for it in nette)
    fallback = gallery_items(None, "imagenette")
    assert fallback and all(Path(it.path).is_file() and it.wnid is None for it in fallback)


def test_gradio_client_end_to_end(live_app):
    from gradio_client import Client, handle_file
    client = Client(live_app.url, verbose=False)
    out = client.predict(handle_file(str(sample("golf_ball"))), live_app.zoo, "gradcam", TOP1, None, 0.5, False, "",
                         api_name="/explain")
    assert len(out) == 10
    for i in range(3):
        with Image.open(out[3 * i]) as im:
            assert im.size == (256, 256) and np.asarray(im).std() > 5
        assert out[3 * i + 1].startswith("**Explains:**")
        assert len(out[3 * i + 2]["confidences"]) == 5
    assert Path(out[-1]).stat().st_size > 10_000


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (apt-get install chromium)")
def test_real_browser_upload_click_and_see_three_heatmaps(live_app, tmp_path):
    """$DSNET_SCREENSHOT keeps the screenshot (README's picture is made this way)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(live_app.url)
        page.locator("input[type=file]").first.set_input_files(str(sample("golf_ball")))
        page.get_by_role("img").first.wait_for(timeout=30_000)
        page.get_by_role("button", name="Explain").click()
        page.get_by_text("Explains:").nth(2).wait_for(timeout=60_000)
        # The three heatmap files load after the captions appear: wait until all three are decoded.
        page.wait_for_function("""Array.from(document.querySelectorAll('img'))
            .filter(i => i.src.includes('/file=') && i.naturalWidth === 256 && i.complete).length >= 3""",
                               timeout=30_000)
        for name in TRIO:
            assert page.get_by_text(f"{name} top-5").count() >= 1
        shot = Path(os.environ.get("DSNET_SCREENSHOT", tmp_path / "screenshot.png"))
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 50_000
