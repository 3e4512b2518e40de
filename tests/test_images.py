import io

import numpy as np
import pytest
from PIL import Image

import badimages
from badimages import EXPECTED, awkward_inputs, bad_inputs, data_url, photo
from conftest import SAMPLES
from dsnet.cam.images import ImageError, enlarge, model_view, open_image, overlay, to_tensor
from dsnet.zoo.manifest import Preprocessing


@pytest.mark.parametrize("name", list(EXPECTED))
def test_bad_images_get_a_specific_message(name):
    data, _ = bad_inputs()[name]
    with pytest.raises(ImageError, match=EXPECTED[name]):
        open_image(data)


@pytest.mark.parametrize("name", list(awkward_inputs()) if SAMPLES.is_dir() else ["needs-the-shared-data"])
def test_awkward_images_are_decoded_sensibly(name):
    data, _, note = awkward_inputs()[name]
    loaded = open_image(data)
    assert loaded.image.mode == "RGB" and min(loaded.image.size) >= 8
    if note:
        assert any(note in n for n in loaded.notes), loaded.notes


def test_exif_rotation_is_applied():
    data, _, _ = awkward_inputs()["exif_rotated"]
    assert open_image(data).image.size == (240, 320)  # stored 320 x 240, displayed upright


def test_transparent_areas_are_white_not_hidden_colours():
    data, _, _ = awkward_inputs()["rgba_transparent"]
    arr = np.asarray(open_image(data).image)
    assert (arr[:, :100] == 255).all() and arr[:, 200:].std() > 10


def test_cmyk_colours_survive():
    data, _, _ = awkward_inputs()["cmyk_jpeg"]
    ours = np.asarray(open_image(data).image, np.float32)
    assert np.abs(ours - np.asarray(photo(), np.float32)).mean() < 12


def test_data_url_and_arrays():
    data, _, _ = awkward_inputs()["webp"]
    assert open_image(data_url(data, "image/webp")).image.size == (320, 240)
    with pytest.raises(ImageError, match="data URL|not a supported image"):
        open_image("data:image/png;base64,!!!!")
    assert open_image(np.zeros((20, 30), np.uint8)).image.size == (30, 20)


def test_view_tensor_and_overlay_contracts():
    pre = Preprocessing(resize=146, crop=128)
    view = model_view(photo((500, 300)), pre)
    assert view.shape == (128, 128, 3) and view.dtype == np.float32 and 0 <= view.min() <= view.max() <= 1
    x = to_tensor(view, pre)
    assert x.shape == (1, 3, 128, 128)
    cam = np.linspace(0, 1, 128 * 128, dtype=np.float32).reshape(128, 128)
    out = overlay(view, cam, 0.4)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    assert np.abs(overlay(view, cam, 0.0).astype(int) - view * 255).max() <= 2  # opacity 0: the image
    with pytest.raises(ValueError):
        overlay(view, cam, 1.5)


def test_enlarge_scales_small_views_up_for_display_and_never_down():
    rgb = np.asarray(photo((128, 96)))  # a real picture, 96 x 128 (H x W)
    big = enlarge(rgb, 256)
    assert big.shape == (256, 341, 3) and big.dtype == np.uint8
    back = np.asarray(Image.fromarray(big).resize((128, 96), Image.Resampling.BOX)).astype(int)
    assert np.abs(back - rgb).mean() < 4  # the same picture, only larger
    assert enlarge(rgb, 64) is rgb


def _progressive_jpeg(size=(64, 48)) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buf, "JPEG", progressive=True, quality=90)
    return buf.getvalue()


def test_a_jpeg_with_thousands_of_scans_is_refused_before_decoding():
    """Each scan of a progressive JPEG is a pass over the whole image: 8000 empty scans in a small
    file cost minutes of CPU. A normal progressive JPEG (about 10 scans) is decoded."""
    from dsnet.cam.images import MAX_JPEG_SCANS

    normal = _progressive_jpeg()
    assert 1 < normal.count(b"\xff\xda") <= 20
    assert open_image(normal).image.size == (64, 48)
    body, end = normal[:-2], normal[-2:]  # the scans, then EOI
    last_scan = body[body.rindex(b"\xff\xda") :]
    hostile = body + last_scan * (MAX_JPEG_SCANS + 10) + end
    with pytest.raises(ImageError, match=r"the JPEG has \d+ scans; at most 100 are decoded"):
        open_image(hostile)


def test_a_tiff_of_many_pages_is_not_walked_page_by_page(monkeypatch):
    """Only the first page is used, so only the first two are looked at (Pillow's n_frames would walk
    them all: quadratic in the page count)."""
    import io

    from PIL import TiffImagePlugin

    page = Image.new("RGB", (16, 16), (10, 200, 30))
    buf = io.BytesIO()
    page.save(buf, "TIFF", save_all=True, append_images=[page] * 400)
    seeks = []
    real = TiffImagePlugin.TiffImageFile._seek
    monkeypatch.setattr(
        TiffImagePlugin.TiffImageFile, "_seek", lambda self, frame: (seeks.append(frame), real(self, frame))[1]
    )
    loaded = open_image(buf.getvalue())
    assert loaded.image.size == (16, 16) and any("several frames; the first one is used" in n for n in loaded.notes)
    assert max(seeks, default=0) <= 1  # frame 0 and a look at frame 1: not 401 pages


def test_a_run_length_bmp_is_limited_to_fewer_pixels_than_the_fast_formats():
    """Pillow decodes run-length BMP in Python (~0.1 us a pixel): a 26 KB one declaring 40 MP took
    4.6 s of CPU. Above MAX_PYTHON_DECODER_PIXELS it is refused before decoding; below, it decodes."""
    from badimages import rle8_bmp
    from dsnet.cam.images import MAX_PYTHON_DECODER_PIXELS

    with pytest.raises(ImageError, match=r"the BMP is 40 MP in a slow encoding \(bmp_rle\); at most 8 MP"):
        open_image(rle8_bmp(6300, 6300))
    side = int(MAX_PYTHON_DECODER_PIXELS**0.5)
    small = open_image(rle8_bmp(side // 8, side // 8)).image
    assert small.size == (side // 8, side // 8) and small.getpixel((0, small.height - 1)) == (7, 7, 7)
    big = photo().resize((3000, 2000))  # a fast (uncompressed) BMP is not held to that limit
    buf = io.BytesIO()
    big.save(buf, "BMP")
    assert open_image(buf.getvalue()).image.size == (3000, 2000)


def test_sixteen_bit_images_are_scaled_to_the_full_8_bit_range():
    """The scaling works in place on float32 (float64 temporaries held ~770 MB for a 40 MP PNG)."""
    ramp = np.linspace(1000, 3000, 64 * 48).reshape(48, 64).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    arr = np.asarray(open_image(buf.getvalue()).image)
    assert arr.min() == 0 and arr.max() == 255 and (arr[..., 0] == arr[..., 2]).all()
    assert np.abs(arr[..., 0].astype(float) - (ramp - 1000) / 2000 * 255).max() <= 1


@pytest.mark.parametrize(
    "hostile, normal, message",
    [
        (
            lambda: badimages.gif_with_comments(600_000),
            lambda: badimages.gif_with_comments(2_000),
            "more than 64 KB of comments",
        ),
        (
            lambda: badimages.gif_with_comments(20_000, 255),
            lambda: badimages.gif_with_comments(200, 255),
            "more than 64 KB of comments",
        ),
        (
            lambda: badimages.jpeg_with_markers(1_000_000),
            lambda: badimages.jpeg_with_markers(500),
            "more than 1000 markers",
        ),
        (
            lambda: badimages.tiled_tiff(6400, 3200),  # 80,000 tiles of 16 px
            lambda: badimages.tiled_tiff(64, 64),
            "the TIFF's first page has 80000 strips or tiles; at most 50000",
        ),
        (
            lambda: badimages.png_with_chunks(1_000_000),
            lambda: badimages.png_with_chunks(5_000),
            "more than 20000 chunks",
        ),
    ],
)
def test_structure_pillow_parses_block_by_block_is_bounded_before_it_sees_the_file(hostile, normal, message):
    """Blocks Pillow parses in Python (GIF comments joined with +=, JPEG markers, PNG chunks): a few MB of
    them cost seconds to minutes of CPU. Beyond the limits refused at once; a normal amount decodes."""
    import time

    started = time.process_time()
    with pytest.raises(ImageError, match=message):
        open_image(hostile())
    assert time.process_time() - started < 0.5
    assert open_image(normal()).image.size == (64, 64)


def test_orientation_is_applied_in_every_format_and_a_huge_exif_is_not_read():
    """Upright from EXIF in JPEG, PNG, WebP and TIFF (Pillow turns a TIFF itself); an EXIF block over
    64 KB (a PNG's 19 MB eXIf took 18.7 s to rewrite) is not read, and the note says so."""
    import time

    from badimages import png_with_exif

    stored = photo((64, 48))
    for fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        buf, exif = io.BytesIO(), Image.Exif()
        exif[0x0112] = 6
        stored.save(buf, fmt, **({"tiffinfo": {274: 6}} if fmt == "TIFF" else {"exif": exif}))
        loaded = open_image(buf.getvalue())
        assert loaded.image.size == (48, 64) and "turned upright" in " ".join(loaded.notes), fmt
    started = time.process_time()
    loaded = open_image(png_with_exif(6, 2_400_000))
    assert time.process_time() - started < 1
    assert loaded.image.size == (64, 48) and any("EXIF block is over 64 KB" in n for n in loaded.notes)
    assert open_image(png_with_exif(6, 100)).image.size == (48, 64)
