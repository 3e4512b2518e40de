"""app.gate.PublicGate in this process, on a stand-in app: what it lets through and what it refuses.

The live server's side of the same refusals is in tests/test_security.py and tests/test_abuse.py; here
each rule is checked on bytes an attacker would send, fast and without a clock of its own.
"""

import asyncio
import io
import json

from PIL import Image

from app.gate import MAX_JSON_VALUES, PublicGate


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "PNG")
    return buf.getvalue()


def gate(**options) -> tuple[PublicGate, list]:
    reached = []

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        reached.append((scope["path"], body))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return PublicGate(app, clock=Clock(), api_names={"explain", "examples"}, **options), reached


def request(
    g: PublicGate,
    path: str,
    body: bytes = b"",
    headers: dict | None = None,
    chunks: list | None = None,
    client: str = "203.0.113.1",
    method: str = "POST",
    stall: bool = False,
) -> tuple[int, bytes]:
    """One request through the gate: (status, body of the answer); ``stall``: the chunks end, the body does not."""
    pending = (
        [{"type": "http.request", "body": c, "more_body": stall or i < len(chunks) - 1} for i, c in enumerate(chunks)]
        if chunks is not None
        else [{"type": "http.request", "body": body, "more_body": False}]
    )
    sent = []

    async def receive():
        if pending:
            return pending.pop(0)
        await asyncio.sleep(3600)  # a client that stopped sending

    async def send(message):
        sent.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if chunks is None:
        raw.append((b"content-length", str(len(body)).encode()))
    path, _, query = path.partition("?")
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query.encode(),
        "headers": raw,
        "client": (client, 1234),
    }
    asyncio.run(g(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def multipart(boundary: bytes, files: list[tuple[str, bytes]]) -> bytes:
    body = b""
    for name, data in files:
        body += (
            b"--"
            + boundary
            + b'\r\nContent-Disposition: form-data; name="files"; filename="'
            + name.encode()
            + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
            + data
            + b"\r\n"
        )
    return body + b"--" + boundary + b"--\r\n"


def test_an_upload_is_one_named_image_however_the_boundary_is_written():
    g, reached = gate()
    ok = multipart(b"bar", [("a.png", png())])
    assert request(g, "/gradio_api/upload", ok, {"content-type": "multipart/form-data; boundary=bar"})[0] == 200
    two = multipart(b"bar", [("a.png", png()), ("x.html", b"<script>alert(1)</script>")])
    for content_type in (
        "multipart/form-data; boundary=bar",
        "multipart/form-data; BOUNDARY=bar",
        "multipart/form-data; xboundary=foo; boundary=bar",
        "multipart/form-data; boundary=foo; boundary=bar",
    ):
        status, text = request(g, "/gradio_api/upload", two, {"content-type": content_type}, client="203.0.113.2")
        assert (status, text) == (400, b"One image per upload: this request carries 2 files."), content_type
    html = multipart(b"bar", [("x.png", b"<html><script>alert(1)</script>")])
    assert request(g, "/gradio_api/upload", html, {"content-type": "multipart/form-data; boundary=bar"})[0] == 415
    nameless = multipart(b"bar", [("", png())])
    assert request(g, "/gradio_api/upload", nameless, {"content-type": "multipart/form-data; boundary=bar"}) == (
        400,
        b"The upload has no file name.",
    )
    assert request(g, "/gradio_api/upload", b"x", {"content-type": "application/json"})[0] == 400
    assert (
        request(g, "/gradio_api/upload", multipart(b"bar", []), {"content-type": "multipart/form-data; boundary=bar"})[
            0
        ]
        == 400
    )
    assert [path for path, _ in reached] == ["/gradio_api/upload"]  # only the one good upload got through


def test_a_body_of_many_small_values_is_refused_before_it_is_parsed():
    g, reached = gate()
    values = {"data": [None, [{}] * (MAX_JSON_VALUES + 1), "gradcam"], "fn_index": 0, "session_hash": "s"}
    assert request(g, "/gradio_api/queue/join", json.dumps(values).encode())[0] == 413
    data_url = {"data": [{"url": "data:image/png;base64," + "A" * 200_000}], "fn_index": 0, "session_hash": "s"}
    assert request(g, "/gradio_api/queue/join", json.dumps(data_url).encode())[0] == 200
    assert len(reached) == 1


def test_new_pages_are_counted_however_the_session_hash_is_written():
    g, _ = gate(pages_per_client=3)
    hashes = ["\\u0061bc", "b" * 5000, "c"]  # escaped, long; the last one placed after 10 KB of padding
    for h in hashes:
        body = (
            '{"data": [], "fn_index": 0, '
            + ('"pad": "' + "x" * 10_000 + '", ' if h == "c" else "")
            + f'"session_hash": "{h}"}}'
        )
        assert request(g, "/gradio_api/queue/join", body.encode())[0] == 200
    status, text = request(g, "/gradio_api/queue/join", b'{"data": [], "fn_index": 0, "session_hash": "d"}')
    assert status == 429 and b"Too many new pages" in text
    assert request(g, "/gradio_api/queue/join", b'{"session_hash": "abc"}')[0] == 200  # a known page still works
    g.clock.now += 601  # the window has passed
    assert request(g, "/gradio_api/queue/join", b'{"data": [], "fn_index": 0, "session_hash": "d"}')[0] == 200


def test_bytes_count_as_they_arrive_and_a_stalled_body_keeps_its_charge():
    g, _ = gate(upload_budget=3 * 2**20, body_timeout=0.2)
    chunk = b"A" * 2**20
    for _ in range(2):  # 1 MB sent, then nothing: 408, but the megabyte was received and stays charged
        status, text = request(g, "/gradio_api/queue/join", chunks=[chunk], stall=True)
        assert status == 408 and b"stalled" in text
    assert g.upload_bytes.used("203.0.113.1") == 2 * 2**20
    status, text = request(g, "/gradio_api/queue/join", chunks=[chunk, chunk])
    assert status == 429 and b"MB of images" in text
    assert request(g, "/gradio_api/queue/join", chunks=[chunk, chunk], client="203.0.113.9")[0] == 200
    assert g.inflight == {}  # everything held in flight was released


def test_unknown_endpoints_and_unneeded_routes_are_404_and_every_answer_is_nosniff():
    g, _ = gate()
    for path in (
        "/gradio_api/call/explainx",
        "/gradio_api/call/v2/page",
        "/gradio_api/runs",
        "/gradio_api/dev/reload",
        "/gradio_api/run-history/x",
    ):
        assert request(g, path, b"{}")[0] == 404, path
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": ("203.0.113.1", 1)}
    asyncio.run(g(scope, receive, send))
    assert (b"x-content-type-options", b"nosniff") in sent[0]["headers"]


def test_api_calls_without_a_session_of_their_own_count_as_new_pages():
    """Gradio keeps ~110 KB of state per session, and a /call/ without a session_hash (every /call/v2/)
    gets a fresh one: counted against pages_per_client like a page load; one session reused is not."""
    g, reached = gate(pages_per_client=3)
    data = json.dumps({"data": [None]}).encode()
    assert [request(g, "/gradio_api/call/explain", data)[0] for _ in range(3)] == [200] * 3
    status, text = request(g, "/gradio_api/call/explain", data)
    assert status == 429 and b"Too many new pages" in text
    assert request(g, "/gradio_api/call/v2/explain", b'{"session_hash": "s1"}', client="203.0.113.2")[0] == 200
    assert request(g, "/gradio_api/call/v2/explain", b'{"session_hash": "s1"}', client="203.0.113.2")[0] == 200
    assert request(g, "/gradio_api/call/v2/explain", b'{"session_hash": "s1"}', client="203.0.113.2")[0] == 200
    assert request(g, "/gradio_api/call/v2/explain", b'{"session_hash": "s1"}', client="203.0.113.2")[0] == 429
    own = json.dumps({"data": [None], "session_hash": "mine"}).encode()
    assert {request(g, "/gradio_api/call/explain", own, client="203.0.113.3")[0] for _ in range(10)} == {200}


def test_an_ipv6_sender_is_one_visitor_per_64():
    """A /64 is what one home or server is given: its 2**64 addresses share one budget."""
    from app.gate import visitor_address

    assert visitor_address("2001:db8:1:2:aaaa::1") == visitor_address("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert visitor_address("2001:db8:1:3::1") != visitor_address("2001:db8:1:2::1")
    assert visitor_address("::ffff:203.0.113.9") == "203.0.113.9" and visitor_address("203.0.113.9") == "203.0.113.9"
    assert visitor_address("not an address") == "not an address"
    g, _ = gate(pages_per_client=2)
    data = json.dumps({"data": [None]}).encode()
    statuses = [request(g, "/gradio_api/call/explain", data, client=f"2001:db8:1:2::{i:x}")[0] for i in range(1, 4)]
    assert statuses == [200, 200, 429]


def test_a_call_that_does_not_fit_is_400_and_unknown_results_are_404():
    async def raises(scope, receive, send):
        raise TypeError("Parameter `bogus` is not a valid key-word argument.")

    g = PublicGate(raises, clock=Clock(), api_names={"explain"}, known_event=lambda event_id: event_id == "e1")
    status, text = request(g, "/gradio_api/call/v2/explain", b'{"bogus": 1}')
    assert status == 400 and b"does not fit this endpoint" in text and b"bogus" in text
    status, text = request(g, "/gradio_api/call/explain/nope", method="GET")
    assert status == 404 and b"Nothing to read there" in text
    g2, reached = gate(known_event=lambda event_id: event_id == "e1", known_stream=lambda session: session == "s1")
    assert request(g2, "/gradio_api/call/explain/e1", method="GET")[0] == 200 and reached
    assert request(g2, "/gradio_api/queue/data?session_hash=s1", method="GET")[0] == 200
    status, text = request(g2, "/gradio_api/queue/data?session_hash=s2", method="GET")
    assert status == 404 and b"Nothing to read there" in text
    assert request(g2, "/gradio_api/queue/data", method="GET")[0] == 404
    try:  # a TypeError elsewhere is a bug: it is not dressed up as the client's fault
        request(g, "/gradio_api/queue/join", b"{}")
    except TypeError:
        pass
    else:
        raise AssertionError("a TypeError outside /call/ was answered as a 400")


def test_a_session_is_its_first_address_and_is_read_in_any_json_encoding():
    """Gradio streams a session's results to whoever names it and cancels its runs: within the window a
    session used from another address is refused (403). UTF-16 JSON (json.loads reads it, so does
    Gradio) is counted like UTF-8; an empty session_hash (a KeyError in Gradio) is 400."""
    g, _ = gate(pages_per_client=2)
    mine = json.dumps({"data": [], "fn_index": 0, "session_hash": "abc"}).encode()
    assert request(g, "/gradio_api/queue/join", mine, client="203.0.113.1")[0] == 200
    status, text = request(g, "/gradio_api/cancel", mine, client="203.0.113.2")
    assert status == 403 and b"in use from another address" in text
    for read in ("/gradio_api/queue/data?session_hash=abc", "/gradio_api/heartbeat/abc"):
        status, text = request(g, read, method="GET", client="203.0.113.2")  # another's results, its page alive
        assert status == 403 and b"in use from another address" in text, read
    assert request(g, "/gradio_api/heartbeat/abc", method="GET", client="203.0.113.1")[0] == 200
    assert request(g, "/gradio_api/queue/join", mine, client="203.0.113.1")[0] == 200
    g.clock.now += 601  # unused for a window: the session may start anew elsewhere
    assert request(g, "/gradio_api/queue/join", mine, client="203.0.113.2")[0] == 200
    for n, encoding in enumerate(("utf-16", "utf-16-le", "utf-32")):
        body = json.dumps({"data": [], "session_hash": f"wide{n}"}).encode(encoding)
        assert request(g, "/gradio_api/queue/join", body, client="203.0.113.3")[0] == (429 if n == 2 else 200)
    status, text = request(g, "/gradio_api/call/explain", b'{"data": [], "session_hash": ""}')
    assert status == 400 and b"session_hash is empty" in text
    assert request(g, "/gradio_api/component_server", b"{}")[0] == 404
    assert request(g, "/gradio_api/deep_link?session_hash=abc", method="GET")[0] == 404
