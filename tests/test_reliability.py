"""Issue 6 against a live server on 127.0.0.1: bad inputs, bad parameters, concurrency, limits, access."""

import base64
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.uploads import REFUSED_INPUT
from badimages import EXPECTED, awkward_inputs, bad_inputs
from conftest import IMAGENETTE, ROOT, record, sample
from dsnet.cam.service import METHODS

pytestmark = pytest.mark.slow  # a live server, hundreds of requests

TOP1 = "each model's top-1"
HEATMAPS, CAPTIONS = (2, 5, 8), (3, 6, 9)  # /explain returns status, model view, then per model heatmap, summary, top-5


@pytest.fixture(scope="module")
def client(live_app):
    from gradio_client import Client

    return Client(live_app.url, verbose=False)


def call(client, live_app, image, method="gradcam", mode=TOP1, cls=None, metrics=False, zoo=None):
    from gradio_client import handle_file

    return client.predict(
        handle_file(str(image)), zoo or live_app.zoo, method, mode, cls, 0.5, metrics, "", api_name="/explain"
    )


def http_call(live_app, data: list, timeout: float = 120) -> tuple[str, str]:
    """Plain HTTP API: POST then read the event stream; returns (last event, its data)."""
    req = urllib.request.Request(
        live_app.url + "gradio_api/call/explain",
        json.dumps({"data": data}).encode(),
        {"Content-Type": "application/json"},
    )
    event_id = json.loads(urllib.request.urlopen(req, timeout=30).read())["event_id"]
    with urllib.request.urlopen(f"{live_app.url}gradio_api/call/explain/{event_id}", timeout=timeout) as r:
        lines = r.read().decode().strip().splitlines()
    return lines[-2].removeprefix("event: "), lines[-1].removeprefix("data: ")


def file_data(url: str) -> dict:
    return {"path": None, "url": url, "meta": {"_type": "gradio.FileData"}}


def test_every_bad_image_gets_its_message_and_the_server_keeps_serving(client, live_app, tmp_path):
    """A file that does not even start as an image is refused by the upload route (HTTP 415, never
    stored); one that does but cannot be used gets its own message from the handler."""
    import httpx
    from gradio_client.exceptions import AppError

    from dsnet.cam.images import looks_like_image

    for name, (data, filename) in bad_inputs().items():
        path = tmp_path / filename
        path.write_bytes(data)
        if not looks_like_image(data[:16]):
            with pytest.raises(httpx.HTTPStatusError) as refused:
                call(client, live_app, path)
            assert refused.value.response.status_code == 415, name
            assert refused.value.response.text.startswith("Only images can be uploaded"), name
            continue
        with pytest.raises(AppError, match=EXPECTED[name]):
            call(client, live_app, path)
    out = call(client, live_app, sample("golf_ball"))
    assert "(explained)" in out[3]
    record("reliability", "bad_inputs_refused", sorted(bad_inputs()))


def test_awkward_images_work_over_the_api_and_say_what_was_done(client, live_app, tmp_path):
    for name, (data, filename, note) in awkward_inputs().items():
        path = tmp_path / filename
        path.write_bytes(data)
        out = call(client, live_app, path)
        assert all("(explained)" in out[i] for i in CAPTIONS), name
        if note:
            assert note in out[3], (name, out[3])
    record("reliability", "awkward_inputs_served", sorted(awkward_inputs()))


def test_data_url_in_the_payload_is_validated_in_the_handler(live_app):
    rest = [live_app.zoo, "gradcam", TOP1, None, 0.5, False, ""]
    good = "data:image/jpeg;base64," + base64.b64encode(sample("golf_ball").read_bytes()).decode()
    event, data = http_call(live_app, [file_data(good), *rest])
    assert event == "complete" and "(explained)" in data
    bomb = bad_inputs()["decompression_bomb"][0]
    event, data = http_call(live_app, [file_data("data:image/png;base64," + base64.b64encode(bomb).decode()), *rest])
    assert event == "error" and "limit is 40 MP" in data
    event, data = http_call(live_app, [file_data("http://127.0.0.1:1/x.jpg"), *rest])  # never fetched
    assert event == "error" and json.loads(data)["error"] == REFUSED_INPUT


@pytest.mark.parametrize(
    "args,message",
    [
        (("nomethod", TOP1, None), "method must be one of"),
        (("gradcam", "one class for all", "golfball x"), "unknown class"),
        (("gradcam", "one class for all", "999"), "out of range"),
        (("gradcam", "one class for all", None), "pick the class"),
        (("gradcam", "the true class", None), "true class is known only for the examples"),
        (("gradcam", "explain everything", None), "explain must be one of"),
    ],
)
def test_bad_parameters_get_a_clear_error_never_a_traceback(live_app, args, message):
    method, mode, cls = args
    image = "data:image/jpeg;base64," + base64.b64encode(sample("tench").read_bytes()).decode()
    event, data = http_call(live_app, [file_data(image), live_app.zoo, method, mode, cls, 0.5, False, ""])
    assert event == "error" and message in data and "Traceback" not in data


def test_unknown_zoo_and_wrong_types(live_app):
    image = file_data("data:image/jpeg;base64," + base64.b64encode(sample("tench").read_bytes()).decode())
    event, data = http_call(live_app, [image, "nozoo", "gradcam", TOP1, None, 0.5, False, ""])
    assert event == "error" and "zoo must be one of imagenette" in data and "'nozoo'" in data
    for bad in (
        [image, live_app.zoo, "gradcam", TOP1, None, "abc", False, ""],
        [image, 5, "gradcam", TOP1, None, 0.5, False, ""],
        [image, live_app.zoo, "gradcam", TOP1, None, 7.0, False, ""],
    ):
        event, data = http_call(live_app, bad)
        assert event == "error" and json.loads(data)["error"] and "Traceback" not in data


def _fingerprint(out) -> list:
    return [
        (
            np.asarray(Image.open(out[i])).tobytes(),
            [ln for ln in out[i + 1].splitlines() if " ms · " not in ln],
            out[i + 2],
        )
        for i in HEATMAPS
    ]


def test_16_simultaneous_requests_each_get_their_lone_result(client, live_app):
    images = sorted((IMAGENETTE / "val").glob("*/*.JPEG"))[::250][:16]
    methods = [name for name, m in METHODS.items() if not m.whole_network]  # every method that is not minutes
    classes = [None, "golf ball", "tench", None, "church", "parachute", None, "chain saw"]
    jobs = [
        (img, methods[i % len(methods)], TOP1 if classes[i % 8] is None else "one class for all", classes[i % 8])
        for i, img in enumerate(images)
    ]
    lone = [_fingerprint(call(client, live_app, *job)) for job in jobs]
    submitted = [client.submit(*_args(live_app, *job), api_name="/explain") for job in jobs]
    together = [_fingerprint(job.result(timeout=300)) for job in submitted]
    assert together == lone
    record("reliability", "simultaneous_equal_to_lone", len(jobs))


def _args(live_app, image, method, mode, cls):
    from gradio_client import handle_file

    return handle_file(str(image)), live_app.zoo, method, mode, cls, 0.5, False, ""


def test_a_flood_beyond_the_queue_bound_is_refused_as_busy(live_app):
    """Many clients at once (each its own X-Forwarded-For, as a Space's proxy sends it): the bound for everyone."""
    from app.settings import ServingSettings

    QUEUE_SIZE = ServingSettings.from_env().queue_size
    image = file_data("data:image/jpeg;base64," + base64.b64encode(sample("tench").read_bytes()).decode())
    body = json.dumps({"data": [image, live_app.zoo, "ablationcam", TOP1, None, 0.5, False, ""]}).encode()
    refused, accepted = [], []
    barrier = threading.Barrier(3 * QUEUE_SIZE)

    def post(i):
        req = urllib.request.Request(
            live_app.url + "gradio_api/call/explain",
            body,
            {"Content-Type": "application/json", "X-Forwarded-For": f"198.18.{i // 250}.{i % 250}"},
        )
        barrier.wait()
        try:
            accepted.append(json.loads(urllib.request.urlopen(req, timeout=30).read())["event_id"])
        except urllib.error.HTTPError as e:
            refused.append((e.code, e.read().decode()))

    threads = [threading.Thread(target=post, args=(i,)) for i in range(3 * QUEUE_SIZE)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert refused and all(code == 503 and "Queue is full" in text for code, text in refused)
    assert len(accepted) <= QUEUE_SIZE + 8  # a few may have left the queue while the flood was posted
    with urllib.request.urlopen(f"{live_app.url}gradio_api/call/explain/{accepted[-1]}", timeout=300) as r:
        assert b"event: complete" in r.read()  # the accepted ones are served, and so is the next one
    record(
        "reliability", "flood", {"sent": len(threads), "queued_and_served": len(accepted), "refused_503": len(refused)}
    )


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_300_sequential_requests_leave_memory_flat(live_app):
    """The server runs in this process, so its resident memory is ours."""
    images = sorted((IMAGENETTE / "val").glob("*/*.JPEG"))[::120]
    payloads = ["data:image/jpeg;base64," + base64.b64encode(p.read_bytes()).decode() for p in images]
    rest = [live_app.zoo, "gradcam", TOP1, None, 0.5, False, ""]
    for i in range(40):  # warm-up: allocator pools, caches of gradio and torch
        assert http_call(live_app, [file_data(payloads[i % len(payloads)]), *rest])[0] == "complete"
    before = _rss_mb()
    for i in range(300):
        assert http_call(live_app, [file_data(payloads[i % len(payloads)]), *rest])[0] == "complete"
    growth = _rss_mb() - before
    assert growth < 40, f"resident memory grew by {growth:.0f} MB over 300 requests"
    record(
        "reliability",
        "memory_mb",
        {"after_40_warm_up": round(before), "after_300_more": round(before + growth), "growth": round(growth, 1)},
    )


@pytest.mark.parametrize(
    "target",
    ["/etc/passwd", str(ROOT / "app.py"), str(ROOT / "checkpoints" / "manifest.json"), str(ROOT / "checkpoints")],
)
def test_the_server_serves_no_file_outside_its_own(live_app, target):
    for prefix in ("gradio_api/file=", "file=", "gradio_api/file/"):
        try:
            with urllib.request.urlopen(live_app.url + prefix + target, timeout=10) as r:
                body = r.read()
            assert b"root:" not in body and b"build_app" not in body and b"sha256" not in body, prefix
        except urllib.error.HTTPError as e:
            assert e.code in (403, 404, 405), (prefix, e.code)


def test_it_listens_on_loopback_only(live_app):
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port = local.rsplit(":", 1)
            if state == "0A" and int(port, 16) == live_app.port:
                listening.append(address)
    assert listening == ["0100007F"], listening


def test_uploaded_files_are_deleted_after_their_time(tiny_zoo):
    """A second server whose cache time is 2 s: an upload nobody uses is on disk, then gone."""
    import time
    from dataclasses import replace

    import httpx

    from app import build_app, launch
    from app.settings import ServingSettings
    from conftest import free_port

    settings = replace(ServingSettings.from_env(), cache_seconds=2)
    built = build_app(None, "tiny", settings)
    port = free_port()
    launch(built, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with open(sample("tench"), "rb") as f:
            paths = httpx.post(f"http://127.0.0.1:{port}/gradio_api/upload", files={"files": f}, timeout=30).json()
        uploaded = Path(paths[0])
        assert uploaded.is_file()
        deadline = time.monotonic() + 30
        while uploaded.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not uploaded.exists()
    finally:
        built.demo.close()


def test_a_picture_being_fetched_is_never_rewritten_under_the_reader(live_app):
    """Two visitors explain the same example again and again while three others fetch its pictures: every
    response has the length it declared. (Gradio rewrites a returned array's cached PNG in place each time
    the same picture comes back; before app/outputs.py some of these fetches were cut off: the test failed.)"""
    import http.client
    import time

    from app.examples import load_examples
    from dsnet.zoo.manifest import load_manifest

    example = load_examples(load_manifest(), None, live_app.zoo).ids()[0]
    data = [None, live_app.zoo, "gradcam", TOP1, "", 0.5, False, example]

    def picture_urls() -> list[str]:
        event, out = http_call(live_app, data)
        assert event == "complete", out
        return [
            d["url"].split(f":{live_app.port}", 1)[1]
            for d in json.loads(out)
            if isinstance(d, dict) and str(d.get("url", "")).endswith(".png")
        ]

    urls, stop, cut, whole, errors = picture_urls(), time.monotonic() + 15, [], [0], []

    def explain_again():
        try:
            while time.monotonic() < stop:
                urls[:] = picture_urls()
        except Exception as e:
            errors.append(e)

    def fetch():
        while time.monotonic() < stop:
            for url in list(urls):
                conn = http.client.HTTPConnection("127.0.0.1", live_app.port, timeout=30)
                conn.request("GET", url)
                response = conn.getresponse()
                try:
                    body = response.read()
                    if response.status == 200 and len(body) == int(response.getheader("content-length")):
                        whole[0] += 1
                    else:
                        cut.append((url, response.status))
                except http.client.IncompleteRead:
                    cut.append((url, "incomplete"))
                finally:
                    conn.close()

    threads = [threading.Thread(target=explain_again) for _ in range(2)] + [
        threading.Thread(target=fetch) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and whole[0] > 300 and not cut, (errors, whole[0], cut[:5])
    record("reliability", "pictures_fetched_while_reexplained", {"whole": whole[0], "cut": len(cut)})


def test_the_server_keeps_at_most_page_states_pages(tiny_zoo):
    """DSNET_PAGE_STATES reaches Gradio: with room for 3, the 5th page's call drops the oldest pages'
    state (each holds ~110 KB; Gradio's own default keeps 10,000)."""
    from dataclasses import replace

    import httpx

    from app import build_app, launch
    from app.settings import ServingSettings
    from conftest import free_port

    built = build_app(None, "tiny", replace(ServingSettings.from_env(), page_states=3))
    port = free_port()
    launch(built, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        for n in range(5):
            body = {"data": [], "session_hash": f"page{n}"}
            r = httpx.post(f"http://127.0.0.1:{port}/gradio_api/call/examples", json=body, timeout=30)
            assert r.status_code == 200, r.text
            stream = httpx.get(f"http://127.0.0.1:{port}/gradio_api/call/examples/{r.json()['event_id']}", timeout=60)
            assert "event: complete" in stream.text, stream.text[-300:]
        kept = [n for n in range(5) if f"page{n}" in built.demo.state_holder]
        assert kept == [2, 3, 4], kept
    finally:
        built.demo.close()


def test_the_apps_gradio_folder_is_its_own_and_its_name_says_nothing(tmp_path, monkeypatch):
    """Without GRADIO_TEMP_DIR each process gets a random folder (Gradio shows its path to clients) with
    its pid inside; folders of processes that are gone are removed, a live one's and other files are not."""
    import os
    import subprocess
    import tempfile

    from app.tempdir import OWNER, use_private_upload_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("GRADIO_TEMP_DIR", "")  # unset for the app; restored after the test
    dead = subprocess.Popen(["true"])
    dead.wait()
    gone, alive, other = tmp_path / "gradio-old", tmp_path / "gradio-live", tmp_path / "someone-else"
    for folder, pid in ((gone, dead.pid), (alive, os.getppid()), (other, None)):
        folder.mkdir()
        if pid:
            (folder / OWNER).write_text(str(pid))
    folder = use_private_upload_folder()
    assert folder.parent == tmp_path and str(os.getpid()) not in folder.name and "dsnet" not in folder.name
    assert (folder / OWNER).read_text() == str(os.getpid()) and os.environ["GRADIO_TEMP_DIR"] == str(folder)
    assert not gone.exists() and alive.is_dir() and other.is_dir()
