"""The app's own Gradio folder (uploads, cached outputs), set before Gradio is imported."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from dsnet.core.files import pid_alive


def use_private_upload_folder() -> Path:
    """Gradio's upload and cache folder is /tmp/gradio unless GRADIO_TEMP_DIR says otherwise, shared by
    every Gradio app on the machine: give this process a folder of its own (and remove those of app
    processes that are gone), so its sweeps touch only its own files. A GRADIO_TEMP_DIR that is set is
    taken as this app's own. Call before Gradio is imported (some of its modules read it at import)."""
    if not os.environ.get("GRADIO_TEMP_DIR"):
        base = Path(tempfile.gettempdir())
        for old in base.glob("dsnet-explain-gradio-*"):
            pid = old.name.rsplit("-", 1)[1]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        os.environ["GRADIO_TEMP_DIR"] = str(base / f"dsnet-explain-gradio-{os.getpid()}")
    return Path(os.environ["GRADIO_TEMP_DIR"])
