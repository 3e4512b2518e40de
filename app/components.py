"""Input components that hand their raw payload to the handler, which validates it (``app.params``).

Gradio's own preprocessing echoes a bad value back in full and lets any JSON value through a
checkbox; these keep the same front-end widget (``block_name``) and skip it.
"""

from __future__ import annotations

import gradio as gr

from .gradio_internals import block_name


class RawInput:
    """Mixin: the payload reaches the handler as the client sent it."""

    def get_block_name(self) -> str:
        return block_name(type(self))

    def preprocess(self, payload):
        return payload


class RawImage(RawInput, gr.Image):
    """gr.Image whose payload reaches the handler undecoded: ``Uploads.take`` decides what is accepted."""


class RawDropdown(RawInput, gr.Dropdown):
    pass


class RawRadio(RawInput, gr.Radio):
    pass


class RawCheckbox(RawInput, gr.Checkbox):
    pass


class RawSlider(RawInput, gr.Slider):
    pass
