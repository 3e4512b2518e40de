"""The DSNet Explain web app (Gradio).

``ui`` builds the page and wires its widgets to ``dsnet.cam``; ``security`` bounds what a visitor
can make the server do; ``params``, ``examples`` and ``outputs`` check inputs, list the example
photos and publish result files; ``zerogpu`` runs a request on a Hugging Face ZeroGPU; ``space``
deploys the app to a Space (``python -m app.space``: it is not uploaded).
"""
from .tempdir import use_private_upload_folder

use_private_upload_folder()  # before Gradio is imported: its own folder, not the machine-wide /tmp/gradio

__all__ = ["build_app", "launch"]


def __getattr__(name: str):
    if name in __all__:  # Gradio and PyTorch on first use: `python -m app.space --help` needs neither
        from . import ui
        return getattr(ui, name)
    raise AttributeError(f"module 'app' has no attribute {name!r}")
