"""The DSNet Explain web app (Gradio)."""
from .ui import build_app, launch

__all__ = ["build_app", "launch"]
