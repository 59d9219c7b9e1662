"""Image bytes and arrays: any image Pillow opens into what the codec codes, and back.

(The network's side, arrays to tensors, is :mod:`msinn.tensors`; listing and reading image files at URIs,
:mod:`msinn.image_files`.)

The network codes 8-bit RGB. Other layouts are mapped explicitly:

* grayscale (1, L, I;16, I, F) is coded as R=G=B and decodes back to ``L``;
* alpha (RGBA, LA, PA, palette transparency) is kept losslessly beside the
  coded colour and restored (``RGBA`` or ``LA``);
* palette images decode to RGB(A); CMYK, YCbCr, LAB and HSV are converted to
  RGB, which is what decodes;
* 16-bit samples are reduced to 8 bits (rounded); the header records the
  original bit depth so the reduction is visible;
* EXIF orientation is applied, so the decoded image is upright.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageInputError
from .sizing import PILLOW_LOCK, check_size, image_size, register_plugins

# what a folder listing takes as images: every format the project reads (AVIF and JPEG XL too: it writes them)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".gif", ".avif",
                    ".jxl")
DEFAULT_MAX_PIXELS = 256 * 1024 * 1024  # 256 MP: a decompression-bomb guard, configurable
GRAY_MODES = ("1", "L", "I;16", "I;16B", "I;16L", "I;16N", "I", "F")


@dataclass
class PreparedImage:
    rgb: np.ndarray  # H x W x 3 uint8, what the network codes
    alpha: np.ndarray | None  # H x W uint8, kept losslessly
    mode: str  # mode the decoder restores: RGB, RGBA, L or LA
    source_mode: str
    bit_depth: int
    source_format: str | None

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])


def _png_bit_depth(data: bytes) -> int | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24:
        return int(data[24])
    return None


def _to_uint8_gray(im: Image.Image) -> np.ndarray:
    a = np.asarray(im)
    if im.mode == "1":
        return a.astype(np.uint8) * 255
    if im.mode == "F":
        return np.clip(np.round(a), 0, 255).astype(np.uint8)
    if a.dtype == np.uint8:
        return a
    # 16-bit (or 32-bit integer holding 16-bit) samples: 65535 -> 255
    return np.clip(np.round(a.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def open_image(data: bytes, source: str = "input", max_pixels: int = DEFAULT_MAX_PIXELS,
               expect: tuple[int, int] | None = None) -> PreparedImage:
    """Decode image bytes into codec input, refusing non-images, oversized images and (with ``expect``, a
    recorded width and height) images of another size first: from the header alone, before any pixel is decoded
    (:mod:`msinn.sizing`), whatever the format."""
    size = image_size(data, source)
    check_size(size, source, max_pixels, expect)
    register_plugins()
    try:
        with warnings.catch_warnings(), PILLOW_LOCK:
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # our limit (checked above, from the header) replaces Pillow's own 89 MP, which would refuse images
            # below max_pixels; only the plugin that sized the header may open the file
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(io.BytesIO(data), formats=[size.format])
            finally:
                Image.MAX_IMAGE_PIXELS = saved
            w, h = im.size
            if sorted((w, h)) != sorted((size.width, size.height)):
                raise ImageInputError(f"{source}: opens as {w}x{h}, not the {size.width}x{size.height} its header "
                                      "says")
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                raise ImageInputError(
                    f"{source}: has {frames} frames (an animation or a multi-page file); only single images are "
                    "coded, and archiving its first frame alone would lose the rest"
                )
            fmt = im.format
            im.load()
            im = ImageOps.exif_transpose(im)
    except ImageInputError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageInputError(f"{source}: not a decodable image ({exc})") from exc
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise ImageInputError(f"{source}: corrupt or truncated image ({type(exc).__name__}: {exc})") from exc
    source_mode = im.mode
    bit_depth = 16 if im.mode.startswith("I") else 8
    png_depth = _png_bit_depth(data)
    if png_depth is not None and png_depth > 8:
        bit_depth = png_depth
    alpha = None
    if im.mode in GRAY_MODES:
        g = _to_uint8_gray(im)
        return PreparedImage(np.repeat(g[:, :, None], 3, axis=2), None, "L", source_mode, bit_depth, fmt)
    if im.mode in ("LA", "La"):
        la = np.asarray(im.convert("LA"))
        g, alpha = la[:, :, 0], np.ascontiguousarray(la[:, :, 1])
        return PreparedImage(np.repeat(g[:, :, None], 3, axis=2), alpha, "LA", source_mode, bit_depth, fmt)
    has_alpha = im.mode in ("RGBA", "RGBa", "PA") or (im.mode == "P" and "transparency" in im.info)
    if im.mode == "P" and not has_alpha and im.palette is not None and im.palette.mode == "RGBA":
        has_alpha = True
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"))
        rgb, alpha = np.ascontiguousarray(rgba[:, :, :3]), np.ascontiguousarray(rgba[:, :, 3])
        return PreparedImage(rgb, alpha, "RGBA", source_mode, bit_depth, fmt)
    try:
        rgb = np.asarray(im.convert("RGB"))
    except (ValueError, OSError) as exc:
        raise ImageInputError(f"{source}: cannot convert mode {im.mode} to RGB ({exc})") from exc
    return PreparedImage(np.ascontiguousarray(rgb), None, "RGB", source_mode, bit_depth, fmt)


def restore_image(rgb: np.ndarray, alpha: np.ndarray | None, mode: str) -> np.ndarray:
    """Decoded pixels in the recorded layout: HxW (L), HxWx2 (LA), HxWx3 (RGB) or HxWx4 (RGBA)."""
    if mode in ("L", "LA"):
        gray = np.clip(np.round(rgb.astype(np.float32).mean(axis=2)), 0, 255).astype(np.uint8)
        return gray if mode == "L" else np.stack((gray, alpha), axis=2)
    if mode == "RGBA":
        return np.concatenate((rgb, alpha[:, :, None]), axis=2)
    return rgb


def rgb_view(pixels: np.ndarray, mode: str) -> np.ndarray:
    """The colour part of restored pixels as HxWx3 (gray repeated), what PSNR and MS-SSIM are taken on."""
    if mode in ("L", "LA"):
        gray = pixels if mode == "L" else pixels[:, :, 0]
        return np.repeat(gray[:, :, None], 3, axis=2)
    return pixels[:, :, :3]


def to_pil(pixels: np.ndarray, mode: str) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(pixels), mode=mode)


def encode_alpha(alpha: np.ndarray) -> bytes:
    """Alpha plane as a lossless PNG (zlib at level 9)."""
    buf = io.BytesIO()
    Image.fromarray(alpha, mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def decode_alpha(data: bytes, width: int, height: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=["PNG"])  # a PNG by definition: no other plugin may open it
            if im.size != (width, height) or im.mode != "L":
                raise ValueError(f"alpha plane is {im.mode} {im.size[0]}x{im.size[1]}, expected L {width}x{height}")
            return np.asarray(im).copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"alpha plane unreadable ({exc})") from exc


def pixels_sha256(pixels: np.ndarray) -> str:
    """SHA-256 of decoded pixels' bytes: how golden files and cross-device runs record an image."""
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
