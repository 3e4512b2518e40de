"""Issue 25 as an attacker tries it: small requests that cost the server a lot, against a live ``python app.py``.

Each test is one class of abuse, rewritten as a bounded script: it must be refused or bounded, and a
legitimate visitor must still be served beside it. Figures go to docs/abuse.json with
``DSNET_RECORD_DIR=docs python -m pytest tests/test_abuse.py -q``.
"""

import io
import json
import socket
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, record, sample, spawn_app

pytestmark = pytest.mark.slow  # live servers, floods

TOP1 = "each model's top-1"
EXAMPLE = sorted((ROOT / "app" / "examples").glob("*.JPEG"))[0].stem
BODY_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    app = spawn_app(
        tmp_path_factory.mktemp("abuse"),
        env={
            "DSNET_TRUSTED_PROXIES": "1",
            "DSNET_PER_CLIENT": "3",
            "DSNET_BODY_TIMEOUT": str(BODY_TIMEOUT),
            "DSNET_PAGES_PER_CLIENT": "10",
            "DSNET_UPLOAD_MP_PER_CLIENT": "50",
        },
    )
    yield app
    app.stop()


def visitor(n: int) -> dict:
    return {"X-Forwarded-For": f"203.0.113.{n}"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks (USER_HZ = 100 on Linux)


def threads(pid: int) -> int:
    return next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("Threads:")
    )


def explain_fn(server) -> int:
    config = httpx.get(server.url + "config", timeout=30).json()
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == "explain")


def join(server, fn: int, data: list, headers: dict, session: str | None = None) -> httpx.Response:
    session = session or uuid.uuid4().hex[:11]
    return httpx.post(
        server.url + "gradio_api/queue/join",
        headers=headers,
        timeout=30,
        json={"data": data, "fn_index": fn, "session_hash": session, "event_data": None, "trigger_id": None},
    )


def explain_stream(server, data, headers, timeout=300) -> str:
    """POST /gradio_api/call/explain, then its whole event stream ("http NNN" when the POST is refused)."""
    r = httpx.post(server.url + "gradio_api/call/explain", json={"data": data}, headers=headers, timeout=30)
    if r.status_code != 200:
        return f"http {r.status_code}"
    return httpx.get(f"{server.url}gradio_api/call/explain/{r.json()['event_id']}", timeout=timeout).text


def call(server, data, headers, timeout=300) -> str:
    """The last event of an explain call: "complete", "error", or "http NNN"."""
    stream = explain_stream(server, data, headers, timeout)
    return stream if stream.startswith("http ") else stream.strip().splitlines()[-2].removeprefix("event: ")


def upload(url: str, name: str, data, headers: dict, timeout: float = 60) -> httpx.Response:
    """POST one file to the upload route (``data``: bytes or an open file)."""
    return httpx.post(
        url + "gradio_api/upload", files={"files": (name, data, "image/jpeg")}, headers=headers, timeout=timeout
    )


def uploaded(path: str) -> dict:
    """The image payload naming a file the upload route wrote."""
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def test_cancel_and_rejoin_never_runs_more_than_the_limit(server):
    """Join three ScoreCAM runs, cancel them, join again, five times: the cancelled runs stop, the visitor
    never has more than its limit in the system, and another visitor's GradCAM is served meanwhile."""
    fn = explain_fn(server)
    slow = [None, "imagenette", "scorecam", TOP1, "", 0.5, False, EXAMPLE]
    before_threads = threads(server.proc.pid)
    accepted = refused = 0
    for _ in range(5):
        events = []
        for _ in range(3):
            session = uuid.uuid4().hex[:11]
            r = join(server, fn, slow, visitor(7), session)
            if r.status_code == 200:
                accepted += 1
                events.append((session, r.json()["event_id"]))
            else:
                assert r.status_code == 429, r.text
                refused += 1
        for session, event_id in events:
            httpx.post(
                server.url + "gradio_api/cancel",
                headers=visitor(7),
                timeout=30,
                json={"session_hash": session, "fn_index": fn, "event_id": event_id},
            )
    started = time.monotonic()
    outcome = call(server, [None, "imagenette", "gradcam", TOP1, "", 0.5, False, EXAMPLE], visitor(8))
    other_seconds = time.monotonic() - started
    assert outcome == "complete"
    deadline = time.monotonic() + 60  # the cancelled runs stop at their next check: the server goes idle
    while time.monotonic() < deadline:
        cpu = cpu_seconds(server.proc.pid)
        time.sleep(1)
        idle = cpu_seconds(server.proc.pid) - cpu < 0.3
        if idle:
            break
    assert idle, "the server kept computing after every run was cancelled"
    assert accepted <= 3 + 4 * 3 and threads(server.proc.pid) - before_threads < 20
    record(
        "abuse",
        "cancel_and_rejoin",
        {
            "joined": 15,
            "accepted": accepted,
            "refused_429": refused,
            "other_visitor_gradcam_seconds": round(other_seconds, 1),
            "idle_after_seconds": round(time.monotonic() - started, 1),
            "threads_added": threads(server.proc.pid) - before_threads,
        },
    )


def test_a_visitor_gets_one_explain_computing_at_a_time(server):
    """Three ScoreCAM requests of one visitor and then a GradCAM of another: the other's starts as soon as
    a worker is free, not after the first visitor's queue (both workers are never one visitor's)."""
    fn = explain_fn(server)
    slow = [None, "imagenette", "scorecam", TOP1, "", 0.5, False, EXAMPLE]
    sessions = [uuid.uuid4().hex[:11] for _ in range(3)]
    mine = [join(server, fn, slow, visitor(9), session) for session in sessions]
    assert [r.status_code for r in mine] == [200, 200, 200]
    started = time.monotonic()
    assert call(server, [None, "imagenette", "gradcam", TOP1, "", 0.5, False, EXAMPLE], visitor(10)) == "complete"
    waited = time.monotonic() - started
    single = time.monotonic()
    assert call(server, [None, "imagenette", "gradcam", TOP1, "", 0.5, False, EXAMPLE], visitor(10)) == "complete"
    record(
        "abuse",
        "one_running_per_visitor",
        {
            "other_gradcam_seconds_beside_3_scorecams": round(waited, 1),
            "gradcam_seconds_again": round(time.monotonic() - single, 1),
        },
    )
    for session, r in zip(sessions, mine):  # stop them for the next tests
        httpx.post(
            server.url + "gradio_api/cancel",
            headers=visitor(9),
            timeout=30,
            json={"session_hash": session, "fn_index": fn, "event_id": r.json()["event_id"]},
        )


def raw(port: int, head: bytes, body: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head + body)
    return s


def status_of(s: socket.socket) -> int:
    data = s.recv(200)
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1") else 0


def rss_mb(pid: int) -> float:
    return (
        next(
            int(line.split()[1])
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
        / 1024
    )


def test_bodies_in_flight_are_bounded_per_visitor_and_stalled_ones_time_out(server):
    rss = rss_mb(server.proc.pid)
    chunk = b"x" * (2**20)
    head = (
        b"POST /gradio_api/queue/join HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.20\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    socks, answers = [], []
    for _ in range(4):  # 20 MB each, never the last chunk
        s = raw(server.port, head)
        try:
            for _ in range(20):
                s.sendall(b"100000\r\n" + chunk + b"\r\n")
        except OSError:
            pass  # the gate answered and closed: the rest of this body is refused
        socks.append(s)
    time.sleep(0.5)
    for s in socks:
        s.settimeout(BODY_TIMEOUT * 8)
        try:
            answers.append(status_of(s))
        except OSError:
            answers.append(0)
        s.close()
    held = rss_mb(server.proc.pid) - rss
    assert answers.count(429) >= 2 and set(answers) <= {429, 408, 0}, answers  # two bodies' worth, no more
    # a body that stalls: its length declared, a few bytes sent, then nothing
    started = time.monotonic()
    s = raw(
        server.port,
        b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 29000000\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\nX-Forwarded-For: 203.0.113.21\r\n\r\n",
        b"--b\r\n",
    )
    s.settimeout(BODY_TIMEOUT * 8)
    assert status_of(s) == 408
    stalled_seconds = time.monotonic() - started
    s.close()
    # header-only bodies from many addresses charge nothing: everyone's budget is still there
    stalls = [
        raw(
            server.port,
            b"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 29000000\r\n"
            b"X-Forwarded-For: 203.0.113.%d\r\n\r\n" % (30 + i),
        )
        for i in range(40)
    ]
    ok = upload(server.url, "t.jpg", sample("tench").read_bytes(), visitor(90))
    assert ok.status_code == 200, ok.text
    for s in stalls:
        s.close()
    record(
        "abuse",
        "bodies_in_flight",
        {
            "chunked_20MB_bodies_one_visitor": len(answers),
            "refused_429": answers.count(429),
            "rss_added_mb": round(held),
            "stalled_body_answered_408_after_s": round(stalled_seconds, 1),
            "header_only_29MB_posts": 40,
            "legit_upload_after": ok.status_code,
        },
    )


def test_fresh_sessions_from_one_address_are_capped(server):
    """A flood of new session hashes from one address stops at its cap; another visitor's page still works."""
    config = httpx.get(server.url + "config", timeout=30).json()
    examples = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "examples")
    codes = [join(server, examples, [], visitor(40)).status_code for _ in range(25)]
    r = join(server, examples, [], visitor(40))
    gone = httpx.post(server.url + "gradio_api/component_server", json={"session_hash": "x"}, headers=visitor(44))
    assert gone.status_code == 404  # made a page state per call, uncounted when sent as multipart
    assert codes.count(429) >= 15 and r.status_code == 429 and "Too many new pages" in r.text, codes
    assert call(server, [None, "imagenette", "gradcam", TOP1, "", 0.5, False, EXAMPLE], visitor(41)) == "complete"
    # an API call without a session of its own is a new page too (Gradio makes it one), reused ones are not
    api = [httpx.post(server.url + "gradio_api/call/examples", json={"data": []}, headers=visitor(42), timeout=30)]
    api += [httpx.post(server.url + "gradio_api/call/v2/examples", json={}, headers=visitor(42), timeout=30)]
    api += [
        httpx.post(server.url + "gradio_api/call/examples", json={"data": []}, headers=visitor(42), timeout=30)
        for _ in range(23)
    ]
    api_codes = [r.status_code for r in api]
    assert api_codes[:10] == [200] * 10 and set(api_codes[10:]) == {429}, api_codes
    same = {"data": [], "session_hash": "one-script"}
    reused = [
        httpx.post(server.url + "gradio_api/call/examples", json=same, headers=visitor(43), timeout=30)
        for _ in range(15)
    ]
    assert {r.status_code for r in reused} == {200}
    record(
        "abuse",
        "session_flood",
        {
            "sent": 25,
            "refused_429": codes.count(429),
            "api_calls_sent": 25,
            "api_calls_refused_429": api_codes.count(429),
        },
    )


def test_small_mistakes_get_short_4xx_and_headers_are_safe(server):
    fn = explain_fn(server)
    empty_name = upload(server.url, "", sample("tench").read_bytes(), visitor(50))
    assert empty_name.status_code == 400 and "no file name" in empty_name.text
    for index in (10**30, -1, "x"):
        r = (
            join(server, fn, [None], visitor(51))
            if index == "x"
            else httpx.post(
                server.url + "gradio_api/queue/join",
                headers=visitor(51),
                timeout=30,
                json={"data": [None], "fn_index": index, "session_hash": "abc", "event_data": None, "trigger_id": None},
            )
        )
        assert 400 <= r.status_code < 500 or r.status_code == 200, (index, r.status_code)
        assert len(r.content) < 600 and "Traceback" not in r.text, r.text
    unknown = httpx.get(server.url + "gradio_api/call/explain/no-such-event", headers=visitor(52), timeout=30)
    assert unknown.status_code == 404 and "Nothing to read there" in unknown.text, unknown.text
    stream = httpx.get(server.url + "gradio_api/queue/data?session_hash=nope", headers=visitor(52), timeout=30)
    assert stream.status_code == 404 and "Nothing to read there" in stream.text, stream.text
    bogus = httpx.post(server.url + "gradio_api/call/v2/explain", json={"bogus": 1}, headers=visitor(52), timeout=30)
    assert bogus.status_code == 400 and "bogus" in bogus.text and len(bogus.content) < 400, bogus.text
    page = httpx.get(server.url, timeout=30)
    assert page.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(server.url + "gradio_api/dev/reload", timeout=30).status_code == 404


def test_forwarded_headers_are_trusted_only_as_configured(tmp_path):
    """DSNET_TRUSTED_PROXIES=0 (not behind a proxy): X-Forwarded-For from a loopback peer names nobody."""
    app = spawn_app(tmp_path, env={"DSNET_TRUSTED_PROXIES": "0", "DSNET_UPLOAD_FILES_PER_CLIENT": "2"})
    try:
        codes = []
        for n in range(3):
            codes.append(
                upload(
                    app.url, "t.jpg", sample("tench").read_bytes(), {"X-Forwarded-For": f"198.51.100.{n}"}
                ).status_code
            )
        assert codes == [200, 200, 429], codes
    finally:
        app.stop()


def test_images_are_charged_by_their_decoded_pixels(server):
    """A 30 MP photo is a small file when it is one colour: the second from one visitor passes the
    50 MP set for this server and is refused before it is decoded; another visitor is still served."""
    buf = io.BytesIO()
    Image.new("RGB", (6000, 5000), (40, 120, 200)).save(buf, "JPEG", quality=50)
    data = buf.getvalue()
    answers = []
    for _ in range(2):
        up = upload(server.url, "big.jpg", data, visitor(70))
        assert up.status_code == 200, up.text
        answers.append(explain_stream(server, [uploaded(up.json()[0])], visitor(70)))
    assert "event: complete" in answers[0]
    assert "event: error" in answers[1] and "add up to 30 MP; the limit is 50 MP" in answers[1], answers[1][-400:]
    assert call(server, [None, "imagenette", "gradcam", TOP1, "", 0.5, False, EXAMPLE], visitor(71)) == "complete"
    record(
        "abuse",
        "decoded_pixels",
        {"file_mb": round(len(data) / 1e6, 2), "megapixels": 30, "limit_mp": 50, "second_refused": True},
    )


def _progressive_with_scans(extra: int) -> bytes:
    buf = io.BytesIO()
    Image.open(sample("golf_ball")).convert("RGB").resize((64, 64)).save(buf, "JPEG", progressive=True)
    data = buf.getvalue()
    body, end = data[:-2], data[-2:]
    return body + body[body.rindex(b"\xff\xda") :] * extra + end


def _pages(fmt: str, n: int) -> bytes:
    frames = [Image.fromarray(np.full((8, 8, 3), i % 255, np.uint8)) for i in range(n)]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _memory_kb(pid: int, field: str) -> int:
    return next(
        int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field)
    )


def test_no_file_costs_more_than_a_few_cpu_seconds(server):
    """The worst file of each format tried, uploaded and explained: CPU seconds of the server from /proc,
    and the peak memory it added (VmHWM, reset before each file through /proc/PID/clear_refs)."""
    from badimages import (
        gif_with_comments,
        jpeg_with_markers,
        png16_rgb,
        png_with_chunks,
        png_with_exif,
        rle8_bmp,
        tiled_tiff,
    )

    files = {
        "jpeg_8000_scans": (_progressive_with_scans(8000), "a.jpg"),
        "tiff_5000_pages": (_pages("TIFF", 5000), "a.tif"),
        "gif_5000_frames": (_pages("GIF", 5000), "a.gif"),
        "png_header_40mp": (_png_header(6300, 6300), "a.png"),
        "bmp_rle8_40mp": (rle8_bmp(6300, 6300), "a.bmp"),
        "bmp_rle8_8mp": (rle8_bmp(2828, 2828), "a.bmp"),
        "tiff_155k_tiles_40mp": (tiled_tiff(6300, 6300), "a.tif"),
        "png_16bit_40mp": (png16_rgb(6300, 6300), "a.png"),
        "gif_3mb_of_comments": (gif_with_comments(600_000), "a.gif"),
        "jpeg_1m_markers": (jpeg_with_markers(1_000_000), "a.jpg"),
        "png_1m_chunks": (png_with_chunks(1_000_000), "a.png"),
        "png_19mb_exif_rotated": (png_with_exif(6, 2_400_000), "a.png"),
    }
    costs, peaks, outcomes = {}, {}, {}
    pid = server.proc.pid
    for n, (name, (data, filename)) in enumerate(files.items()):
        headers = visitor(60 + n)
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        rss, before = _memory_kb(pid, "VmRSS:"), cpu_seconds(pid)
        up = upload(server.url, filename, data, headers)
        outcomes[name] = f"upload {up.status_code}"
        if up.status_code == 200:
            outcomes[name] = call(
                server, [uploaded(up.json()[0]), "imagenette", "gradcam", TOP1, "", 0.5, False, ""], headers
            )
        costs[name] = round(cpu_seconds(pid) - before, 2)
        peaks[name] = round((_memory_kb(pid, "VmHWM:") - rss) / 1024)
    sizes = {k: len(v[0]) for k, v in files.items()}
    record("abuse", "cpu_seconds_per_file", costs | {"bytes": sizes, "peak_mb_added": peaks, "outcome": outcomes})
    assert outcomes["bmp_rle8_40mp"] == "error" and outcomes["bmp_rle8_8mp"] == "complete", outcomes
    assert outcomes["png_16bit_40mp"] == "complete" and outcomes["tiff_155k_tiles_40mp"] == "error", outcomes
    assert outcomes["png_19mb_exif_rotated"] == "complete", outcomes  # its EXIF is not read
    assert {outcomes[k] for k in ("gif_3mb_of_comments", "jpeg_1m_markers", "png_1m_chunks")} == {"error"}, outcomes
    assert max(costs.values()) < 4, costs  # the goal is ~2 s; the model run itself is part of it
    assert max(peaks.values()) < 600, peaks  # a 40 MP 16-bit PNG held ~770 MB before the in-place scaling


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    )


def test_files_that_break_the_decoder_get_a_sentence_not_a_null_error(server):
    """Pillow raises more than OSError / ValueError on corrupt bytes (OSError from Image.open on a header
    cut short or an unknown BMP compression or a GIF cut in its pixels): each used to reach the client as
    ``event: error`` with ``{"error": null}``; now one sentence. (A GIF whose second frame is cut is
    served: only its first is used, and the GIF's blocks are walked without Pillow.)"""
    import struct

    small = Image.open(sample("tench")).convert("RGB").resize((64, 48))
    jpeg, bmp = io.BytesIO(), io.BytesIO()
    small.save(jpeg, "JPEG")
    small.save(bmp, "BMP")
    bad_bmp = bytearray(bmp.getvalue())
    bad_bmp[30:34] = struct.pack("<I", 0x48000000)  # biCompression: no such method
    frames = [Image.new("RGB", (16, 16), (80 * i, 0, 0)) for i in range(3)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    gif = gif.getvalue()
    first = gif.index(b"\x2c")  # the first frame's image descriptor; its pixel data follows
    files = {"a.jpg": jpeg.getvalue()[:100], "a.bmp": bytes(bad_bmp), "a.gif": gif[: first + 14]}
    for name, data in files.items():
        up = upload(server.url, name, data, visitor(95))
        assert up.status_code == 200, up.text  # it starts like an image: stored, then refused by the handler
        text = explain_stream(server, [uploaded(up.json()[0])], visitor(95), timeout=60)
        event, data = text.strip().splitlines()[-2:]
        assert event == "event: error", text[-300:]
        message = json.loads(data.removeprefix("data: "))["error"]
        assert message and "file is truncated or corrupt" in message and len(message) < 200, (name, text[-300:])
    assert call(server, [None, "imagenette", "gradcam", TOP1, "", 0.5, False, EXAMPLE], visitor(96)) == "complete"


def test_connections_must_send_their_head_in_time_and_one_address_holds_few(tmp_path):
    """Connections that never send a request head reach no route, so the gate never sees them: uvicorn
    kept 400 of them open for minutes. Now one address holds at most DSNET_CONNECTIONS_PER_CLIENT (not
    behind a proxy) and a head that is not complete DSNET_HEAD_TIMEOUT s after the connection opened (or
    after its last answer) closes the connection; requests are served as before."""
    app = spawn_app(
        tmp_path,
        env={"DSNET_TRUSTED_PROXIES": "0", "DSNET_CONNECTIONS_PER_CLIENT": "20", "DSNET_HEAD_TIMEOUT": "2"},
    )
    port = int(app.url.rstrip("/").rsplit(":", 1)[1])
    try:
        idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(30)]
        slow = idle[:3]
        for s in slow:
            s.sendall(b"GET / HTTP/1.1\r\n")  # a head begun, never finished
        time.sleep(0.5)
        idle[-1].settimeout(5)
        assert idle[-1].recv(64).startswith(b"HTTP/1.1 503")  # refused in words, not just reset
        refused_at_once = sum(_closed(s, wait=0.2) for s in idle[20:])
        started = time.monotonic()
        closed_by_timeout = sum(_closed(s, wait=4) for s in idle[:20])
        waited = time.monotonic() - started
        assert refused_at_once == 10 and closed_by_timeout == 20, (refused_at_once, closed_by_timeout)
        page = httpx.get(app.url, timeout=30)
        assert page.status_code == 200
        with httpx.Client(timeout=30) as client:  # keep-alive: two requests on one connection still work
            assert [client.get(app.url + "config").status_code for _ in range(2)] == [200, 200]
        assert call(app, [None, "imagenette", "gradcam", TOP1, "", 0.5, False, EXAMPLE], {}) == "complete"
        record(
            "abuse",
            "connections",
            {
                "idle_connections_opened": 30,
                "refused_at_once": refused_at_once,
                "closed_after_head_timeout": closed_by_timeout,
                "head_timeout_s": 2,
                "seconds_until_all_closed": round(waited + 0.5, 1),
            },
        )
    finally:
        app.stop()


def _closed(sock: socket.socket, wait: float) -> bool:
    """Whether the server closed this connection within ``wait`` seconds (reads EOF or a reset)."""
    sock.settimeout(wait)
    try:
        while sock.recv(1024):  # a refused one gets a short 503 first
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    finally:
        sock.close()
