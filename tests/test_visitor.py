"""A visitor's first minutes, in real Chromium, against ``python app.py`` started as a Space starts it.

$DSNET_SCREENSHOT_DIR keeps the desktop and phone screenshots (README's pictures are made this way).
"""

import os
import shutil
from pathlib import Path

import pytest

from conftest import IMAGENETTE, ROOT, sample, spawn_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)"),
]
ERROR_WORDS = ("Error", "Traceback", str(ROOT), "/tmp/", ".pth", "allowed_paths")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """No arguments, no settings: what a Space visitor gets."""
    app = spawn_app(tmp_path_factory.mktemp("space"))
    yield app
    app.stop()


def explained_count(app) -> int:
    return app.log_text().count(" INFO explained ")


def wait_for_three_maps(page, previous: set[str] = frozenset(), timeout=120_000) -> set[str]:
    """Until three heatmaps (256 px, loaded) are shown that were not there before; their URLs."""
    page.wait_for_function(
        """prev => Array.from(document.querySelectorAll('img'))
        .filter(i => i.src.includes('/file=') && i.src.endsWith('.png') && i.naturalWidth === 256 && i.complete
                && !prev.includes(i.src)).length >= 4""",
        arg=list(previous),
        timeout=timeout,
    )  # view + 3 maps
    return set(
        page.evaluate("""() => Array.from(document.querySelectorAll('img'))
        .filter(i => i.src.includes('/file=') && i.naturalWidth === 256 && i.src.endsWith('.png')).map(i => i.src)""")
    )


def wait_or_show(page, js: str, timeout: float = 120_000) -> None:
    """page.wait_for_function, failing with what the page says (a timeout alone says nothing)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(js, timeout=timeout)
    except PlaywrightTimeout:
        pytest.fail(f"the page never showed {js!r}; it says:\n{page_text(page)[:3000]}")


def page_text(page) -> str:
    return page.locator("body").inner_text()


def assert_no_error_text(page):
    text = page_text(page)
    for word in ERROR_WORDS:
        assert word not in text, (word, text[:3000])


def explain_the_first_example(browser, url: str, timeout: float):
    """A new page at ``url``: the first example clicked, then Explain, until the three maps show; (page, maps)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.get_by_role("button", name="Thumbnail 1 of").first.click()
    page.get_by_text("True class:").wait_for(timeout=30_000)
    page.get_by_role("button", name="Explain", exact=True).click()
    page.get_by_text("(explained)").nth(2).wait_for(timeout=timeout)
    return page, wait_for_three_maps(page)


def test_a_visitor_journey(space, browser, tmp_path):
    shots = Path(os.environ.get("DSNET_SCREENSHOT_DIR", tmp_path))
    # 1. click an example, then Explain: three maps, top-5, ✓/✗, no error anywhere
    page, maps = explain_the_first_example(browser, space.url, timeout=120_000)
    text = page_text(page)
    assert text.count("✓ top-1 is the true class") + text.count("✗ top-1 is") == 3
    assert "These models know only 10 classes" in text and ("say **" not in text)
    # the first example is an ILSVRC val photo with its object box: a localisation line per model, the box
    # drawn, and the two difference views
    assert "ILSVRC2012 val, with its object boxes" in text
    assert text.count("peak inside the box ✓") + text.count("peak inside the box ✗") == 3
    assert text.count("of the map inside the box (the box covers") == 3
    page.wait_for_function(
        """() => Array.from(document.querySelectorAll('img'))
        .filter(i => i.src.includes('-minus-resnet50') && i.complete && i.naturalWidth === 256).length === 2""",
        timeout=30_000,
    )
    assert_no_error_text(page)
    page.screenshot(path=str(shots / "screenshot.png"), full_page=True)
    maps = wait_for_three_maps(page)
    # the box outline off: the maps are drawn again without it, and no model runs
    page.get_by_label("Outline the object's box (examples with boxes)").uncheck()
    page.wait_for_function(
        """prev => Array.from(document.querySelectorAll('img'))
        .filter(i => i.src.endsWith('.png') && i.naturalWidth === 256 && i.complete && !prev.includes(i.src))
        .length >= 4""",
        arg=list(maps),
        timeout=30_000,
    )
    assert explained_count(space) == 3
    page.get_by_label("Outline the object's box (examples with boxes)").check()
    # the evidence section: read from the saved artifacts, no model runs
    page.get_by_text("The evidence: how the zoo's maps score").click()
    wait_or_show(page, "() => document.body.innerText.includes('Is the map on the object?')", timeout=30_000)
    assert "MaxBoxAccV2" in page_text(page) and "Accuracy over 5 training seeds" in page_text(page)
    page.locator("#evidence-text").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "screenshot-evidence.png"), full_page=True)
    assert explained_count(space) == 3
    runs = explained_count(space)
    assert runs == 3

    # 2. opacity: the maps change at once, no model runs
    box = page.get_by_label("number input for Heatmap opacity")
    box.fill("0.9")
    box.press("Enter")
    page.wait_for_function(
        """prev => Array.from(document.querySelectorAll('img'))
        .filter(i => i.src.endsWith('.png') && i.naturalWidth === 256 && i.complete && !prev.includes(i.src))
        .length >= 3""",
        arg=list(maps),
        timeout=30_000,
    )
    assert explained_count(space) == runs

    # 3. another method, from the Advanced section
    page.get_by_text("Advanced: CAM method").click()
    method = page.get_by_label("CAM method")
    method.click()
    page.get_by_role("option", name="layercam").first.click()
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('input')).some(i => i.value && i.value.startsWith('layercam'))",
        timeout=30_000,
    )
    page.get_by_role("button", name="Explain", exact=True).click()
    wait_or_show(page, "() => document.body.innerText.split('· layercam ·').length - 1 >= 3")
    assert explained_count(space) == runs + 3

    # 4. a photo outside the label set: the notice is on the page, no true class is claimed
    page.wait_for_timeout(1500)  # the run's download comes after its columns; a person reads them first
    page.locator("input[type=file]").first.set_input_files(str(sample("zebra")))
    page.wait_for_function(
        '() => !document.body.innerText.includes("from the example\'s label") && Array.from('
        "document.querySelectorAll('img')).some(i => i.src.includes('zebra') && i.complete)",
        timeout=30_000,
    )  # the upload has arrived and is shown
    page.wait_for_timeout(1000)  # as a person would: the page settles after an upload
    assert page.locator("button.thumbnail-item.selected").count() == 0  # the example is no longer marked
    wait_or_show(page, "() => document.body.innerText.includes('New image: press Explain.')", timeout=10_000)
    text = page_text(page)  # the last maps belonged to the example: gone, not shown beside the new photo
    assert "(explained)" not in text and "True class" not in text and "peak inside the box" not in text
    page.screenshot(path=str(tmp_path / "new-image.png"), full_page=True)
    page.get_by_role("button", name="Explain", exact=True).click()
    wait_or_show(
        page,
        "() => document.body.innerText.split('· layercam ·').length - 1 >= 3 && "
        "!document.body.innerText.includes('✓') && !document.body.innerText.includes('✗')",
    )
    assert "These models know only 10 classes" in page_text(page)
    assert "peak inside the box" not in page_text(page)  # an upload has no box: no localisation line
    assert page.get_by_label("the true class").count() == 0  # offered for examples only

    # 5. a file that is not an image: refused at the upload itself (nothing stored), one sentence on the page
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("these are notes, not a photo\n")
    page.locator("input[type=file]").first.set_input_files(str(not_image))
    page.get_by_text("Only images can be uploaded (JPEG, PNG, WebP, GIF, BMP, TIFF or AVIF)").wait_for(timeout=30_000)
    # the refused file never became the page's image (Gradio empties the input); no model ran for it
    runs_before = explained_count(space)
    assert "Drop Image Here" in page_text(page)
    page.get_by_role("button", name="Explain", exact=True).click()
    page.get_by_text("Upload an image or pick an example first.").wait_for(timeout=30_000)
    assert explained_count(space) == runs_before and "(explained)" not in page_text(page)

    # 6. the imagenet zoo, offline: one friendly line per column, no server path
    page.get_by_role("button", name="Thumbnail 2 of").first.click()
    page.get_by_label("Model zoo").click()
    page.get_by_role("option", name="imagenet (1000 classes)").first.click()
    page.get_by_role("button", name="Explain", exact=True).click()
    wait_or_show(page, "() => document.body.innerText.split('Not available.').length - 1 >= 3")
    text = page_text(page)
    assert "could not be downloaded" in text and "No imagenet weights exist for dsnet50 yet" in text
    for word in (str(ROOT), "/tmp/", ".pth", "http", "sha256", "URLError"):
        assert word not in text.split("Running on")[0], word
    page.close()


def test_on_a_phone_explain_is_right_under_the_image(space, browser, tmp_path):
    shots = Path(os.environ.get("DSNET_SCREENSHOT_DIR", tmp_path))
    phone = browser.new_page(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    phone.goto(space.url)
    upload = phone.get_by_text("Drop Image Here").bounding_box()
    button = phone.get_by_role("button", name="Explain", exact=True).bounding_box()
    assert upload["y"] < button["y"] < 844, "Explain is not right under the image on the first screen"
    phone.get_by_role("button", name="Thumbnail 1 of").first.tap()
    phone.get_by_text("True class:").wait_for(timeout=30_000)
    phone.get_by_role("button", name="Explain", exact=True).tap()
    phone.get_by_text("(explained)").nth(2).wait_for(timeout=120_000)
    phone.get_by_text("All three models say").or_(
        phone.get_by_text("The models disagree")
    ).first.scroll_into_view_if_needed()
    phone.wait_for_timeout(1000)
    phone.screenshot(path=str(shots / "screenshot-phone.png"))
    phone.close()


def test_a_gallery_outside_the_working_directory(browser, tmp_path):
    """``--gallery`` on a folder elsewhere: its photos are picked by id too, and explained."""
    app = spawn_app(tmp_path, "--gallery", str(IMAGENETTE / "val"))
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(app.url)
        from app.examples import SHIPPED

        shipped = len([p for p in SHIPPED.rglob("*.JPEG")])
        page.get_by_role("button", name=f"Thumbnail {shipped + 1} of {shipped + 30}").click()  # the gallery's first
        page.get_by_text("True class:").wait_for(timeout=30_000)
        page.get_by_role("button", name="Explain", exact=True).click()
        page.get_by_text("(explained)").nth(2).wait_for(timeout=120_000)
        assert_no_error_text(page)
        page.close()
    finally:
        app.stop()


def test_an_explain_click_while_the_last_run_still_finishes_is_not_dropped(space, browser):
    """Gradio drops a click on a button whose last run has not finished (its default trigger mode);
    a visitor who clicks again (or uploads and clicks at once) would keep the old maps beside a new
    image. The page runs such a click after the last run instead."""
    import time

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(space.url)
    page.get_by_role("button", name="Thumbnail 4 of").first.click()
    page.get_by_text("True class:").wait_for(timeout=30_000)
    before = explained_count(space)
    explain = page.get_by_role("button", name="Explain", exact=True)
    explain.click()
    page.wait_for_function("() => document.body.innerText.includes('(explained)')", timeout=60_000)
    explain.click()  # the first run's other columns and its download are still on their way
    deadline = time.monotonic() + 60
    while explained_count(space) < before + 6 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert explained_count(space) == before + 6
    page.close()


def test_another_example_during_a_run_stops_it(space, browser):
    """The last columns of a run still on its way must not land beside the next image."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(space.url)
    page.get_by_text("Advanced: CAM method").click()
    page.get_by_text("Faithfulness numbers (slower)").click()  # seconds per model: time to switch
    page.get_by_role("button", name="Thumbnail 1 of").first.click()
    page.get_by_text("True class:").wait_for(timeout=30_000)
    page.get_by_role("button", name="Explain", exact=True).click()
    page.get_by_text("(explained)").first.wait_for(timeout=60_000)
    assert page_text(page).count("(explained)") < 3, "the run finished before the switch: nothing was tested"
    page.get_by_role("button", name="Thumbnail 13 of").first.click()
    page.get_by_text("New image: press Explain.").wait_for(timeout=30_000)
    page.wait_for_timeout(8000)  # longer than the rest of the run would take
    text = page_text(page)
    assert "(explained)" not in text and "New image: press Explain." in text, text[:2000]
    page.close()


def test_a_visitor_is_served_while_a_flooding_client_is_refused(browser, tmp_path):
    """Behind a proxy (as on a Space): one address floods ScoreCAM requests the whole time; it gets its
    three places and then 429s, and a visitor's journey still works beside it."""
    import threading
    import time

    import httpx

    app = spawn_app(tmp_path, env={"DSNET_TRUSTED_PROXIES": "1"})
    flooder = {"X-Forwarded-For": "203.0.113.99"}
    example = sorted((ROOT / "app" / "examples").glob("*.JPEG"))[0].stem
    slow = {"data": [None, "imagenette", "scorecam", "each model's top-1", "", 0.5, False, example]}
    codes: list[int] = []
    stop = threading.Event()

    def flood():
        deadline = time.monotonic() + 240
        while not stop.is_set() and time.monotonic() < deadline:
            codes.append(
                httpx.post(app.url + "gradio_api/call/explain", json=slow, headers=flooder, timeout=30).status_code
            )
            stop.wait(0.2)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        page, _ = explain_the_first_example(browser, app.url, timeout=180_000)
        assert_no_error_text(page)
        page.close()
    finally:
        stop.set()
        thread.join(timeout=60)
        app.stop()
    assert codes.count(200) == 3 and codes.count(429) >= 5, codes
