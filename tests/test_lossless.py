"""``msinn.lossless``: the exact file of an image (original bytes or pixels back), every candidate read back."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from helpers import image_file
from PIL import Image, ImageCms

from msinn import lossless
from msinn.choice import ChoiceOptions, choose
from msinn.images import open_image
from msinn.lossless import check_exact, store_exactly
from msinn.ratecontrol import Target


def photo(w: int = 160, h: int = 112, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack(((x * 2 + seed * 9) % 256, (y * 3) % 256, (x + y) % 256), axis=2).astype(np.float64)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def row_of(data: bytes, f: lossless.ExactFile) -> dict:
    return {"key": "k", "source_bytes": len(data), "source_sha256": hashlib.sha256(data).hexdigest(),
            "pixel_hash": f.pixel_hash, "width": f.width, "height": f.height, "mode": f.mode}


def sources() -> dict[str, bytes]:
    rgb = photo()
    gray = rgb[:, :, 0]
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "a camera"
    i16 = Image.new("I;16", (gray.shape[1], gray.shape[0]))
    i16.frombytes((gray.astype("<u2") * 257).tobytes())
    import imagecodecs

    return {
        "jpeg": image_file(rgb, "JPEG", quality=90),
        "jpeg-progressive": image_file(rgb, "JPEG", quality=90, progressive=True),
        "jpeg-trailing": image_file(rgb, "JPEG", quality=90) + b"trailing bytes after EOI",
        "jpeg-cmyk": image_file(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=90),
        "png-rgb": image_file(rgb),
        "png-rgba": image_file(np.dstack([rgb, gray])),
        "png-icc-exif": image_file(rgb, icc_profile=icc, exif=exif.tobytes()),
        "png-gray16": image_file(i16),
        "png-rgb16": bytes(imagecodecs.png_encode(rgb.astype(np.uint16) * 257 + 3)),
        "png-palette": image_file(Image.fromarray(rgb).quantize(16), transparency=3),
        "png-bilevel": image_file(Image.fromarray(gray > 128)),
        "bmp": image_file(rgb, "BMP"),
        "gif": image_file(Image.fromarray(rgb).quantize(8), "GIF"),
        "not-an-image": b"a caption that was named like an image",
    }


@pytest.fixture(scope="module")
def stored() -> dict[str, tuple[bytes, lossless.ExactFile]]:
    return {name: (data, store_exactly(data, name)) for name, data in sources().items()}


def test_every_source_comes_back_exactly_and_never_larger(stored):
    """Each file reads back as promised (the original bytes, or the same pixels and metadata) and is never
    larger than the original; what cannot be recompressed is stored as it is, with the reason."""
    for name, (data, f) in stored.items():
        assert len(f.data) <= len(data), name
        back = check_exact(f.codec, f.data, row_of(data, f))
        if f.exact == "bytes":
            assert back == data, name
        else:
            assert isinstance(back, lossless.ExactPixels) and back.digest() == f.pixel_hash, name
    codec = {name: f.codec for name, (_, f) in stored.items()}
    assert codec["jpeg"] == codec["jpeg-progressive"] == codec["jpeg-trailing"] == "lepton"
    assert codec["jpeg-cmyk"] == "stored" and "lepton: refused" in stored["jpeg-cmyk"][1].note
    assert "jxl-jpeg: refused" in stored["jpeg-cmyk"][1].note
    assert codec["png-rgb"] in ("webp-lossless", "jxl-lossless") and stored["png-rgb"][1].exact == "pixels"
    assert codec["bmp"] in ("webp-lossless", "jxl-lossless", "png")  # an uncompressed BMP always shrinks
    assert codec["gif"] == codec["not-an-image"] == "stored"
    assert stored["png-rgb16"][1].mode == "RGB;16" and stored["png-rgb16"][1].bit_depth == 16
    assert stored["png-gray16"][1].mode == "I;16"
    assert stored["png-palette"][1].mode == "P" and stored["png-bilevel"][1].mode == "1"


def test_metadata_and_depth_survive_pixel_files(stored):
    """A pixel file carries the ICC profile and EXIF of its source, 16-bit samples and alpha unreduced."""
    data, f = stored["png-icc-exif"]
    if f.exact == "pixels":  # else stored as it is, which keeps everything
        px = check_exact(f.codec, f.data, row_of(data, f))
        src, _ = lossless.read_exact(data)
        assert px.icc == src.icc and px.exif == src.exif and px.icc
    data, f = stored["png-rgb16"]
    px = check_exact(f.codec, f.data, row_of(data, f)) if f.exact == "pixels" else lossless.read_exact(data)[0]
    assert px.array.dtype == np.uint16 and int(px.array.max()) > 255
    data, f = stored["png-rgba"]
    px = check_exact(f.codec, f.data, row_of(data, f))
    assert px.mode == "RGBA" and np.array_equal(px.array[:, :, 3], photo()[:, :, 0])


def test_a_candidate_whose_round_trip_differs_is_never_kept(monkeypatch):
    """A recompressor that gives other bytes back (or pixel codecs that read back other pixels) loses to the
    next method, and finally to the stored original."""
    data = sources()["jpeg"]
    monkeypatch.setitem(lossless.RECOMPRESS, "lepton", (lossless._lepton, lambda b: lossless._unlepton(b)[:-1]))
    f = store_exactly(data, "x")
    assert f.codec == "jxl-jpeg" and "lepton: refused (its round trip" in f.note
    assert check_exact(f.codec, f.data, row_of(data, f)) == data
    monkeypatch.setitem(lossless.RECOMPRESS, "jxl-jpeg", (lossless._jxl_jpeg, lambda b: b"x" + lossless._unjxl_jpeg(b)))
    f = store_exactly(data, "x")
    assert f.codec == "stored" and f.data == data
    png = sources()["png-rgb"]
    monkeypatch.setattr(lossless, "exact_pixels", lambda *a, **k: lossless.ExactPixels(np.zeros((1, 1), np.uint8), "L"))
    f = store_exactly(png, "y")
    assert f.codec == "stored" and "read back other pixels" in f.note


def test_a_damaged_exact_file_is_refused_with_its_cause(stored):
    data, f = stored["jpeg"]
    row = row_of(data, f)
    with pytest.raises(ValueError, match="lepton"):
        check_exact("lepton", f.data[:-40], row)
    with pytest.raises(ValueError, match="sha256|bytes"):
        check_exact("stored", data + b"x", {**row, "source_bytes": None})
    data, f = stored["png-rgb"]
    with pytest.raises(ValueError, match="pixel hash"):
        check_exact(f.codec, f.data, {**row_of(data, f), "pixel_hash": "0" * 32})


def test_the_exact_file_competes_at_a_floor_and_never_makes_it_larger():
    """With ``lossless`` among the codecs, a floor's winner is the smallest file reaching it: adding the exact
    file can only keep or shrink it, and above what the lossy codec reaches the exact file wins."""
    for data in (image_file(photo(96, 64, 3), "JPEG", quality=97), image_file(photo(96, 64, 4) // 64 * 64)):
        img = open_image(data)
        exact = store_exactly(data)
        for floor in (30.0, 45.0, 60.0):
            alone = choose(img, Target("psnr", floor), ChoiceOptions(("webp",)))
            both = choose(img, Target("psnr", floor), ChoiceOptions(("webp", "lossless")), exact=exact)
            assert both.winner.bytes <= alone.winner.bytes or alone.winner.psnr < floor
            if both.winner.exact is not None:
                assert both.winner.psnr == float("inf") and both.winner.bytes == len(exact.data)
        top = choose(img, Target("psnr", 60.0), ChoiceOptions(("webp", "lossless")), exact=exact)
        assert top.winner.exact is not None  # lossy WebP cannot reach 60 dB on these
    only = choose(None, Target("lossless", 0), ChoiceOptions(("msinn",)), exact=store_exactly(b"\x00junk"))
    assert only.winner.codec == "stored" and only.winner.data == b"\x00junk"


def test_jpeg_xl_is_named_from_its_signature_never_opened():
    """probe_format reads no pixel of a JPEG XL (its Pillow plugin decodes whole images at open)."""
    import imagecodecs

    jxl = bytes(imagecodecs.jpegxl_encode(photo(64, 48), lossless=True))
    assert lossless.probe_format(jxl) == "JXL"
    f = store_exactly(jxl)
    assert f.codec == "stored" and "JXL" in f.note
