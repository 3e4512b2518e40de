"""Compose result pictures: labelled grids of equally sized RGB tiles (explain PNG, Figure 5, app download).

Pure image composition: nothing here knows of models or CAM results (``dsnet.cam.service.comparison``
lays those out with it)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def grid(tiles: list[list[np.ndarray]], col_titles: list[str], row_titles: list[str], tile: int = 224) -> Image.Image:
    """Rows x columns of uint8/float RGB arrays, each resized to ``tile`` px, with titles."""
    rows, cols = len(tiles), max(len(r) for r in tiles)
    font = _font(max(11, tile // 16))
    line = font.size + 4
    col_lines = max((t.count("\n") + 1 for t in col_titles), default=0)
    top = line * col_lines + 6
    left = max((int(font.getlength(t)) for t in row_titles), default=0) + 12 if row_titles else 0
    canvas = Image.new("RGB", (left + cols * (tile + 4), top + rows * (tile + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(col_titles):
        draw.multiline_text((left + c * (tile + 4) + 2, 3), title, fill="black", font=font, spacing=2)
    for r, row in enumerate(tiles):
        y = top + r * (tile + 4)
        if row_titles:
            draw.text((4, y + tile // 2 - line // 2), row_titles[r], fill="black", font=font)
        for c, arr in enumerate(row):
            arr = np.asarray(arr)
            if arr.dtype != np.uint8:
                arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
            canvas.paste(
                Image.fromarray(arr).resize((tile, tile), Image.Resampling.BILINEAR), (left + c * (tile + 4), y)
            )
    return canvas


def titled(body: Image.Image, title: str, tile: int = 224) -> Image.Image:
    """``body`` under a line of ``title`` (font sized for ``tile`` px tiles)."""
    font = _font(max(12, tile // 14))
    head = font.size + 12
    canvas = Image.new("RGB", (body.width, body.height + head), "white")
    ImageDraw.Draw(canvas).text((6, 6), title, fill="black", font=font)
    canvas.paste(body, (0, head))
    return canvas
