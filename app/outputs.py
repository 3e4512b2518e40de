"""Pictures the app hands to Gradio, as files written once.

Gradio stores a returned array or PIL image under a name made from its content and writes that file
again, in place, every time the same picture is returned: a popular example explained by two
visitors at once, or a streamed column re-sent with the next one. A browser that is fetching the file
meanwhile receives a cut PNG (``h11 LocalProtocolError: Too little data for declared Content-Length``
in the log, a broken picture on the page). A returned *file path* is never rewritten: this folder
lies inside Gradio's own, so Gradio serves the file as it is (a file elsewhere it would copy under a
temporary name and rename). So every picture goes out as a file of ours, written once under a unique
name (``publish``); they live in the app's own Gradio folder (swept at start-up and SIGTERM) and
expire after ``DSNET_CACHE_SECONDS``, as the page's state does (README: after that, Explain again).
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from dsnet.core.files import atomic_path

from .gradio_internals import upload_folder

SWEEP_EVERY = 60.0  # seconds between two looks for expired files
_last_sweep = [0.0]
_sweep_lock = threading.Lock()


def publish(picture: np.ndarray | Image.Image | Path, stem: str, keep_seconds: float) -> str:
    """The path of a new file holding ``picture`` (an array or PIL image as PNG; a file path copied as is)."""
    folder = upload_folder() / "outputs"
    folder.mkdir(parents=True, exist_ok=True)
    _expire(folder, keep_seconds)
    suffix = picture.suffix.lower() if isinstance(picture, Path) else ".png"
    path = folder / f"{stem}-{uuid.uuid4().hex[:12]}{suffix}"
    with atomic_path(path) as tmp:
        if isinstance(picture, Path):
            shutil.copyfile(picture, tmp)
        else:
            (Image.fromarray(picture) if isinstance(picture, np.ndarray) else picture).save(tmp, format="PNG")
    return str(path)


def _expire(folder: Path, keep_seconds: float) -> None:
    now = time.time()
    with _sweep_lock:
        if now - _last_sweep[0] < min(SWEEP_EVERY, keep_seconds):
            return
        _last_sweep[0] = now
    for old in folder.iterdir():
        try:
            if now - old.stat().st_mtime > keep_seconds:
                old.unlink(missing_ok=True)
        except OSError:
            pass  # removed by another sweep meanwhile
