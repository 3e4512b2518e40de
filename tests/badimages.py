"""Every kind of bad or awkward image of issue 6, generated on the fly: name -> (bytes, upload name)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from conftest import sample


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(size=(320, 240)) -> Image.Image:
    with Image.open(sample("golf_ball")) as im:
        return im.convert("RGB").resize(size)


EXPECTED = {  # bad input -> words its error message must contain
    "zero_bytes": "empty",
    "text_as_jpg": "text file",
    "html_as_jpg": "HTML",
    "svg_as_jpg": "SVG",
    "pdf_as_jpg": "PDF",
    "truncated_jpeg": "truncated",
    "decompression_bomb": "limit is 40 MP",
    "strip_10000x1": "aspect ratio",
    "strip_1x10000": "aspect ratio",
    "one_pixel": "at least 8 px",
}


def bad_inputs() -> dict[str, tuple[bytes, str]]:
    """Inputs that must be refused with a clear message."""
    jpeg = _save(photo(), "JPEG")
    bomb = _save(Image.new("1", (20000, 20000)), "PNG")  # a few KB that decode to 400 MP
    return {
        "zero_bytes": (b"", "empty.jpg"),
        "text_as_jpg": (b"hello, this is not an image\n" * 20, "notes.jpg"),
        "html_as_jpg": (b"<!DOCTYPE html><html><body>hi</body></html>", "page.jpg"),
        "svg_as_jpg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>', "vector.jpg"),
        "pdf_as_jpg": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "doc.jpg"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], "cut.jpg"),
        "decompression_bomb": (bomb, "bomb.png"),
        "strip_10000x1": (_save(Image.new("RGB", (10000, 1), "red"), "PNG"), "wide.png"),
        "strip_1x10000": (_save(Image.new("RGB", (1, 10000), "red"), "PNG"), "tall.png"),
        "one_pixel": (_save(Image.new("RGB", (1, 1), "red"), "PNG"), "dot.png"),
    }


def awkward_inputs() -> dict[str, tuple[bytes, str, str | None]]:
    """Inputs that must work: name -> (bytes, upload name, a note the user must be told, or None)."""
    base = photo()
    arr = np.asarray(base)
    sixteen = Image.fromarray((arr[..., 0].astype(np.uint16) * 257), "I;16")
    rgba = base.convert("RGBA")
    alpha = np.full(arr.shape[:2], 255, np.uint8)
    alpha[:, : arr.shape[1] // 2] = 0
    rgba.putalpha(Image.fromarray(alpha))
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    frames = [base, base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    cmyk = _save(base.convert("CMYK"), "JPEG")
    out = {
        "cmyk_jpeg": (cmyk, "cmyk.jpg", None),
        "cmyk_jpeg_named_gif": (cmyk, "sneaky.gif", None),
        "png_16bit": (_save(sixteen, "PNG"), "deep.png", "high bit-depth"),
        "palette_transparency": (_save(palette, "PNG"), "palette.png", "transparent areas"),
        "rgba_transparent": (_save(rgba, "PNG"), "alpha.png", "transparent areas"),
        "grayscale": (_save(base.convert("L"), "JPEG"), "gray.jpg", None),
        "animated_gif": (_save(frames[0], "GIF", save_all=True, append_images=frames[1:]), "anim.gif", "first one"),
        "multipage_tiff": (_save(frames[0], "TIFF", save_all=True, append_images=frames[1:]), "pages.tif", "first one"),
        "exif_rotated": (_save(base, "JPEG", exif=exif), "phone.jpg", "EXIF orientation"),
        "webp": (_save(base, "WEBP"), "photo.webp", None),
    }
    try:
        out["avif"] = (_save(base, "AVIF"), "photo.avif", None)
    except (KeyError, OSError):  # Pillow built without AVIF: listed as such in README
        pass
    return out


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def rle8_bmp(width: int, height: int) -> bytes:
    """A run-length BMP whose every row is one pixel and an end-of-line: a few bytes a row that Pillow's
    decoder (written in Python) pads pixel by pixel: the costliest file per byte found (issue 25)."""
    import struct

    rows = b"\x01\x07\x00\x00" * height + b"\x00\x01"
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(rows), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset) + info + palette + rows


def tiled_tiff(width: int, height: int, tile: int = 16) -> bytes:
    """An uncompressed TIFF of ``tile`` px tiles whose offsets all point at one tile: ~8 bytes a tile,
    and Pillow loops over the tiles in Python."""
    import struct

    n = -(-width // tile) * -(-height // tile)
    data = bytes(tile * tile * 3)
    offsets_at = 8 + len(data)
    counts_at = offsets_at + 4 * n
    bits_at = counts_at + 4 * n
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, bits_at), (259, 3, 1, 1), (262, 3, 1, 2)]
    tags += [(277, 3, 1, 3), (284, 3, 1, 1), (322, 3, 1, tile), (323, 3, 1, tile)]
    tags += [(324, 4, n, offsets_at), (325, 4, n, counts_at)]
    entry = lambda tag, kind, count, value: struct.pack(
        "<HHII" if kind == 4 or count > 1 else "<HHIHH",
        tag,
        kind,
        count,
        value,
        *(() if kind == 4 or count > 1 else (0,)),
    )
    ifd = struct.pack("<H", len(tags)) + b"".join(entry(*t) for t in tags) + struct.pack("<I", 0)
    return (
        b"II*\x00"
        + struct.pack("<I", bits_at + 6)
        + data
        + struct.pack(f"<{n}I", *[8] * n)
        + struct.pack(f"<{n}I", *[len(data)] * n)
        + struct.pack("<3H", 8, 8, 8)
        + ifd
    )


def png16_rgb(width: int, height: int) -> bytes:
    """A 16-bit RGB PNG of zeros: a few hundred KB that decode to 6 bytes a pixel."""
    import struct
    import zlib

    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    packer, row = zlib.compressobj(9), b"\0" * (1 + 6 * width)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _small(fmt: str, **kw) -> bytes:
    return _save(Image.new("RGB", (64, 64), (30, 90, 200)), fmt, **kw)


def gif_with_comments(count: int, size: int = 1) -> bytes:
    """A 64 x 64 GIF after ``count`` comment extensions of ``size`` bytes: Pillow joins them with +=."""
    gif = _save(Image.new("P", (64, 64)), "GIF")
    at = gif.index(b",")  # the image descriptor
    return gif[:at] + (b"!\xfe" + bytes([size]) + b"A" * size + b"\x00") * count + gif[at:]


def jpeg_with_markers(count: int) -> bytes:
    """A small JPEG after ``count`` empty APP5 segments (4 bytes each, one Python loop turn each in Pillow)."""
    jpeg = _small("JPEG")
    return jpeg[:2] + b"\xff\xe5\x00\x02" * count + jpeg[2:]


def png_with_chunks(count: int) -> bytes:
    """A small PNG after ``count`` empty private chunks (12 bytes each)."""
    import struct
    import zlib

    png = _small("PNG")
    chunk = struct.pack(">I", 0) + b"prIv" + struct.pack(">I", zlib.crc32(b"prIv"))
    return png[:33] + chunk * count + png[33:]  # after the signature and IHDR


def exif_with_orientation(orientation: int, values: int = 0) -> bytes:
    """A little-endian EXIF block: the orientation, and a RATIONAL tag of ``values`` values when asked."""
    import struct

    entries = [(274, 3, 1, struct.pack("<HH", orientation, 0))]
    data = b""
    if values:
        entries.append((50000, 5, values, None))
        data = b"\x01\x00\x00\x00\x01\x00\x00\x00" * values
    ifd_size = 2 + 12 * len(entries) + 4
    out = [struct.pack("<H", len(entries))]
    for tag, kind, count, inline in entries:
        out.append(struct.pack("<HHI", tag, kind, count) + (inline or struct.pack("<I", 8 + ifd_size)))
    return b"II*\x00" + struct.pack("<I", 8) + b"".join(out) + b"\x00\x00\x00\x00" + data


def png_with_exif(orientation: int, values: int = 0) -> bytes:
    """A 64 x 48 PNG whose eXIf chunk says ``orientation`` (and carries ``values`` more EXIF values)."""
    im = photo((64, 48))
    return _save(im, "PNG", exif=b"Exif\x00\x00" + exif_with_orientation(orientation, values))
