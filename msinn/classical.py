"""Classical codecs through Pillow (AVIF, JPEG, WebP, and JPEG XL with its plugin).

Two users: the per-image codec choice (:mod:`msinn.choice`), which archives an
image in whichever standard format is smallest at the target, and ``msinn
eval``, which measures the model against these codecs. Every figure comes
from a real encode and a real decode, so sizes and pixels are what a viewer
of the file gets.

Each codec is a :class:`ClassicalCodec`: how Pillow is told to write it, the
quality values that give distinct files, whether it keeps alpha losslessly,
and what to record about the libraries that wrote it. Settings are the
strongest for PSNR that the library offers at a given speed: 4:4:4 chroma for
AVIF and JPEG, ``tune=psnr`` for AVIF (libavif's default for still images is
a perceptual tune that measures 5-6% more bits at equal PSNR), method 6 for
WebP. ``avif-default`` keeps Pillow's defaults (4:4:4 apart), as a newcomer
writing AVIF from Pillow would get them.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .images import DEFAULT_MAX_PIXELS, PreparedImage, open_image, restore_image, rgb_view
from .sizing import register_plugins

AVIF_SPEED = 6  # libavif's default speed; 0 is its slowest and strongest
AVIF_BEST_SPEED = 0
JXL_EFFORT = 7  # libjxl's default effort
JXL_BEST_EFFORT = 9  # its slowest setting without the experimental 10


def _avif_options(speed: int, tune: str | None, alpha: bool) -> dict:
    advanced = {}
    if tune:
        advanced["tune"] = tune
    if alpha:
        advanced["a:lossless"] = "1"  # libavif codes alpha lossily unless told
    opts: dict = {"subsampling": "4:4:4", "speed": speed}
    if advanced:
        opts["advanced"] = advanced
    return opts


@dataclass(frozen=True)
class ClassicalCodec:
    """One classical codec as this project writes it."""

    name: str  # as given to --codecs
    pil_format: str
    extension: str  # of archive members and files
    sweep: tuple[int, ...]  # qualities of ``msinn eval``'s RD curve, spanning about 0.1-3 bpp on photos
    keeps_alpha: bool  # alpha kept losslessly (else images with alpha never take this codec)
    options: Callable[[int | None, bool], dict]  # (speed or None for the default, has alpha) -> Pillow options
    prior: tuple[tuple[int, float, float], ...]  # (quality, mean ln bpp, mean PSNR) on Kodak: the search's first guess
    default_speed: int | None = None
    quality_range: tuple[int, int] = (0, 100)

    def first_guess(self, cap: bool, limit: float) -> tuple[float, float]:
        """(quality, slope of g per quality step) where the typical curve meets ``limit``.

        ``limit`` is ln(bpp) for caps and PSNR for floors. Outside the curve
        the end segment's slope extends it.
        """
        pts = [(q, b if cap else p) for q, b, p in self.prior]
        for (q0, g0), (q1, g1) in zip(pts, pts[1:]):
            if limit <= g1 or (q1, g1) == pts[-1]:
                slope = (g1 - g0) / (q1 - q0)
                return q0 + (limit - g0) / slope, slope
        raise AssertionError("unreachable")

    def params(self, quality: int, speed: int | None) -> str:
        """The settings of one file as the manifest records them (``codec_params``)."""
        opts = self.options(speed, False)
        parts = [f"quality={quality}"] + [f"{k}={v}" for k, v in opts.items() if k != "advanced"]
        parts += [f"{k}={v}" for k, v in opts.get("advanced", {}).items()]
        return ";".join(parts)


# Typical curves: mean ln(bpp) and PSNR over six Kodak images. Only where a quality search starts depends on them.
_AVIF_PRIOR = (
    (5, -2.438, 25.18), (20, -1.501, 28.28), (35, -0.811, 31.14), (50, -0.195, 34.41),
    (62, 0.27, 37.37), (74, 0.584, 39.5), (84, 0.909, 41.75), (92, 1.326, 44.42),
)
_JPEG_PRIOR = (
    (5, -1.081, 23.14), (15, -0.55, 27.53), (30, -0.147, 29.95), (50, 0.156, 31.74),
    (70, 0.467, 33.63), (85, 0.888, 36.56), (92, 1.235, 39.58), (97, 1.756, 44.33),
)
_WEBP_PRIOR = (
    (0, -2.141, 24.67), (15, -0.986, 28.87), (30, -0.612, 30.59), (50, -0.275, 32.44),
    (70, -0.01, 33.99), (85, 0.485, 37.32), (95, 1.139, 41.63), (100, 1.425, 42.95),
)
_JXL_PRIOR = (
    (10, -1.387, 25.54), (30, -0.82, 29.1), (50, -0.557, 30.37), (65, -0.245, 31.96),
    (78, 0.148, 34.28), (88, 0.604, 37.38), (94, 1.025, 40.41), (98, 1.509, 43.83),
)

CODECS: dict[str, ClassicalCodec] = {
    "avif": ClassicalCodec(
        "avif", "AVIF", "avif", (10, 25, 40, 55, 70, 80, 88, 94), True,
        lambda speed, alpha: _avif_options(AVIF_SPEED if speed is None else speed, "psnr", alpha), _AVIF_PRIOR,
        AVIF_SPEED),
    "avif-best": ClassicalCodec(
        "avif-best", "AVIF", "avif", (10, 25, 40, 55, 70, 80, 88, 94), True,
        lambda speed, alpha: _avif_options(AVIF_BEST_SPEED if speed is None else speed, "psnr", alpha),
        _AVIF_PRIOR, AVIF_BEST_SPEED),
    "avif-default": ClassicalCodec(
        "avif-default", "AVIF", "avif", (10, 25, 40, 55, 70, 80, 88, 94), True,
        lambda speed, alpha: _avif_options(AVIF_SPEED if speed is None else speed, None, alpha), _AVIF_PRIOR,
        AVIF_SPEED),
    "jpeg": ClassicalCodec(
        "jpeg", "JPEG", "jpg", (5, 10, 20, 30, 50, 70, 85, 92, 96), False,
        lambda speed, alpha: {"subsampling": 0}, _JPEG_PRIOR, quality_range=(1, 100)),
    "webp": ClassicalCodec(
        "webp", "WEBP", "webp", (0, 10, 25, 50, 70, 85, 95, 100), True,
        lambda speed, alpha: {"method": 6}, _WEBP_PRIOR),  # lossy WebP is 4:2:0 only; its alpha is lossless by default
    # quality 100 asks libjxl for distance 0 (lossless), which pillow_jxl's lossy encoder refuses ("The encoder
    # API is used in an incorrect way"): the search stops at 99
    "jxl": ClassicalCodec(
        "jxl", "JXL", "jxl", (20, 40, 55, 70, 80, 88, 93, 97), True,
        lambda speed, alpha: {"effort": JXL_EFFORT if speed is None else speed}, _JXL_PRIOR, JXL_EFFORT, (0, 99)),
    "jxl-best": ClassicalCodec(
        "jxl-best", "JXL", "jxl", (20, 40, 55, 70, 80, 88, 93, 97), True,
        lambda speed, alpha: {"effort": JXL_BEST_EFFORT if speed is None else speed}, _JXL_PRIOR, JXL_BEST_EFFORT,
        (0, 99)),
}
ARCHIVE_CODECS = ("avif", "jpeg", "webp", "jxl")  # what --codecs accepts beside msinn (eval takes every name)
CODEC_QUALITIES = {name: c.sweep for name, c in CODECS.items()}  # msinn eval's quality sweeps
EXTENSIONS = {c.extension: c.name for c in CODECS.values() if c.name in ARCHIVE_CODECS}


def get(name: str) -> ClassicalCodec:
    try:
        return CODECS[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; choose from {', '.join(CODECS)}") from None


def _source_image(img: PreparedImage, codec: ClassicalCodec):
    """The Pillow image a codec is given: the prepared 8-bit pixels, in the layout the file should carry."""
    from PIL import Image

    if img.mode == "L":
        return Image.fromarray(np.ascontiguousarray(img.rgb[:, :, 0]), "L")
    if img.alpha is None:
        return Image.fromarray(img.rgb, "RGB")
    if img.mode == "LA" and codec.pil_format in ("JXL",):
        return Image.fromarray(np.dstack([img.rgb[:, :, 0], img.alpha]), "LA")
    return Image.fromarray(np.dstack([img.rgb, img.alpha]), "RGBA")


def encode(codec: str | ClassicalCodec, img: PreparedImage, quality: int, speed: int | None = None) -> bytes:
    """One file of ``img`` at ``quality`` (and ``speed`` where the codec has one)."""
    c = get(codec) if isinstance(codec, str) else codec
    if img.alpha is not None and not c.keeps_alpha:
        raise ValueError(f"{c.name} cannot keep an alpha channel")
    register_plugins()
    buf = io.BytesIO()
    _source_image(img, c).save(buf, c.pil_format, quality=int(quality), **c.options(speed, img.alpha is not None))
    return buf.getvalue()


def decode(data: bytes, mode: str, source: str = "input", max_pixels: int = DEFAULT_MAX_PIXELS,
           expect: tuple[int, int] | None = None) -> np.ndarray:
    """A classical file's pixels in the layout ``mode`` names (as :func:`msinn.images.restore_image` gives).

    Decoding goes through the same checks as any input (the size from the
    header against ``max_pixels`` and, for an archived file, the recorded
    ``expect`` (width, height), before decoding; one frame); a file without the
    alpha ``mode`` needs is refused.
    """
    img = open_image(data, source, max_pixels, expect)
    if mode in ("RGBA", "LA") and img.alpha is None:
        raise ValueError(f"{source}: decoded without the alpha channel its {mode} layout needs")
    return restore_image(img.rgb, img.alpha if mode in ("RGBA", "LA") else None, mode)


@dataclass
class Coded:
    """One classical encode with what the choice compares: size, PSNR, and the decoded pixels."""

    data: bytes
    quality: int
    pixels: np.ndarray  # decoded, in the image's restore layout
    psnr: float


def code(codec: str | ClassicalCodec, img: PreparedImage, quality: int, speed: int | None = None) -> Coded:
    """Encode and decode once; refuse the file if the alpha channel did not survive exactly."""
    data = encode(codec, img, quality, speed)
    pixels = decode(data, img.mode, f"{get(codec).name if isinstance(codec, str) else codec.name} encode")
    if img.alpha is not None and not np.array_equal(pixels[..., -1], img.alpha):
        raise ValueError("the codec did not keep the alpha channel losslessly")
    from .metrics import psnr_uint8

    return Coded(data, int(quality), pixels, min(psnr_uint8(rgb_view(pixels, img.mode), img.rgb), 100.0))


def versions(name: str) -> str:
    """The libraries that write and read ``name`` here, for the manifest's ``codec_version``."""
    import PIL
    from PIL import features

    c = get(name)
    pillow = f"Pillow {PIL.__version__}"
    if c.pil_format == "AVIF":
        from PIL import _avif

        return f"{pillow}; libavif {features.version('avif')}; {_avif.codec_versions()}"
    if c.pil_format == "WEBP":
        return f"{pillow}; libwebp {features.version('webp')}"
    if c.pil_format == "JPEG":
        lib = "libjpeg-turbo" if features.check("libjpeg_turbo") else "libjpeg"
        return f"{pillow}; {lib} {features.version('jpg')}"
    from importlib.metadata import version

    return f"{pillow}; pillow-jxl-plugin {version('pillow-jxl-plugin')}"


def codec_available(name: str) -> str | None:
    """None if ``name`` encodes and decodes here, else why not (Pillow builds and plugins differ)."""
    try:
        c = get(name)
        img = PreparedImage(np.full((16, 16, 3), 128, np.uint8), None, "RGB", "RGB", 8, "PNG")
        coded = code(c, img, c.sweep[-1])
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    if not coded.data or coded.pixels.shape != (16, 16, 3):
        return "round trip through Pillow produced no image"
    return None


def code_at_quality(name: str, img_uint8_hwc: np.ndarray, quality: int) -> tuple[int, np.ndarray, float]:
    """(bytes, 8-bit RGB reconstruction, encode seconds) of one RGB image at one quality, for ``msinn eval``."""
    import time

    img = PreparedImage(np.ascontiguousarray(img_uint8_hwc), None, "RGB", "RGB", 8, None)
    t0 = time.perf_counter()
    data = encode(name, img, quality)
    seconds = time.perf_counter() - t0
    return len(data), decode(data, "RGB"), seconds
