"""The HTTP gate: what a public server refuses before any route or handler runs.

docs/security.md, "What a public server refuses", lists each refusal with its test.

``PublicGate`` is ASGI middleware in front of every route; ``client_ip`` says who a request comes
from (the one rule for every per-visitor budget: the gate's, the queue's and the handlers').
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from dsnet.cam.images import MAX_BYTES, looks_like_image
from dsnet.core.text import quoted, shortened

from .budgets import WindowBudget

log = logging.getLogger("dsnet.app")

# base64 is 4/3 of the bytes; 1 MB of slack for JSON, multipart headers and the other parameters.
MAX_BODY_BYTES = MAX_BYTES * 4 // 3 + 2**20
COUNTED_BODY = 64 * 2**10  # a POST body above this counts against the image budgets (a data: URL image)
MAX_JSON_VALUES = 2000  # structural characters ({ [ ,) a JSON body may carry: the app's requests have < 100
FORGET_AT = 10_000  # sessions remembered before the expired ones are looked for
MAX_FILES_PER_UPLOAD = 1  # the page uploads one image at a time; more in one request is refused (HTTP 400)


class _Refused(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


class PublicGate:
    """ASGI middleware in front of every route: what a public server refuses before any handler runs.

    * a request body over ``max_body`` bytes: HTTP 413, without reading it (the declared length is
      checked up front; a body without one is counted as it arrives);
    * bodies in flight: every request body is read here, bytes counted as they arrive, at most
      ``inflight_per_client`` bytes per visitor and ``inflight_total`` for everyone (HTTP 429 / 503 at
      once), released when the request is done; a body that stalls for ``body_timeout`` seconds, or
      takes more than ``BODY_TIME_FACTOR`` times that in all, gets HTTP 408;
    * an upload of more than one file: HTTP 400; of a file without a name: 400; of a file that does
      not start as an image: 415 (so nothing else is ever stored or served back);
    * image bytes beyond ``upload_budget`` per client, or ``upload_total`` for everyone, within
      ``window`` seconds (the time an unused upload may stay on disk, or a page keep an image): HTTP
      429 / 503. Uploads count, and so does every POST body over ``COUNTED_BODY`` (a ``data:`` URL
      sent to the queue or the API); bytes that arrived count, not bytes declared; likewise files
      beyond ``files_per_client`` / ``files_total``;
    * new page sessions beyond ``pages_per_client`` per visitor within ``window``: HTTP 429 (each
      session holds state on the server: a flood of fresh ones would evict other visitors' state); a
      session used (or its stream, heartbeat or results read) from another address than its own within
      ``window``: HTTP 403; an empty one: 400;
    * ``/gradio_api/cancel`` also stops the session's computing runs (``runs``);
    * a ``/gradio_api/call/<name>`` POST without a session of its own (every ``/call/v2/`` one) is a new
      session on the server and counts as a new page;
    * ``/gradio_api/call/<name>`` for a name that is not one of ``api_names``: HTTP 404 (Gradio answers 500);
      a call whose keywords or values do not fit the endpoint: HTTP 400 (Gradio raised a TypeError: 500);
      reading the results of a call, or a page's event stream, that the server does not hold
      (``known_event`` / ``known_stream`` false): HTTP 404 (Gradio starts the stream, then breaks it);
    * routes a public demo does not need (screen-recording processing, vibe editing, the development
      reload stream, the run-history pages): HTTP 404; every answer carries ``X-Content-Type-Options: nosniff``;
    * a 422 answer that would echo a large invalid body back: cut to one sentence.
    """

    BLOCKED = (
        "/gradio_api/component_server",  # no component here has server functions (test_gradio_internals)
        "/gradio_api/deep_link",  # copies a session's values to whoever names it; the page has no deep links
        "/gradio_api/process_recording",
        "/gradio_api/vibe-",
        "/gradio_api/undo-vibe-",
        "/gradio_api/dev/reload",
        "/gradio_api/runs",
        "/gradio_api/run-history",
    )
    BODY_TIME_FACTOR = 6

    def __init__(
        self,
        app,
        max_body: int = MAX_BODY_BYTES,
        upload_budget: int = 100 * 2**20,
        upload_total: int = 1000 * 2**20,
        window: float = 600,
        trusted_proxies: int = 0,
        files_per_client: int = 200,
        files_total: int = 2000,
        body_timeout: float = 20,
        inflight_per_client: int = MAX_BODY_BYTES + 2**20,
        inflight_total: int = 16 * MAX_BODY_BYTES,
        pages_per_client: int = 60,
        runs=None,
        api_names: set[str] | None = None,
        known_event: Callable[[str], bool] | None = None,
        known_stream: Callable[[str], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app, self.max_body, self.window, self.clock = app, max_body, window, clock
        self.upload_bytes = WindowBudget(upload_budget, upload_total, window, clock)
        self.upload_files = WindowBudget(files_per_client, files_total, window, clock)
        self.trusted_proxies = trusted_proxies
        self.body_timeout = body_timeout
        self.inflight_per_client, self.inflight_total = inflight_per_client, inflight_total
        self.pages_per_client, self.runs, self.api_names = pages_per_client, runs, api_names
        self.known_event, self.known_stream = known_event, known_stream
        self.inflight: dict[str, int] = {}  # body bytes held per client, until its request is done
        self.sessions: dict[str, dict[str, float]] = {}  # per client: session hash -> first seen
        self.owners: dict[str, tuple[str, float]] = {}  # session hash -> (client, last seen)
        self._forget_at = FORGET_AT
        self._forwarding_logged = False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        send = _short_422(_nosniff(send))
        path = scope.get("path", "")
        if path.startswith(self.BLOCKED):
            return await _answer(send, 404, "Not found.")
        called = _CALL.match(path)
        if called and self.api_names is not None and called.group(1) not in self.api_names:
            return await _answer(
                send,
                404,
                f"No endpoint {quoted(called.group(1), 40)}; this app has: {', '.join(sorted(self.api_names))}.",
            )
        if scope.get("method") == "GET":
            session = _named_session(path, scope)
            if session is not None and self._owned_elsewhere(session, _scope_ip(scope, self.trusted_proxies)):
                return await _answer(send, 403, OWNED_ELSEWHERE)
            if self.known_event is not None and self._unknown_stream(path, session):
                return await _answer(send, 404, "Nothing to read there: results are read once, within minutes.")
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await self._too_large(send)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        client = _scope_ip(scope, self.trusted_proxies)
        self._log_forwarding(headers)
        held = [0]
        try:
            try:
                is_upload = path.rstrip("/").endswith("/gradio_api/upload")
                messages = await self._body(receive, client, held, is_upload)
                body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
                self._check(path, headers, body, client)
            except _Refused as r:
                return await _answer(send, r.status, r.text)
            del body

            async def replay():
                return messages.pop(0) if messages else await receive()

            started = [False]

            async def watched(message):
                started[0] = started[0] or message["type"] == "http.response.start"
                await send(message)

            try:
                await self.app(scope, replay, watched)
            except TypeError as e:  # Gradio's construct_args on keywords a /call/ does not take
                if not called or started[0]:
                    raise
                return await _answer(send, 400, f"The call does not fit this endpoint: {shortened(str(e), 160)}")
        finally:
            self._release(client, held[0])

    def _owned_elsewhere(self, session: str, client: str) -> bool:
        """Whether another address used this session within the window (see ``_session_refusal``)."""
        owner, seen = self.owners.get(session, (client, 0.0))
        return owner != client and self.clock() - seen < self.window

    def _unknown_stream(self, path: str, session: str | None) -> bool:
        """A GET of a call's results or of a page's event stream (``session``) that the server does not hold."""
        results = _RESULTS.match(path)
        if results:
            return not self.known_event(results.group(1))
        if path.rstrip("/") == "/gradio_api/queue/data" and self.known_stream is not None:
            return not self.known_stream(session or "")
        return False

    async def _body(self, receive, client: str, held: list[int], is_upload: bool) -> list[dict]:
        """The request's messages, bytes counted as they arrive: against the in-flight limits (released when
        the request is done) and, once the body is an upload or larger than ``COUNTED_BODY``, against the
        visitor's image bytes (kept: bytes sent count whether or not the body ever completes)."""
        messages, seen, charged = [], 0, 0
        started = time.monotonic()
        while True:
            left = min(self.body_timeout, started + self.BODY_TIME_FACTOR * self.body_timeout - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), timeout=max(left, 0.001))
            except TimeoutError:
                raise _Refused(408, "The request body stalled or came too slowly; send it again.") from None
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            chunk = len(message.get("body", b""))
            seen += chunk
            if seen > self.max_body:
                raise _Refused(413, self._too_large_text())
            held[0] += chunk
            self.inflight[client] = self.inflight.get(client, 0) + chunk
            if self.inflight[client] > self.inflight_per_client:
                raise _Refused(429, "You are sending too many request bodies at once; wait for them to finish.")
            if sum(self.inflight.values()) > self.inflight_total:
                raise _Refused(503, "The server is busy receiving uploads; try again in a moment.")
            if is_upload or seen > COUNTED_BODY:
                refusal = self._bytes_refusal(client, seen - charged)
                if refusal:
                    raise _Refused(*refusal)
                charged = seen
            if not message.get("more_body", False):
                return messages

    def _log_forwarding(self, headers: dict) -> None:
        """Once per process: how many X-Forwarded-For entries arrive and which one is taken as the visitor
        (on a Space, whether its proxy chain has more than one hop shows here; no address is logged)."""
        if self._forwarding_logged:
            return
        self._forwarding_logged = True
        entries = [h for h in headers.get(b"x-forwarded-for", b"").split(b",") if h.strip()]
        log.info(
            "X-Forwarded-For carries %d entries; DSNET_TRUSTED_PROXIES=%d: the visitor is %s",
            len(entries),
            self.trusted_proxies,
            f"entry {min(self.trusted_proxies, len(entries))} from the right"
            if self.trusted_proxies and entries
            else "the peer address",
        )

    def _release(self, client: str, size: int) -> None:
        if size:
            left = self.inflight.get(client, 0) - size
            if left > 0:
                self.inflight[client] = left
            else:
                self.inflight.pop(client, None)

    def _check(self, path: str, headers: dict, body: bytes, client: str) -> None:
        """Refuse (``_Refused``) what a complete body may not carry; charge the file budget."""
        if path.rstrip("/").endswith("/gradio_api/upload"):
            self._check_upload(headers.get(b"content-type", b""), body)
            refusal = self._files_refusal(client, 1)
            if refusal:
                raise _Refused(*refusal)
            return
        if body.count(b"{") + body.count(b"[") + body.count(b",") > MAX_JSON_VALUES:
            # a 27 MB list of {} parses to ~60x its size in Python objects; a data: URL (base64) has none
            raise _Refused(413, f"The request carries too many values (at most {MAX_JSON_VALUES}).")
        # /call/v2/ bodies are keyword arguments (Gradio gives such a call a session of its own), and a
        # /call/ without a session_hash gets a fresh one: either way a new session's state on the server
        called = _CALL.match(path)
        session = None if path.startswith("/gradio_api/call/v2/") else _session_hash(body)
        if session is None and called:
            session = f"call {uuid.uuid4().hex}"
        if session == "":
            raise _Refused(400, "The session_hash is empty; leave it out or send a random id of your own.")
        if session is not None:
            refusal = self._session_refusal(client, session)
            if refusal:
                raise _Refused(*refusal)
            if path.rstrip("/").endswith("/gradio_api/cancel") and self.runs is not None:
                self.runs.cancel_session(session)

    @staticmethod
    def _check_upload(content_type: bytes, body: bytes) -> None:
        """One file, with a name, that starts as an image: read with the parser Gradio's upload route uses
        (python-multipart), so the gate and the route see the same parts."""
        parts = _multipart_parts(content_type, body)
        if parts is None:
            raise _Refused(400, "The upload is not multipart/form-data with a boundary.")
        if len(parts) != MAX_FILES_PER_UPLOAD:
            raise _Refused(400, f"One image per upload: this request carries {len(parts)} files.")
        disposition, head = parts[0]
        from python_multipart.multipart import parse_options_header

        if not parse_options_header(disposition)[1].get(b"filename"):
            raise _Refused(400, "The upload has no file name.")
        if not looks_like_image(head):
            raise _Refused(
                415,
                "Only images can be uploaded (JPEG, PNG, WebP, GIF, BMP, TIFF or AVIF); this file is none of them.",
            )

    def _session_refusal(self, client: str, session: str) -> tuple[int, str] | None:
        """New sessions per visitor within the window (a known session always passes); a session in use
        from another address within the window is that visitor's (Gradio streams a session's results to
        whoever names it, and cancels its runs)."""
        now = self.clock()
        if self._owned_elsewhere(session, client):
            return 403, OWNED_ELSEWHERE
        mine = {h: t for h, t in self.sessions.get(client, {}).items() if now - t < self.window}
        self.sessions[client] = mine
        if session in mine:
            self.owners[session] = (client, now)
            return None
        if len(mine) >= self.pages_per_client:
            return 429, (
                f"Too many new pages from your address in the last {self.window / 60:.0f} minutes (the "
                f"limit is {self.pages_per_client}); use a page you have open (API callers: send the same "
                f"session_hash with each call), or wait a few minutes."
            )
        mine[session] = now
        self.owners[session] = (client, now)
        if len(self.owners) > self._forget_at:  # forget sessions, and visitors, unused for a window
            self.owners = {h: (c, t) for h, (c, t) in self.owners.items() if now - t < self.window}
            self.sessions = {c: s for c, s in self.sessions.items() if any(now - t < self.window for t in s.values())}
            self._forget_at = max(FORGET_AT, 2 * len(self.owners))  # each scan pays for as many new sessions
        return None

    def _bytes_refusal(self, client: str, size: int) -> tuple[int, str] | None:
        """Image bytes within the window, per visitor and for everyone; charged when they pass."""
        over = self.upload_bytes.exceeded(client, size)
        if over == "client":
            return 429, (
                f"You sent {self.upload_bytes.used(client) / 2**20:.0f} MB of images in the last "
                f"{self.window / 60:.0f} minutes; the limit is {self.upload_bytes.per_client / 2**20:.0f} MB per "
                "visitor. Wait a few minutes."
            )
        if over:
            return 503, "The server is busy with uploads; try again in a few minutes."
        self.upload_bytes.charge(client, size)
        return None

    def _files_refusal(self, client: str, files: int) -> tuple[int, str] | None:
        """Uploaded files within the window (a file on disk costs more than its bytes: an inode)."""
        over = self.upload_files.exceeded(client, files)
        if over == "client":
            return 429, (
                f"You sent {self.upload_files.used(client):.0f} images in the last {self.window / 60:.0f} minutes; "
                f"the limit is {self.upload_files.per_client:.0f} per visitor. Wait a few minutes."
            )
        if over:
            return 503, "The server is busy with uploads; try again in a few minutes."
        self.upload_files.charge(client, files)
        return None

    async def _too_large(self, send) -> None:
        await _answer(send, 413, self._too_large_text())

    def _too_large_text(self) -> str:
        return (
            f"Request body too large: the limit is {self.max_body / 2**20:.0f} MB "
            f"(images up to {MAX_BYTES / 2**20:.0f} MB)."
        )


def _multipart_parts(content_type: bytes, body: bytes, head: int = 16) -> list[tuple[bytes, bytes]] | None:
    """(Content-Disposition, first ``head`` bytes) of each part of a multipart/form-data body, parsed as
    Gradio's upload route parses it; None when the body is not multipart/form-data with a boundary."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, options = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        return None
    parts: list[list] = []
    field = [b""]

    def on_part_begin():
        parts.append([b"", b""])

    def on_header_field(data, start, end):
        field[0] += data[start:end]

    def on_header_value(data, start, end):
        if field[0].lower() == b"content-disposition":
            parts[-1][0] += data[start:end]

    def on_header_end():
        field[0] = b""

    def on_part_data(data, start, end):
        if len(parts[-1][1]) < head:
            parts[-1][1] += data[start : min(end, start + head - len(parts[-1][1]))]

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
    }
    try:
        parser = MultipartParser(options[b"boundary"], callbacks)
        parser.write(body)
        parser.finalize()
    except Exception:
        return None
    return [(disposition, first) for disposition, first in parts]


OWNED_ELSEWHERE = (
    "This page's session is in use from another address. Reload the page (API callers: send a random "
    "session_hash of your own)."
)
_SESSION_PATH = re.compile(r"^/gradio_api/(?:heartbeat|stream)/([^/]+)")


def _named_session(path: str, scope) -> str | None:
    """The session a GET reads: its event stream (``queue/data?session_hash=``), heartbeat or media stream."""
    if path.rstrip("/") == "/gradio_api/queue/data":
        from urllib.parse import parse_qs

        return parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash", [None])[0]
    named = _SESSION_PATH.match(path)
    return named.group(1) if named else None


_CALL = re.compile(r"^/gradio_api/call/(?:v2/)?([^/]+)")
_RESULTS = re.compile(r"^/gradio_api/call/(?:v2/)?[^/]+/([^/]+)/?$")  # GET: a call's event stream


def _session_hash(body: bytes) -> str | None:
    """The page session a JSON body names (queue joins, cancels, component calls), read as Gradio reads it:
    the top-level ``session_hash`` of the parsed body (escapes, any length, anywhere in the body)."""
    if body[:1] == b"{" and body[1:2] != b"\x00" and b"session_hash" not in body and b"\\u" not in body:
        return None  # UTF-8 JSON without the name (UTF-16 and -32 are parsed: json.loads reads them too)
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    session = parsed.get("session_hash") if isinstance(parsed, dict) else None
    return session if isinstance(session, str) else None


async def _answer(send, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _nosniff(send):
    """A send() that adds ``X-Content-Type-Options: nosniff`` to every answer (no file is ever run as a page)."""

    async def wrapped(message):
        if message["type"] == "http.response.start":
            headers = [h for h in message.get("headers") or [] if h[0].lower() != b"x-content-type-options"]
            message = {**message, "headers": [*headers, (b"x-content-type-options", b"nosniff")]}
        await send(message)

    return wrapped


def _short_422(send, limit: int = 2000):
    """A send() that replaces a long 422 body (FastAPI echoes invalid input in full) by one sentence."""
    state = {"cut": False}

    async def wrapped(message):
        if message["type"] == "http.response.start" and message["status"] == 422:
            length = dict(message.get("headers") or []).get(b"content-length", b"0")
            if not length.isdigit() or int(length) > limit:
                state["cut"] = True
                body = b'{"detail":"the request does not match this endpoint\'s parameters"}'
                await send(
                    {
                        **message,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        if state["cut"]:
            return  # the original body is dropped
        await send(message)

    return wrapped


def _scope_ip(scope, trusted_proxies: int) -> str:
    from starlette.requests import Request

    return client_ip(Request(scope), trusted_proxies)


def client_ip(request, trusted_proxies: int) -> str:
    """Who a request comes from: the entry the nearest trusted proxy added to X-Forwarded-For, else the
    peer; an IPv6 address as its /64 (see ``visitor_address``)."""
    forwarded = [h.strip() for h in (request.headers.get("x-forwarded-for") or "").split(",") if h.strip()]
    if trusted_proxies > 0 and forwarded:
        return visitor_address(forwarded[-min(trusted_proxies, len(forwarded))])
    return visitor_address(request.client.host) if request.client else "unknown"


def visitor_address(address: str) -> str:
    """The address every per-visitor budget is kept for. An IPv6 address counts as its /64: a home or a
    server is given a whole /64, so one sender could otherwise be 2**64 visitors with a budget each. An
    IPv4-mapped IPv6 address is its IPv4 address; anything else (a name, a forged entry) as it is."""
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)
