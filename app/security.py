"""What makes the app safe to host publicly (README, "Security"); each guard is one small piece.

* ``BodyLimit``: an ASGI middleware that refuses a request body over a limit with HTTP 413 before it
  is read into memory (Content-Length checked up front, streamed bytes counted).
* ``ClientLimit``: at most N queued + running requests per client (Gradio session, and client IP as
  a proxy forwards it), on top of the queue bound for everyone; refused at once with HTTP 429.
* ``Uploads``: the image input accepts only a file that this server's upload route wrote (taken
  into memory, then deleted from disk at once), a ``data:`` URL, or an example picked by id; anything
  else gets one refusal whose text does not depend on what the client named.
* ``sweep_upload_folder``: leftovers of earlier runs are deleted at start-up and at SIGTERM.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dsnet.cam.images import MAX_BYTES, looks_like_image

log = logging.getLogger("dsnet.app")

# base64 is 4/3 of the bytes; 1 MB of slack for JSON, multipart headers and the other parameters.
MAX_BODY_BYTES = MAX_BYTES * 4 // 3 + 2**20
REFUSED_INPUT = ("This image input is not accepted: upload a file, send the image as a data: URL, or pick "
                 "an example by its id.")
PROCESS_START = time.time()
COUNTED_BODY = 64 * 2**10  # a POST body above this counts against the image budgets (a data: URL image)
MAX_FILES_PER_UPLOAD = 1  # the page uploads one image at a time; more in one request is refused (HTTP 400)


class PublicGate:
    """ASGI middleware in front of every route: what a public server refuses before any handler runs.

    * a request body over ``max_body`` bytes: HTTP 413, without reading it (the declared length is
      checked up front; a body without one is buffered up to the limit and counted);
    * an upload of more than one file: HTTP 400; of a file that does not start as an image: 415 (the
      body is read before the app parses it, so nothing else is ever stored or served back);
    * image bytes beyond ``upload_budget`` per client, or ``upload_total`` for everyone, within
      ``window`` seconds (the time an unused upload may stay on disk, or a page keep an image): HTTP
      429 / 503. Uploads count, and so does every POST body over ``COUNTED_BODY`` (a ``data:`` URL
      sent to the queue or the API: it is held in memory while it is used); likewise files beyond
      ``files_per_client`` / ``files_total``;
    * routes a public demo does not need (screen-recording processing, vibe editing): HTTP 404;
    * a 422 answer that would echo a large invalid body back: cut to one sentence.
    """

    BLOCKED = ("/gradio_api/process_recording", "/gradio_api/vibe-", "/gradio_api/undo-vibe-")

    def __init__(self, app, max_body: int = MAX_BODY_BYTES, upload_budget: int = 100 * 2**20,
                 upload_total: int = 1000 * 2**20, window: float = 600, trusted_proxies: int = 0,
                 files_per_client: int = 200, files_total: int = 2000) -> None:
        self.app, self.max_body = app, max_body
        self.upload_budget, self.upload_total, self.window = upload_budget, upload_total, window
        self.trusted_proxies = trusted_proxies
        self.files_per_client, self.files_total = files_per_client, files_total
        self.uploads: list[tuple[float, str, int, int]] = []  # (when, client, bytes, files) within the window

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path.startswith(self.BLOCKED):
            return await _answer(send, 404, "Not found.")
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body):
            return await self._too_large(send)
        is_upload = scope.get("method") == "POST" and path.rstrip("/").endswith("/gradio_api/upload")
        files = 0
        if is_upload or (declared is None and scope.get("method") in ("POST", "PUT", "PATCH")):
            # no declared length (chunked), or an upload whose files must be counted: buffer up to the
            # limit, then replay to the app
            messages = await _buffered(receive, self.max_body)
            if messages is None:
                return await self._too_large(send)
            body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
            size = len(body)
            if is_upload:
                content_type = headers.get(b"content-type", b"")
                files = _multipart_parts(body, content_type)
                if files > MAX_FILES_PER_UPLOAD:
                    return await _answer(send, 400, f"One image per upload: this request carries {files} files.")
                if files == 1 and not looks_like_image(_first_part_head(body, content_type)):
                    return await _answer(send, 415, "Only images can be uploaded (JPEG, PNG, WebP, GIF, BMP, TIFF "
                                                    "or AVIF); this file is none of them.")
            del body

            async def replay():
                return messages.pop(0) if messages else await receive()
            receive_next = replay
        else:
            size, receive_next = int(declared or 0), receive
        # Every large body is image bytes: an upload, or a data: URL sent to the queue or the API.
        if scope.get("method") == "POST" and (size > COUNTED_BODY or is_upload):
            refusal = self._upload_refusal(_scope_ip(scope, self.trusted_proxies), size, max(files, 1))
            if refusal:
                return await _answer(send, *refusal)
        await self.app(scope, receive_next, _short_422(send))

    def _upload_refusal(self, client: str, size: int, files: int = 1) -> tuple[int, str] | None:
        """Bytes and files within the window, per visitor and for everyone (a file on disk costs more
        than its bytes: a thousand one-byte files are a thousand inodes)."""
        now = time.monotonic()
        self.uploads = [u for u in self.uploads if now - u[0] < self.window]
        mine = [u for u in self.uploads if u[1] == client]
        minutes = f"{self.window / 60:.0f} minutes"
        if sum(u[2] for u in mine) + size > self.upload_budget:
            return 429, (f"You sent {sum(u[2] for u in mine) / 2**20:.0f} MB of images in the last {minutes}; the "
                         f"limit is {self.upload_budget / 2**20:.0f} MB per visitor. Wait a few minutes.")
        if sum(u[3] for u in mine) + files > self.files_per_client:
            return 429, (f"You sent {sum(u[3] for u in mine)} images in the last {minutes}; the limit is "
                         f"{self.files_per_client} per visitor. Wait a few minutes.")
        if (sum(u[2] for u in self.uploads) + size > self.upload_total
                or sum(u[3] for u in self.uploads) + files > self.files_total):
            return 503, "The server is busy with uploads; try again in a few minutes."
        self.uploads.append((now, client, size, files))
        return None

    async def _too_large(self, send) -> None:
        await _answer(send, 413, f"Request body too large: the limit is {self.max_body / 2**20:.0f} MB "
                                 f"(images up to {MAX_BYTES / 2**20:.0f} MB).")


async def _buffered(receive, limit: int) -> list[dict] | None:
    """The request's messages, read up to ``limit`` body bytes; None when the body is larger."""
    messages, seen = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages
        seen += len(message.get("body", b""))
        if seen > limit:
            return None
        if not message.get("more_body", False):
            return messages


def _boundary(content_type: bytes) -> bytes:
    """A multipart/form-data body's boundary, from its Content-Type (b"" when there is none)."""
    _, _, rest = content_type.partition(b"boundary=")
    return rest.split(b";")[0].strip().strip(b'"')


def _multipart_parts(body: bytes, content_type: bytes) -> int:
    """How many parts (files) a multipart/form-data body carries: its boundary lines, less the closing one."""
    boundary = _boundary(content_type)
    if not boundary:
        return 0
    return max(0, body.count(b"--" + boundary) - 1)


def _first_part_head(body: bytes, content_type: bytes, size: int = 16) -> bytes:
    """The first bytes of the first part's content (after its headers' blank line)."""
    start = body.find(b"--" + _boundary(content_type))
    headers_end = body.find(b"\r\n\r\n", start)
    return body[headers_end + 4:headers_end + 4 + size] if start >= 0 and headers_end >= 0 else b""


async def _answer(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _short_422(send, limit: int = 2000):
    """A send() that replaces a long 422 body (FastAPI echoes invalid input in full) by one sentence."""
    state = {"cut": False}

    async def wrapped(message):
        if message["type"] == "http.response.start" and message["status"] == 422:
            length = dict(message.get("headers") or []).get(b"content-length", b"0")
            if not length.isdigit() or int(length) > limit:
                state["cut"] = True
                body = b'{"detail":"the request does not match this endpoint\'s parameters"}'
                await send({**message, "headers": [(b"content-type", b"application/json"),
                                                   (b"content-length", str(len(body)).encode())]})
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
    """The client's address: the entry the nearest trusted proxy added to X-Forwarded-For, else the peer."""
    forwarded = [h.strip() for h in (request.headers.get("x-forwarded-for") or "").split(",") if h.strip()]
    if trusted_proxies > 0 and forwarded:
        return forwarded[-min(trusted_proxies, len(forwarded))]
    return request.client.host if request.client else "unknown"


def shape_inputs(queue, image_types: tuple[type, ...]) -> None:
    """Give every request the same shape before Gradio looks at it.

    * Raw HTTP callers may send only the first inputs (e.g. just the image): the rest get the
      components' defaults, as gradio_client fills them; more inputs than the endpoint has are
      refused. (Gradio would otherwise answer with an error that echoes every value, in full.)
    * An image payload that is not a file this server's upload route wrote loses its ``meta``, and a
      payload of the wrong type becomes an empty one: Gradio's own file handling never sees it, and
      ``Uploads.take`` gives the one refusal for every such case.
    """
    push = queue.push

    async def shaped_push(body, request, username):
        from fastapi import HTTPException
        from gradio import route_utils
        try:
            fn = route_utils.get_fn(queue.blocks, None, body)
        except Exception:  # noqa: BLE001 - an unknown endpoint: Gradio's own answer follows
            return await push(body=body, request=request, username=username)
        inputs = list(fn.inputs)
        data = body.data if isinstance(body.data, list) else None
        if data is None or len(data) > len(inputs):
            raise HTTPException(422, f"this endpoint takes a list of at most {len(inputs)} input values")
        data = data + [getattr(c, "value", None) for c in inputs[len(data):]]
        uploaded = queue.blocks.upload_file_set
        for i, component in enumerate(inputs):
            if isinstance(component, image_types) and data[i] is not None:
                data[i] = _image_payload(data[i], uploaded)
        body.data = data
        return await push(body=body, request=request, username=username)

    queue.push = shaped_push


def _image_payload(value, uploaded: set) -> dict:
    if not isinstance(value, dict):
        return {"path": None, "url": None, "orig_name": "refused"}
    path, url = value.get("path"), value.get("url")
    if isinstance(path, str) and path in uploaded:
        return value
    return {"path": path if isinstance(path, str) else None, "url": url if isinstance(url, str) else None}


@dataclass
class ClientLimit:
    """At most ``per_client`` queued + running requests per session and per client IP."""

    per_client: int
    trusted_proxies: int = 1

    def install(self, queue) -> None:
        """Wrap Gradio's ``Queue.push`` (the one door of both /queue/join and /call/<api>)."""
        push = queue.push

        async def limited_push(body, request, username):
            ip = client_ip(request, self.trusted_proxies)
            mine = sum(1 for ev in self._outstanding(queue)
                       if ev.session_hash == body.session_hash or getattr(ev, "client_ip", None) == ip)
            if mine >= self.per_client:
                from fastapi import HTTPException
                raise HTTPException(429, f"You already have {mine} requests waiting or running; "
                                         f"wait until one finishes (at most {self.per_client} per visitor).")
            result = await push(body=body, request=request, username=username)
            ok, event_id = result[0], result[1]
            if ok and isinstance(event_id, str) and event_id in queue.event_ids_to_events:
                queue.event_ids_to_events[event_id].client_ip = ip
            return result

        queue.push = limited_push

    @staticmethod
    def _outstanding(queue):
        for event_queue in queue.event_queue_per_concurrency_id.values():
            yield from event_queue.queue
        for job in queue.active_jobs:
            yield from (job or [])


class Uploads:
    """The only ways a client's image reaches the service (see the module docstring)."""

    def __init__(self, uploaded: set) -> None:
        self.uploaded = uploaded  # Gradio's record of the files its upload route wrote (Blocks.upload_file_set)

    def holds(self, path: str) -> bool:
        """Whether ``path`` is an upload not yet taken."""
        return path in self.uploaded

    def take(self, payload) -> tuple[str | None, bytes | str]:
        """(upload path or None, image data): an upload is read into memory and deleted from disk."""
        if payload is None:
            raise ValueError("no image")
        url, path = _field(payload, "url"), _field(payload, "path")
        if path and isinstance(path, str) and path in self.uploaded:
            self.uploaded.discard(path)
            try:
                p = Path(path)
                if p.is_symlink() or not p.is_file():
                    raise OSError("not a regular file")
                if p.stat().st_size > MAX_BYTES:
                    return path, b"\0" * (MAX_BYTES + 1)  # open_image states the limit
                return path, p.read_bytes()
            except OSError:
                log.warning("upload %s vanished before use", path)
                raise PermissionError(REFUSED_INPUT) from None
            finally:
                remove_upload(path)
        if isinstance(url, str) and url.startswith("data:") and not path:
            if len(url) > MAX_BODY_BYTES:
                raise PermissionError(REFUSED_INPUT)
            return None, url
        log.info("refused image payload path=%.200r url=%.200r", path, url)
        raise PermissionError(REFUSED_INPUT)


def _field(payload, name: str):
    return payload.get(name) if isinstance(payload, dict) else getattr(payload, name, None)


def remove_upload(path: str) -> None:
    """Delete an uploaded file and its (per-upload) parent folder if that is now empty."""
    p = Path(path)
    try:
        p.unlink(missing_ok=True)
        p.parent.rmdir()
    except OSError:
        pass


def upload_folder() -> Path:
    from gradio.utils import get_upload_folder
    return Path(get_upload_folder())


def sweep_upload_folder(before: float | None = None) -> int:
    """Delete files in Gradio's upload/cache folder created before ``before`` (default: this process's start)."""
    before = PROCESS_START if before is None else before
    root, removed = upload_folder(), 0
    if not root.is_dir():
        return 0
    for path in sorted(root.rglob("*"), reverse=True):  # files before their folders
        try:
            if path.is_file() or path.is_symlink():
                if path.lstat().st_ctime < before:
                    path.unlink()
                    removed += 1
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        except OSError:
            continue
    if removed:
        log.info("swept %d leftover files from the upload folder", removed)
    return removed


def env_number(name: str, default: float, kind=float):
    """A numeric setting from the environment; a bad value is a start-up error that names it."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return kind(default)
    try:
        return kind(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number") from None
