"""Image operations as small pure functions with explicit contracts.

Decoded images are RGB; "float images" are float32 H x W x 3 in [0, 1]; CAMs are float32 H x W in
[0, 1]; overlays are uint8 H x W x 3 RGB. Untrusted input goes through ``open_image`` only.
"""

from __future__ import annotations

import base64
import io
import itertools
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dsnet.core.text import shortened
from dsnet.zoo.manifest import Preprocessing

# Limits for untrusted images (docs/security.md, "Serving settings and limits").
MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000  # a 40 MP photo decodes to 120 MB of RGB; bombs are refused before decoding
MAX_ASPECT = 20.0  # long side / short side; a 10000 x 1 strip carries no picture worth explaining
MIN_SIDE = 8
# A progressive JPEG's decoder makes a pass over the whole image per scan: a small file of thousands of
# empty scans costs minutes of CPU. Encoders write about 10 (libjpeg's progressive script); refused
# above this, before decoding. Counting SOS markers is exact: inside entropy-coded data 0xFF is stuffed.
MAX_JPEG_SCANS = 100
# Pillow parses a file's structure (JPEG markers, PNG chunks, GIF blocks) in Python before and around the
# pixels, a few microseconds per block: 20 MB of 4-byte JPEG markers took 4.4 s, 1.6M empty PNG chunks
# 5.7 s, GIF comments are joined with += (quadratic: 3 MB of them, 10 s). Normal files have tens of markers
# or chunks (a PNG's IDAT in 8 KB pieces: 2,600 for 20 MB) and a few KB of GIF extensions; beyond these,
# refused before Pillow sees the file (``_check_structure``). A TIFF's strips or tiles are a Python object
# and a decoder turn each: 4.8M tiles of 1 px (19 MB) took 30 s and +1.7 GB.
MAX_JPEG_MARKERS = 1000
MAX_PNG_CHUNKS = 20_000
MAX_GIF_EXTENSION_BYTES = 64 * 1024  # extensions (comments, application data) before the first frame
MAX_TIFF_BLOCKS = 50_000  # strips or tiles of the first page (256 px tiles: ~600 for 40 MP; one-row strips: ~28,000)
MAX_GIF_BLOCKS = 200_000  # sub-blocks walked to find a second frame (a 20 MB first frame has ~82,000)
# EXIF larger than a JPEG can carry (one 64 KB segment) is not read: Pillow turns every value into a
# Python object (a 19 MB PNG eXIf chunk with an orientation: 18.7 s and +604 MB).
MAX_EXIF_BYTES = 64 * 1024
# Decoders Pillow writes in Python (for ALLOWED_FORMATS: run-length BMP) spend ~0.1 us per pixel in the
# interpreter: a 26 KB RLE8 BMP declaring 40 MP took 4.6 s of CPU. Such files get a smaller pixel limit.
MAX_PYTHON_DECODER_PIXELS = 8_000_000
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")  # never EPS/PDF/SVG (no Ghostscript)


class ImageError(ValueError):
    """An image that cannot be used; the message is meant for the person who sent it."""


@dataclass(frozen=True)
class LoadedImage:
    image: Image.Image  # RGB, upright
    notes: tuple[str, ...] = ()  # what was done to it that the user should know (first frame, alpha...)


def _decoders() -> list[str]:
    """The allowed formats this Pillow build can decode (AVIF needs Pillow >= 11.2 with libavif)."""
    Image.init()
    return [f for f in ALLOWED_FORMATS if f in Image.OPEN]


def open_image(
    source: str | os.PathLike | bytes | Image.Image | np.ndarray, admit: Callable[[int, int], None] | None = None
) -> LoadedImage:
    """Decode untrusted input to an upright RGB PIL image, or raise ImageError saying why.

    Accepts a path, raw bytes, a ``data:`` URL, a PIL image or an RGB/gray uint8 array. ``admit(width,
    height)`` is called once the size is known and checked, before any pixel is decoded: a server
    charges the decode to its sender there (and raises to refuse it).
    """
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, Image.Image):
        return _checked_rgb(source, fmt=source.format or "in-memory", admit=admit)
    data = _read_bytes(source)
    if not data:
        raise ImageError("the file is empty (0 bytes)")
    if len(data) > MAX_BYTES:
        raise ImageError(f"the file is {len(data) / 2**20:.1f} MB; the limit is {MAX_BYTES / 2**20:.0f} MB")
    frames = _check_structure(data)
    try:
        im = Image.open(io.BytesIO(data), formats=_decoders())
    except UnidentifiedImageError:
        kind = _sniff(data)
        raise ImageError(
            f"this is not a supported image ({kind}); send a JPEG, PNG, WebP, GIF, BMP, TIFF or AVIF"
        ) from None
    except Image.DecompressionBombError:
        raise ImageError(f"the image is too large to decode safely; the limit is {MAX_PIXELS / 1e6:.0f} MP") from None
    except Exception as e:  # a header Pillow cannot parse (see _corrupt)
        raise _corrupt(_signature(data), e) from None
    return _checked_rgb(im, fmt=im.format, admit=admit, frames=frames)


_JPEG_MARKER = re.compile(rb"\xff[\xc0-\xcf\xd8-\xfe]")  # not RSTn; inside entropy data 0xFF is stuffed


def _check_structure(data: bytes) -> int | None:
    """Refuse a file whose structure Pillow would parse block by block beyond the limits above; for a
    GIF, return its frame count as ``_gif_frames`` finds it (None for other formats)."""
    if data[:2] == b"\xff\xd8":
        if (scans := data.count(b"\xff\xda")) > MAX_JPEG_SCANS:
            raise ImageError(
                f"the JPEG has {scans} scans; at most {MAX_JPEG_SCANS} are decoded (a normal one has about 10)"
            )
        if sum(1 for _ in itertools.islice(_JPEG_MARKER.finditer(data), MAX_JPEG_MARKERS + 1)) > MAX_JPEG_MARKERS:
            raise ImageError(f"the JPEG has more than {MAX_JPEG_MARKERS} markers (a normal one has a few dozen)")
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        chunks, pos = 0, 8
        while pos + 8 <= len(data) and chunks <= MAX_PNG_CHUNKS:
            chunks += 1
            if data[pos + 4 : pos + 8] == b"IEND":
                break
            pos += 12 + int.from_bytes(data[pos : pos + 4], "big")
        if chunks > MAX_PNG_CHUNKS:
            raise ImageError(f"the PNG has more than {MAX_PNG_CHUNKS} chunks (a normal one has a few, or one per 8 KB)")
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif_frames(data)
    elif data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        if (blocks := _tiff_blocks(data)) > MAX_TIFF_BLOCKS:
            raise ImageError(f"the TIFF's first page has {blocks} strips or tiles; at most {MAX_TIFF_BLOCKS} are read")
    return None


def _tiff_blocks(data: bytes) -> int:
    """The number of strips or tiles the first page of a TIFF (or BigTIFF) declares (its StripOffsets or
    TileOffsets count), read from its first directory; 0 if the directory cannot be read (Pillow says why)."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    try:
        if big:
            (at,) = struct.unpack_from(order + "Q", data, 8)
            (entries,) = struct.unpack_from(order + "Q", data, at)
            entry, size, first = order + "HHQ", 20, at + 8
        else:
            (at,) = struct.unpack_from(order + "I", data, 4)
            (entries,) = struct.unpack_from(order + "H", data, at)
            entry, size, first = order + "HHI", 12, at + 2
        counts = (struct.unpack_from(entry, data, first + i * size) for i in range(min(entries, 65535)))
        return max((count for tag, _, count in counts if tag in (273, 324)), default=0)
    except struct.error:
        return 0


def _gif_frames(data: bytes) -> int:
    """1 or 2: whether a GIF has a second frame, found by walking its blocks (Pillow's is_animated walks
    the first frame's data in Python too); ImageError past the GIF limits above."""
    pos = 13 + (3 << ((data[10] & 7) + 1) if len(data) > 10 and data[10] & 0x80 else 0)
    frames = blocks = extension_bytes = 0
    while pos < len(data) and frames < 2:
        kind = data[pos]
        if kind == 0x3B:  # trailer
            break
        if kind == 0x21:  # extension: label, then sub-blocks
            pos += 2
            extension_bytes += 2 if frames == 0 else 0
        elif kind == 0x2C:  # image descriptor, local colour table, LZW code size, then sub-blocks
            frames += 1
            if frames == 2:
                break
            flags = data[pos + 9] if pos + 9 < len(data) else 0
            pos += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1
        else:  # a stray byte: skipped, as Pillow skips it (one at a time, so it counts as a block)
            pos += 1
            blocks += 1
        if kind in (0x21, 0x2C):
            while pos < len(data) and data[pos]:  # the sub-blocks, each led by its length, up to a 0
                if kind == 0x21 and frames == 0:
                    extension_bytes += data[pos] + 1  # file bytes: many tiny comments cost more than one long
                blocks += 1
                pos += data[pos] + 1
            pos += 1
        if extension_bytes > MAX_GIF_EXTENSION_BYTES or blocks > MAX_GIF_BLOCKS:
            raise ImageError(
                f"the GIF carries more than {MAX_GIF_EXTENSION_BYTES // 1024} KB of comments or other extensions "
                f"before its image, or more than {MAX_GIF_BLOCKS} blocks; save it again (or as PNG)"
            )
    return max(frames, 1)


def _corrupt(fmt: str, error: Exception) -> ImageError:
    """The one sentence for a file its decoder failed on. Pillow's plugins raise more than OSError,
    SyntaxError and ValueError on corrupt bytes: OSError from ``Image.open`` itself (a JPEG or PNG cut
    in its header, a BMP's unknown compression, a WebP libwebp refuses), RuntimeError (AVIF), IndexError
    and struct.error (a GIF's broken second frame, found by ``is_animated``). Whatever a decoder raises
    on a visitor's bytes is that file's fault; uncaught, it reached clients as an error without a message."""
    said = isinstance(error, (OSError, SyntaxError, ValueError, RuntimeError)) and str(error)  # a decoder's words
    return ImageError(f"the {fmt} file is truncated or corrupt" + (f" ({shortened(said, 80)})" if said else ""))


def _signature(data: bytes) -> str:
    """The allowed format a file's first bytes claim (for a message), or "image"."""
    fmt = next((f for magic, f in FORMAT_MAGIC.items() if data.startswith(magic)), "image")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return "AVIF" if data[4:8] == b"ftyp" else fmt


def _read_bytes(source: str | os.PathLike | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    text = str(source)
    if text.startswith("data:"):
        try:
            header, payload = text.split(",", 1)
            return base64.b64decode(payload, validate=True) if ";base64" in header else payload.encode()
        except Exception as e:
            raise ImageError(f"the data URL could not be decoded ({e})") from None
    path = Path(text)
    if not path.is_file():
        raise ImageError(f"no such image file: {path.name}")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise ImageError(f"the file is {size / 2**20:.1f} MB; the limit is {MAX_BYTES / 2**20:.0f} MB")
    return path.read_bytes()


FORMAT_MAGIC = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}  # WebP and AVIF: looks_like_image
IMAGE_MAGIC = tuple(FORMAT_MAGIC)


def looks_like_image(head: bytes) -> bool:
    """Whether a file's first bytes are those of an allowed format (JPEG, PNG, GIF, BMP, TIFF, WebP,
    AVIF): what an upload must start with before it is even stored."""
    if head.startswith(IMAGE_MAGIC):
        return True
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return True
    return head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis", b"mif1", b"msf1")


def _sniff(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith(b"%pdf"):
        return "a PDF document"
    if b"<svg" in head:
        return "an SVG drawing"
    if head.startswith((b"<!doctype html", b"<html")):
        return "an HTML page"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "an unknown or corrupt format"


def _check_size(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"the image is {width} x {height} = {width * height / 1e6:.0f} MP; the limit is {MAX_PIXELS / 1e6:.0f} MP"
        )
    if max(width, height) / max(1, min(width, height)) > MAX_ASPECT:
        raise ImageError(f"the image is {width} x {height}; its aspect ratio is over {MAX_ASPECT:.0f}:1")
    if min(width, height) < MIN_SIDE:
        raise ImageError(f"the image is {width} x {height}; both sides must be at least {MIN_SIDE} px")


def _checked_rgb(
    im: Image.Image, fmt: str | None, admit: Callable[[int, int], None] | None = None, frames: int | None = None
) -> LoadedImage:
    """An opened image checked (size, frames, corruption), turned upright and converted to 8-bit RGB.
    ``frames``: the frame count already found (a GIF's, by ``_gif_frames``), else asked of Pillow."""
    notes = []
    _check_size(*im.size)  # before any pixel is decoded
    _check_decoder(im, fmt)
    if admit is not None:
        admit(*im.size)
    try:
        # is_animated looks for a second frame only; n_frames would walk every page (a TIFF of 100k pages:
        # quadratic, a minute of CPU) just to print a number
        if (frames or 1) > 1 or (frames is None and getattr(im, "is_animated", False)):
            im.seek(0)
            notes.append(f"the {fmt} has several frames; the first one is used")
        if fmt == "TIFF":  # Pillow turns a TIFF upright itself as it loads it (and drops the tag)
            orientation = _orientation(im)
            im.load()
        else:  # after load: a PNG's eXIf may follow its pixels
            im.load()
            orientation = _orientation(im)
            if orientation in TRANSPOSE:
                im = im.transpose(TRANSPOSE[orientation])
    except Exception as e:  # whatever the decoder raises on these bytes (see _corrupt)
        raise _corrupt(fmt, e) from None
    if orientation == 0:
        notes.append(f"its EXIF block is over {MAX_EXIF_BYTES // 1024} KB: not read, orientation ignored")
    if orientation in TRANSPOSE:
        notes.append("turned upright using its EXIF orientation")
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.array(im, dtype=np.float32)  # scaled in place: float64 temporaries held ~770 MB for 40 MP
        lo, hi = float(arr.min()), float(arr.max())
        arr -= lo
        arr *= (255 / (hi - lo)) if hi > lo else 0.0
        im = Image.fromarray(arr.astype(np.uint8), "L")
        del arr
        notes.append("high bit-depth image scaled to 8 bits")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append("transparent areas shown on white")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return LoadedImage(im if im.mode == "RGB" else im.convert("RGB"), tuple(notes))


# EXIF orientation -> the transpose that shows the image upright (as Pillow's ImageOps.exif_transpose,
# which also rewrites the whole EXIF block: seconds for a large one)
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1: as stored), or 0 when the EXIF block is over MAX_EXIF_BYTES (not read)."""
    raw = im.info.get("exif")
    if isinstance(raw, bytes) and len(raw) > MAX_EXIF_BYTES:
        return 0
    value = im.getexif().get(0x0112, 1)
    return value if isinstance(value, int) else 1


def _check_decoder(im: Image.Image, fmt: str | None) -> None:
    """Refuse a file whose decoder is written in Python above MAX_PYTHON_DECODER_PIXELS (see there)."""
    pixels = im.size[0] * im.size[1]
    slow = sorted({tile[0] for tile in getattr(im, "tile", ())} & set(Image.DECODERS))
    if slow and pixels > MAX_PYTHON_DECODER_PIXELS:
        raise ImageError(
            f"the {fmt} is {pixels / 1e6:.0f} MP in a slow encoding ({', '.join(slow)}); at most "
            f"{MAX_PYTHON_DECODER_PIXELS / 1e6:.0f} MP are decoded in it: save it as PNG or JPEG"
        )


def _from_array(arr: np.ndarray) -> LoadedImage:
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, -1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageError(f"expected an H x W x 3 (or 4) array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(arr * (255 if arr.max() <= 1 else 1), 0, 255).astype(np.uint8)
    mode = "RGBA" if arr.shape[2] == 4 else "RGB"
    return _checked_rgb(Image.fromarray(np.ascontiguousarray(arr), mode), fmt="array")


def model_view(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """What the model sees: shorter side resized to ``pre.resize``, centre crop ``pre.crop``.

    RGB PIL in, float32 crop x crop x 3 in [0, 1] out.
    """
    w, h = image.size
    scale = pre.resize / min(w, h)
    resized = image.resize(
        (max(pre.crop, round(w * scale)), max(pre.crop, round(h * scale))), Image.Resampling.BILINEAR, reducing_gap=None
    )
    left = (resized.width - pre.crop) // 2
    top = (resized.height - pre.crop) // 2
    crop = resized.crop((left, top, left + pre.crop, top + pre.crop))
    return np.asarray(crop, dtype=np.float32) / 255.0


def to_tensor(view: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    """float32 H x W x 3 in [0, 1] -> normalised 1 x 3 x H x W tensor."""
    t = torch.from_numpy(np.ascontiguousarray(view.transpose(2, 0, 1)))
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    return ((t - mean) / std).unsqueeze(0)


def enlarge(rgb: np.ndarray, min_side: int) -> np.ndarray:
    """uint8 H x W x 3 -> uint8, bicubically scaled up so its shorter side is ``min_side``.

    For display only: a 128 px model view shown at its natural size is a thumbnail in a browser.
    Never shrinks (an image already that large is returned as it is).
    """
    h, w = rgb.shape[:2]
    if min(h, w) >= min_side:
        return rgb
    scale = min_side / min(h, w)
    size = (round(w * scale), round(h * scale))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC))


def overlay(view: np.ndarray, cam: np.ndarray, opacity: float = 0.5) -> np.ndarray:
    """Heatmap over the view: float32 H x W x 3 and H x W in [0, 1] -> uint8 H x W x 3 RGB."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    return show_cam_on_image(view, cam, use_rgb=True, image_weight=1.0 - opacity)


def draw_boxes(
    rgb: np.ndarray,
    boxes: list[tuple[float, float, float, float]],
    width: int = 2,
    colour: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """uint8 H x W x 3 with each box (x0, y0, x1, y1, in this image's pixel-edge coordinates) outlined:
    a ``width`` px line in ``colour`` inside a 1 px black one, visible on any heatmap. A new array."""
    from PIL import ImageDraw

    im = Image.fromarray(np.ascontiguousarray(rgb))
    draw = ImageDraw.Draw(im)
    h, w = rgb.shape[:2]
    for x0, y0, x1, y1 in boxes:
        left, top = max(0, round(x0)), max(0, round(y0))
        right, bottom = min(w - 1, round(x1) - 1), min(h - 1, round(y1) - 1)
        if right < left or bottom < top:
            continue
        draw.rectangle((left, top, right, bottom), outline=(0, 0, 0), width=width + 1)
        draw.rectangle((left + 1, top + 1, right - 1, bottom - 1), outline=colour, width=width - 1 or 1)
    return np.asarray(im)


def signed_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Where map ``a`` looks and map ``b`` does not: each H x W map min-max scaled to [0, 1], then a - b,
    in [-1, 1] (0 where they agree; a flat map counts as all zeros)."""

    def scaled(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m, dtype=np.float32)
        span = float(m.max() - m.min())
        return (m - m.min()) / span if span > 0 else np.zeros_like(m)

    if np.shape(a) != np.shape(b):
        raise ValueError(f"the maps differ in size: {np.shape(a)} and {np.shape(b)}")
    return scaled(a) - scaled(b)


DIVERGING = "RdBu_r"  # matplotlib's red (a > b) / white (equal) / blue (b > a) colour map


def difference_overlay(view: np.ndarray, difference: np.ndarray, opacity: float = 0.75) -> np.ndarray:
    """A signed difference in [-1, 1] over the view (float32 H x W x 3 in [0, 1]) with the diverging
    colour map: red where the first map is higher, blue where the second is, the image where they agree."""
    from matplotlib import colormaps

    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    colours = colormaps[DIVERGING]((np.clip(difference, -1, 1) + 1) / 2)[..., :3]
    # agreement shows the image itself; the square root lets a moderate difference show too
    weight = opacity * np.sqrt(np.abs(np.clip(difference, -1, 1)))[..., None]
    return (np.clip((1 - weight) * view + weight * colours, 0, 1) * 255).round().astype(np.uint8)
