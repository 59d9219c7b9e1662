"""Odd inputs: every image kind Pillow opens round-trips in a documented layout."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from helpers import image_file
from PIL import Image

from msinn.container import read_header
from msinn.decoding import decode_image
from msinn.encoding import EncodeOptions, encode_image
from msinn.errors import ImageInputError
from msinn.images import open_image
from msinn.ratecontrol import Target


def _gradient(w: int, h: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack(((x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + y) * 7 % 256)), axis=2).astype(
        np.uint8
    )


def _round_trip(model, data: bytes, **opts):
    res = encode_image(model, data, Target("qp", model.anchor_num - 1), EncodeOptions(**opts) if opts else None)
    dec = decode_image(res.data, model)
    assert np.array_equal(dec.pixels, res.reconstruction)
    return res, dec


def test_grayscale_decodes_to_grayscale(tiny_model):
    g = _gradient(70, 50)[:, :, 0]
    res, dec = _round_trip(tiny_model, image_file(Image.fromarray(g, "L")))
    assert dec.mode == "L" and dec.pixels.shape == (50, 70)
    assert dec.to_pil().mode == "L"


def test_sixteen_bit_gray_is_reduced_and_recorded(tiny_model):
    g16 = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50).astype(np.uint16)
    im = Image.fromarray(g16)  # mode I;16
    prepared = open_image(image_file(im))
    assert prepared.bit_depth == 16 and prepared.mode == "L"
    assert np.array_equal(prepared.rgb[:, :, 0], np.round(g16 / 257).astype(np.uint8))
    res, dec = _round_trip(tiny_model, image_file(im))
    assert read_header(res.data)[0].bit_depth == 16 and dec.mode == "L"


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_kept_losslessly(tiny_model, mode):
    rgb = _gradient(65, 33)
    alpha = (np.arange(65 * 33).reshape(33, 65) * 13 % 256).astype(np.uint8)
    im = Image.fromarray(np.dstack((rgb, alpha)), "RGBA")
    if mode == "LA":
        im = im.convert("LA")
    res, dec = _round_trip(tiny_model, image_file(im))
    assert dec.mode == mode
    assert np.array_equal(dec.pixels[:, :, -1], np.asarray(im)[:, :, -1])


def test_palette_with_and_without_transparency(tiny_model):
    rgb = Image.fromarray(_gradient(48, 40)).quantize(16)
    _, dec = _round_trip(tiny_model, image_file(rgb))
    assert dec.mode == "RGB"
    t = rgb.copy()
    t.info["transparency"] = 0
    _, dec = _round_trip(tiny_model, image_file(t, transparency=0))
    assert dec.mode == "RGBA"
    expected_alpha = np.asarray(t.convert("RGBA"))[:, :, 3]
    assert np.array_equal(dec.pixels[:, :, 3], expected_alpha)


def test_cmyk_is_converted_to_rgb(tiny_model):
    im = Image.fromarray(_gradient(64, 64)).convert("CMYK")
    res, dec = _round_trip(tiny_model, image_file(im, "JPEG", quality=95))
    assert dec.mode == "RGB" and read_header(res.data)[0].source_mode == "CMYK"


def test_exif_orientation_is_applied(tiny_model):
    im = Image.fromarray(_gradient(80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    _, dec = _round_trip(tiny_model, image_file(im, "JPEG", exif=exif.tobytes(), quality=95))
    assert dec.pixels.shape[:2] == (80, 40)


@pytest.mark.parametrize("size", [(1, 1), (7, 3), (3, 7), (64, 64), (65, 129)])
def test_sizes_not_multiple_of_64(tiny_model, size):
    w, h = size
    _, dec = _round_trip(tiny_model, image_file(_gradient(w, h)))
    assert dec.pixels.shape == (h, w, 3)


def test_large_images_are_tiled(tiny_model):
    data = image_file(_gradient(150, 100))
    res, dec = _round_trip(tiny_model, data, tile_pixels=64 * 64, tile_size=64)
    header = read_header(res.data)[0]
    assert len(header.tiles) == 3 * 2 and header.tile_width == 64
    assert dec.pixels.shape == (100, 150, 3)


def test_pixel_budget_and_bombs(tiny_model):
    data = image_file(_gradient(100, 100))
    with pytest.raises(ImageInputError, match="exceeds"):
        encode_image(tiny_model, data, Target("qp", 0), EncodeOptions(max_pixels=5000))
    # a PNG header claiming 100000 x 100000 pixels, with no real data behind it
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    bomb = b"\x89PNG\r\n\x1a\n" + chunk
    with pytest.raises(ImageInputError, match="exceeds|not a decodable"):
        open_image(bomb, "bomb.png")


@pytest.mark.parametrize(
    "data,cause", [(b"", "empty"), (b"hello world", "not a decodable"), (None, "corrupt|truncated|decodable")]
)
def test_non_images_get_clear_errors(data, cause):
    if data is None:
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        full = image_file(noise)
        data = full[: len(full) // 2]
    with pytest.raises(ImageInputError, match=cause) as err:
        open_image(data, "thing.png")
    assert "thing.png" in str(err.value)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "TIFF"])
def test_multi_frame_inputs_are_refused_with_their_frame_count(fmt):
    """An animation or a multi-page file is never archived as its first frame with status ok."""
    frames = [Image.new("RGB", (32, 24), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageInputError, match="has 3 frames"):
        open_image(buf.getvalue(), f"anim.{fmt.lower()}")
    assert open_image(image_file(frames[0], fmt), "still").width == 32


def test_pillows_own_pixel_limit_does_not_override_ours(monkeypatch):
    """Images up to --max-pixels open, whatever Pillow's built-in bomb limit (89 MP by default) says."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # stands in for 89 MP against a 4096-pixel image
    png = image_file(Image.new("RGB", (64, 64), (9, 9, 9)))
    assert open_image(png, "x", max_pixels=10_000).width == 64
    with pytest.raises(ImageInputError, match="exceeds the limit of 4000 pixels"):
        open_image(png, "x", max_pixels=4000)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored
