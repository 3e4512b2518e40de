"""The DSNet Explain web app (Gradio)."""
from .security import use_private_upload_folder

use_private_upload_folder()  # before Gradio is imported: its own folder, not the machine-wide /tmp/gradio

from .ui import build_app, launch  # noqa: E402

__all__ = ["build_app", "launch"]
