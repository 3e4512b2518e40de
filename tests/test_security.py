"""Issue 14 as an attacker tries it: raw HTTP against ``python app.py`` started as a Space starts it."""

import base64
import json
import os
import socket
import time
from pathlib import Path

import httpx
import pytest

from app.gate import MAX_BODY_BYTES
from app.uploads import REFUSED_INPUT
from conftest import ROOT, record, sample, spawn_app

pytestmark = pytest.mark.slow  # a live server, hundreds of requests

TOP1 = "each model's top-1"
EXAMPLE = sorted((ROOT / "app" / "examples").glob("*.JPEG"))[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("security")
    stale = folder / "gradio-tmp" / "0123abcd" / "left-over-upload.jpg"  # from an earlier run that was killed
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old upload")
    app = spawn_app(
        folder,
        env={
            "DSNET_CACHE_SECONDS": "6",
            "DSNET_PER_CLIENT": "3",
            "DSNET_UPLOAD_MB_PER_CLIENT": "8",
            "DSNET_UPLOAD_FILES_PER_CLIENT": "12",
            "DSNET_TRUSTED_PROXIES": "1",
        },
    )  # as behind a Space's proxy
    app.stale = stale
    yield app
    app.stop()


def call(server, data, headers=None, timeout=120) -> tuple[str, dict | list | None]:
    """POST /gradio_api/call/explain, then read its event stream: (event, data)."""
    r = httpx.post(server.url + "gradio_api/call/explain", json={"data": data}, headers=headers or {}, timeout=30)
    if r.status_code != 200:
        return f"http {r.status_code}", r.text
    stream = httpx.get(f"{server.url}gradio_api/call/explain/{r.json()['event_id']}", timeout=timeout).text
    lines = stream.strip().splitlines()
    return lines[-2].removeprefix("event: "), json.loads(lines[-1].removeprefix("data: "))


def upload(server, path: Path, headers=None) -> str:
    with open(path, "rb") as f:
        r = httpx.post(
            server.url + "gradio_api/upload",
            files={"files": (path.name, f, "image/jpeg")},
            headers=headers or {},
            timeout=30,
        )
    r.raise_for_status()
    return r.json()[0]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def test_no_server_file_is_read_whatever_the_payload(server, tmp_path):
    image = str(ROOT / "docs" / "screenshot.png")
    link = tmp_path / "link.png"
    link.symlink_to(image)
    in_cache = server.temp_dir / "planted" / "x.jpg"  # in the upload folder, but not written by the upload route
    in_cache.parent.mkdir(exist_ok=True)
    in_cache.write_bytes(sample("tench").read_bytes())
    meta = {"_type": "gradio.FileData"}
    payloads = [
        {"path": image},
        {"path": image, "meta": meta},
        {"url": image},
        {"url": image, "meta": meta},
        {"url": "file://" + image},
        {"path": "docs/screenshot.png"},
        {"path": "../" + Path(image).name},
        {"path": str(link), "meta": meta},
        {"path": "/no/such/file.png"},
        {"path": "/etc/hostname"},
        {"path": str(ROOT / "checkpoints" / "manifest.json"), "meta": meta},
        {"path": str(in_cache)},
        {"url": "http://127.0.0.1:1/x.jpg"},
        {"path": str(EXAMPLE)},
        "/etc/passwd",
        42,
        ["x"],
    ]
    answers = {json.dumps(call(server, [p])) for p in payloads}
    assert answers == {
        json.dumps(["error", {"error": REFUSED_INPUT, "duration": 10, "visible": True, "title": "Error"}])
    }, answers
    assert in_cache.exists()  # refused, not touched


def test_legitimate_inputs_still_work(server):
    from gradio_client import Client, handle_file

    client = Client(server.url, verbose=False)
    out = client.predict(handle_file(str(sample("golf_ball"))), api_name="/explain")  # upload
    assert "(explained)" in out[3]
    good = "data:image/jpeg;base64," + base64.b64encode(sample("tench").read_bytes()).decode()
    event, data = call(server, [{"url": good, "meta": {"_type": "gradio.FileData"}}])  # data: URL
    assert event == "complete" and "(explained)" in data[3]
    event, data = call(server, [None, "imagenette", "gradcam", TOP1, "", 0.5, False, EXAMPLE.stem])  # example id
    assert event == "complete" and "True class:" in data[0]


def test_an_oversized_body_is_refused_before_it_is_read(server):
    pid = server.proc.pid
    before = rss_mb(pid)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:  # declares 300 MB, sends 1 KB
        s.sendall(
            b"POST /gradio_api/call/explain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 300000000\r\n\r\n" + b"{" * 1024
        )
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 413") and "too large" in head.lower()

    def chunks():  # no Content-Length: 200 MB streamed
        for _ in range(200):
            yield b"x" * 2**20

    r = httpx.post(  # from a visitor with a fresh budget: the size limit is what stops it
        server.url + "gradio_api/call/explain",
        content=chunks(),
        timeout=60,
        headers={"Content-Type": "application/json", "X-Forwarded-For": "192.0.2.77"},
    )
    # the first limit it meets as its bytes arrive: the visitor's image bytes (8 MB here), a body in
    # flight (29 MB) or the size limit; each refuses it with most of the 200 MB never read
    assert r.status_code in (413, 429) and ("MB" in r.text or "at once" in r.text), (r.status_code, r.text)
    growth = rss_mb(pid) - before
    assert growth < MAX_BODY_BYTES / 2**20 + 40, f"a refused request cost {growth:.0f} MB"
    record("security", "refused_body_memory_mb", round(growth, 1))


def test_uploads_are_deleted_when_used_and_expire_when_not(server):
    assert not server.stale.exists()  # swept at start-up
    used = [upload(server, sample(name)) for name in ("tench", "golf_ball", "church")]
    for path in used:
        assert Path(path).is_file()
        event, data = call(server, [{"path": path, "meta": {"_type": "gradio.FileData"}}])
        assert event == "complete"
        assert not Path(path).exists()  # deleted once read
    unused = Path(upload(server, sample("parachute")))
    deadline = time.monotonic() + 30
    while unused.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not unused.exists(), "an upload nobody used is still on disk"


def test_one_client_cannot_take_the_queue(server):
    slow = [None, "imagenette", "scorecam", TOP1, "", 0.5, False, EXAMPLE.stem]
    flooder = {"X-Forwarded-For": "198.51.100.7"}
    answers = [
        httpx.post(server.url + "gradio_api/call/explain", json={"data": slow}, headers=flooder, timeout=30)
        for _ in range(8)
    ]
    codes = [a.status_code for a in answers]
    assert codes[:3] == [200, 200, 200] and set(codes[3:]) == {429}, codes
    assert "You already have 3 requests waiting or running" in answers[-1].json()["detail"]
    other = call(
        server,
        [None, "imagenette", "gradcam", TOP1, "", 0.5, False, EXAMPLE.stem],
        headers={"X-Forwarded-For": "198.51.100.8"},
        timeout=300,
    )
    assert other[0] == "complete"  # another visitor is still served
    for a in answers[:3]:  # let the flood finish before the next test
        httpx.get(f"{server.url}gradio_api/call/explain/{a.json()['event_id']}", timeout=300)
    record(
        "security",
        "one_client_flood",
        {"sent": 8, "accepted": codes.count(200), "refused_429": codes.count(429), "other_client_served": True},
    )


@pytest.mark.parametrize(
    "data,message",
    [
        ([None, "imagenette", "x" * 1_000_000], "method must be one of"),
        ([None, "imagenette", "gradcam", TOP1, "", 0.5, "false"], "metrics must be true or false"),
        ([None, "imagenette", "gradcam", TOP1, "", "0.5"], "opacity must be a number"),
        ([None, "imagenette", "gradcam", TOP1, "", 1.5], "opacity must be a number"),
        (
            [None, "imagenette", "gradcam", "one class for all", "y" * 100_000, 0.5, False, EXAMPLE.stem],
            "unknown class",
        ),
        ([None, "z" * 5000], "zoo must be one of"),
        ([None, "imagenette", "gradcam", TOP1, "", 0.5, False, "../../etc/passwd"], "unknown example"),
        ([None] * 9, "at most 8 input values"),
    ],
)
def test_error_texts_are_short_and_name_no_server_path(server, data, message):
    event, answer = call(server, data)
    text = json.dumps(answer)
    assert message in text and len(text) < 500, text[:600]
    assert str(ROOT) not in text and "/tmp" not in text and "Traceback" not in text


def test_monitoring_is_off_and_files_are_not_served(server):
    assert httpx.get(server.url + "monitoring", timeout=10).status_code in (403, 404)
    for target in ("/etc/passwd", str(ROOT / "app.py"), str(ROOT / "checkpoints" / "manifest.json")):
        r = httpx.get(server.url + "gradio_api/file=" + target, timeout=10)
        assert r.status_code in (403, 404), target


def test_no_route_runs_the_model_outside_the_queue(server):
    body = {"data": [None, "imagenette", "gradcam", TOP1, "", 0.5, False, EXAMPLE.stem]}
    for route in ("gradio_api/run/explain", "gradio_api/api/explain", "gradio_api/process_recording"):
        r = httpx.post(server.url + route, json=body, timeout=30)
        assert r.status_code in (403, 404), (route, r.status_code, r.text[:200])
    r = httpx.post(server.url + "gradio_api/call/explain", json={"data": "x" * 200_000}, timeout=30)
    assert r.status_code == 422 and len(r.text) < 300  # FastAPI would echo the 200 KB back
    for route in ("gradio_api/call/explainx", "gradio_api/call/v2/explainx"):  # Gradio: 500 and a traceback
        r = httpx.post(server.url + route, json=body, timeout=30)
        assert r.status_code == 404 and "this app has: examples, explain" in r.text, (route, r.status_code, r.text)
    v2 = httpx.post(server.url + "gradio_api/call/v2/explain", json={"example": EXAMPLE.stem}, timeout=30)
    assert v2.status_code == 200 and "event_id" in v2.json()  # the example by name, as README shows


def test_uploads_have_a_budget_per_visitor(server, tmp_path):
    """Each budget test is a visitor of its own (its X-Forwarded-For, trusted as behind a Space's proxy):
    no test waits for another's window to pass, and the order of the tests does not matter."""
    me, other_visitor = {"X-Forwarded-For": "198.51.100.30"}, {"X-Forwarded-For": "198.51.100.31"}
    noise = tmp_path / "noise.png"
    noise.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(3 * 2**20))  # uploads must start as an image
    codes = []
    for _ in range(4):
        with open(noise, "rb") as f:
            codes.append(
                httpx.post(server.url + "gradio_api/upload", files={"files": f}, timeout=30, headers=me).status_code
            )
    assert codes[:2] == [200, 200] and codes[-1] == 429, codes  # 8 MB per visitor per window
    with open(noise, "rb") as f:  # another visitor still can
        other = httpx.post(server.url + "gradio_api/upload", files={"files": f}, timeout=30, headers=other_visitor)
    assert other.status_code == 200


def test_an_upload_carries_one_image_and_images_have_a_count_budget(server):
    """30 uploads of 1000 one-byte files made 30,000 files on disk in 12 s: an upload carries one
    image (the page sends one), and each visitor has a number of images per window, as of bytes."""

    def post(files, who):
        return httpx.post(server.url + "gradio_api/upload", files=files, timeout=30, headers={"X-Forwarded-For": who})

    jpeg = sample("tench").read_bytes()[:64]  # an upload must start as an image
    many = [("files", (f"{i}.jpg", jpeg, "image/jpeg")) for i in range(1000)]
    before = sum(1 for p in server.temp_dir.rglob("*") if p.is_file() and "outputs" not in p.parts)
    refused = post(many, "198.51.100.20")
    assert refused.status_code == 400 and refused.text == "One image per upload: this request carries 1000 files."
    assert post(many[:2], "198.51.100.20").status_code == 400
    assert (
        sum(1 for p in server.temp_dir.rglob("*") if p.is_file() and "outputs" not in p.parts) <= before
    )  # nothing reached the disk
    codes = [post(many[:1], "198.51.100.21").status_code for _ in range(14)]  # DSNET_UPLOAD_FILES_PER_CLIENT=12
    assert codes[:12] == [200] * 12 and codes[12:] == [429, 429], codes
    assert "images in the last" in post(many[:1], "198.51.100.21").text
    assert post(many[:1], "198.51.100.22").status_code == 200  # another visitor still can
    for name, content in (
        ("page.html", b"<!doctype html><script>alert(1)</script>"),
        ("x.jpg", b"MZ\x90\x00"),
        ("notes.txt", b"just text"),
    ):  # a file drop: anything but an image is not stored
        r = post([("files", (name, content, "image/jpeg"))], "198.51.100.23")
        assert r.status_code == 415 and r.text.startswith("Only images can be uploaded"), (name, r.text)


def test_data_urls_count_against_the_same_budget(server):
    """A data: URL is image bytes held in memory while it is used: it counts like an upload (a flood of
    25 MB data: URLs pinned gigabytes before)."""
    junk = "data:image/jpeg;base64," + base64.b64encode(os.urandom(3 * 2**20)).decode()  # 4 MB of base64
    data = [{"url": junk, "meta": {"_type": "gradio.FileData"}}, "imagenette", "gradcam", TOP1, "", 0.5, False, ""]
    codes = [
        httpx.post(
            server.url + "gradio_api/call/explain",
            json={"data": data},
            timeout=60,
            headers={"X-Forwarded-For": "198.51.100.40"},
        ).status_code
        for _ in range(3)
    ]
    assert codes[0] == 200 and codes[-1] == 429, codes  # 8 MB per visitor per window
    other = httpx.post(
        server.url + "gradio_api/call/explain",
        json={"data": data},
        timeout=60,
        headers={"X-Forwarded-For": "198.51.100.41"},
    )
    assert other.status_code == 200


def test_functions_that_write_files_only_run_in_the_queue(server):
    """Explain, a picked example and the opacity re-blend write pictures: they are queued (with the
    per-visitor limit) and cannot be called at /run/predict; only widget updates that write nothing
    (the example list, clearing for a new image, showing a field) run outside the queue."""
    dependencies = httpx.get(server.url + "config", timeout=30).json()["dependencies"]
    by_name = {d["api_name"]: d for d in dependencies}
    for name in ("page", "explain", "pick", "reblend"):
        assert by_name[name].get("queue") is not False, name
        r = httpx.post(
            server.url + "gradio_api/run/predict",
            timeout=30,
            json={"fn_index": by_name[name]["id"], "data": [None, 0.3], "session_hash": "x"},
        )
        assert r.status_code == 404 and "join the queue" in r.text, (name, r.status_code)
    unqueued = sorted(d["api_name"] for d in dependencies if d.get("queue") is False)
    assert unqueued == ["examples", "lambda", "lambda_1", "lambda_2", "own_image", "unnamed", "unnamed_1"], unqueued


def test_sigterm_leaves_no_upload_or_output_behind(tmp_path):
    server = spawn_app(tmp_path)  # its own server: stopping it ends no other test's
    path = Path(upload(server, sample("tench")))
    assert path.is_file()
    event, _ = call(server, [None, "imagenette", "gradcam", TOP1, "", 0.5, False, EXAMPLE.stem])
    assert event == "complete"  # outputs written too
    assert server.stop() == 0
    left = [p for p in server.temp_dir.rglob("*") if p.is_file()]
    assert not left, left
    assert "SIGTERM" in server.log_text()
