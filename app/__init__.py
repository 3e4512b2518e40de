"""The DSNet Explain web app (Gradio).

One module, one job (docs/architecture.md draws the map):

* the page: ``layout`` (widgets and wiring; ``build_app``), ``components`` (raw inputs), ``captions``
  (what the page says), ``evidence`` (the saved measurements);
* a request: ``params`` (the typed request, checked), ``handlers`` (the page and API doors),
  ``state`` (one visitor's page), ``examples``, ``outputs`` (result files written once);
* serving: ``settings`` (limits), ``serve`` (``launch``), ``gate`` (HTTP), ``queue_guards`` (the
  queue), ``uploads`` (the upload lifecycle), ``gradio_internals`` (every use of Gradio's internals),
  ``tempdir``, ``zerogpu``; deploy: ``space`` (``python -m app.space``: it is not uploaded).
"""

from .tempdir import use_private_upload_folder

use_private_upload_folder()  # before Gradio is imported: its own folder, not the machine-wide /tmp/gradio

__all__ = ["build_app", "launch"]


def __getattr__(name: str):
    if name == "build_app":  # Gradio and PyTorch on first use: `python -m app.space --help` needs neither
        from .layout import build_app

        return build_app
    if name == "launch":
        from .serve import launch

        return launch
    raise AttributeError(f"module 'app' has no attribute {name!r}")
