"""The app's own Gradio folder (uploads, cached outputs), set before Gradio is imported."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from dsnet.core.files import pid_alive

OWNER = ".dsnet-explain-owner"  # in each such folder: the pid of the app process it belongs to


def use_private_upload_folder() -> Path:
    """Gradio's upload and cache folder is /tmp/gradio unless GRADIO_TEMP_DIR says otherwise, shared by
    every Gradio app on the machine: give this process a folder of its own (and remove those of app
    processes that are gone), so its sweeps touch only its own files. A GRADIO_TEMP_DIR that is set is
    taken as this app's own. Call before Gradio is imported (some of its modules read it at import).

    The folder's name is random: Gradio puts its absolute path in upload answers and result URLs, which
    then say nothing about the process (its pid lives in the ``OWNER`` file inside)."""
    if not os.environ.get("GRADIO_TEMP_DIR"):
        base = Path(tempfile.gettempdir())
        for owner in base.glob(f"*/{OWNER}"):
            pid = owner.read_text().strip()
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(owner.parent, ignore_errors=True)
        folder = Path(tempfile.mkdtemp(prefix="gradio-", dir=base))
        (folder / OWNER).write_text(str(os.getpid()))
        os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return Path(os.environ["GRADIO_TEMP_DIR"])
