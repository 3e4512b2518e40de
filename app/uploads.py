"""The upload lifecycle: how a client's image reaches the service, and how files leave the disk.

* ``Uploads``: the image input accepts only a file that this server's upload route wrote (taken
  into memory, then deleted from disk at once), a ``data:`` URL, or an example picked by id; anything
  else gets one refusal whose text does not depend on what the client named.
* ``sweep_upload_folder``: leftovers of earlier runs are deleted at start-up and at SIGTERM.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dsnet.cam.images import MAX_BYTES

from .gate import MAX_BODY_BYTES
from .gradio_internals import upload_folder
from .tempdir import OWNER

log = logging.getLogger("dsnet.app")

REFUSED_INPUT = (
    "This image input is not accepted: upload a file (an upload is read once, then deleted: upload it again "
    "for another request), send the image as a data: URL, or pick an example by its id."
)
PROCESS_START = time.time()


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


def sweep_upload_folder(before: float | None = None) -> int:
    """Delete files in Gradio's upload/cache folder created before ``before`` (default: this process's start)."""
    before = PROCESS_START if before is None else before
    root, removed = upload_folder(), 0
    if not root.is_dir():
        return 0
    for path in sorted(root.rglob("*"), reverse=True):  # files before their folders
        try:
            if path.parent == root and path.name == OWNER:
                continue  # says which process the folder belongs to (app.tempdir)
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
