"""Exact storage: the original file back byte for byte, or its pixels and metadata back exactly.

What ``--lossless`` stores for one input file, and how it is read back:

* a JPEG is recompressed losslessly: Lepton (``lepton-jpeg-python``) first,
  JPEG XL's JPEG transcoding (``imagecodecs``) where Lepton refuses or does
  not shrink it; either gives the original bytes back (``exact = 'bytes'``);
* any other image Pillow opens as one frame is stored pixel-lossless in the
  smallest of lossless JPEG XL, lossless WebP and PNG that carries its mode,
  bit depth (16-bit included), palette, alpha, and the ICC profile, EXIF and
  XMP it has (``exact = 'pixels'``);
* the original file as it is (``stored``, ``exact = 'bytes'``) whenever it is
  smaller than every recompression, and for every file nothing can
  recompress (a CMYK or arithmetic-coded JPEG, an animation, a format
  Pillow does not open, a damaged file): never an error, never lost.

Every candidate is read back before it can win: a recompressed JPEG must give
the original bytes, a pixel file the same pixels and metadata. The checks
live here, so the pipeline, ``msinn encode`` and ``verify`` share them.
"""

from __future__ import annotations

import hashlib
import io
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .errors import ImageInputError

LOSSLESS = "lossless"  # the --codecs token and the target kind
BYTES_CODECS = ("lepton", "jxl-jpeg", "stored")  # give the original file back
PIXEL_CODECS = ("jxl-lossless", "webp-lossless", "png")  # give the original pixels and metadata back
EXACT_CODECS = BYTES_CODECS + PIXEL_CODECS
EXTENSIONS = {"lepton": "lep", "jxl-jpeg": "jxl", "jxl-lossless": "jxl", "webp-lossless": "webp", "png": "png"}
# a stored original's member extension, by the format Pillow recognised (anything else: .bin)
STORED_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "GIF": "gif", "WEBP": "webp", "TIFF": "tif", "BMP": "bmp",
                     "PPM": "ppm", "JPEG2000": "jp2", "ICO": "ico", "TGA": "tga", "AVIF": "avif", "JXL": "jxl"}
# source formats whose pixels are offered to the pixel codecs (others are stored as they are)
PIXEL_SOURCES = ("PNG", "BMP", "TIFF")
PILLOW_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")  # decoded by Pillow without loss
WIDE_MODES = {1: "L;16", 2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}  # 16-bit PNGs Pillow would reduce: imagecodecs


def stored_extension(source_format: str | None) -> str:
    return STORED_EXTENSIONS.get(str(source_format or "").upper(), "bin")


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


@dataclass
class ExactPixels:
    """An image's pixels as its file holds them, with the metadata that says how to show them."""

    array: np.ndarray  # H x W (x C), uint8 or uint16, as decoded without any conversion
    mode: str  # a Pillow mode, or L;16 / LA;16 / RGB;16 / RGBA;16 for 16-bit images Pillow would reduce
    palette: bytes | None = None  # P images: the palette, and its transparency
    transparency: bytes | None = None
    icc: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None

    # width/height read like PreparedImage's (msinn/images.py) on purpose: callers size either the same way.
    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def bit_depth(self) -> int:
        return 16 if self.array.dtype == np.uint16 else 1 if self.mode == "1" else 8

    @property
    def has_metadata(self) -> bool:
        return bool(self.icc or self.exif or self.xmp)

    def digest(self) -> str:
        """One hash of everything that must come back: layout, samples, palette and metadata."""
        h = hashlib.sha256()
        head = f"exact-1|{self.mode}|{self.array.dtype.str}|{'x'.join(map(str, self.array.shape))}"
        h.update(head.encode())
        h.update(np.ascontiguousarray(self.array).tobytes())
        for part in (self.palette, self.transparency, self.icc, self.exif, self.xmp):
            h.update(len(part).to_bytes(8, "little") if part is not None else b"\xff" * 8)
            h.update(part or b"")
        return h.hexdigest()[:32]


@dataclass
class ExactFile:
    """What ``--lossless`` keeps for one input, with what was tried on the way."""

    codec: str  # one of EXACT_CODECS
    data: bytes
    exact: str  # "bytes" (the original file comes back) or "pixels" (its pixels and metadata do)
    source_format: str | None
    width: int | None
    height: int | None
    mode: str | None
    bit_depth: int | None
    pixel_hash: str | None  # ExactPixels.digest() of pixel files
    seconds: float
    notes: list[str] = field(default_factory=list)  # candidates refused, and why

    @property
    def note(self) -> str:
        return "; ".join(self.notes)

    @property
    def extension(self) -> str:
        return EXTENSIONS.get(self.codec) or stored_extension(self.source_format)


def versions(codec: str) -> str:
    """The libraries that wrote a file of ``codec``, for the manifest."""
    from importlib.metadata import version

    if codec == "lepton":
        return f"lepton-jpeg-python {version('lepton-jpeg-python')}"
    if codec in ("jxl-jpeg", "jxl-lossless"):
        import imagecodecs

        return f"imagecodecs {imagecodecs.__version__}; {imagecodecs.jpegxl_version()}"
    if codec in ("webp-lossless", "png"):
        import PIL
        from PIL import features

        lib = f"libwebp {features.version('webp')}" if codec == "webp-lossless" else f"zlib {features.version('zlib')}"
        return f"Pillow {PIL.__version__}; {lib}"
    return "stored as is"


# ------------------------------------------------------------------ the original bytes back


def _lepton(data: bytes) -> bytes:
    import lepton_jpeg_python

    return bytes(lepton_jpeg_python.compress_bytes(data))


def _unlepton(data: bytes) -> bytes:
    import lepton_jpeg_python

    return bytes(lepton_jpeg_python.decompress_bytes(data))


def _jxl_jpeg(data: bytes) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.jpegxl_encode_jpeg(data))


def _unjxl_jpeg(data: bytes) -> bytes:
    import imagecodecs

    return bytes(imagecodecs.jpegxl_decode_jpeg(data))


RECOMPRESS = {"lepton": (_lepton, _unlepton), "jxl-jpeg": (_jxl_jpeg, _unjxl_jpeg)}


def original_bytes(codec: str, data: bytes, max_bytes: int | None = None) -> bytes:
    """The original file of a ``bytes`` row; ``max_bytes`` (the row's ``source_bytes``) bounds what is believed."""
    if codec == "stored":
        return data
    if codec not in RECOMPRESS:
        raise ValueError(f"codec {codec!r} does not give an original file back")
    try:
        out = RECOMPRESS[codec][1](data)
    except Exception as exc:  # noqa: BLE001 -- the libraries raise their own types on damaged data
        raise ValueError(f"{codec} file does not decompress ({type(exc).__name__}: {exc})") from None
    if max_bytes is not None and len(out) != max_bytes:
        raise ValueError(f"{codec} file gave {len(out)} bytes, the original had {max_bytes}")
    return out


def _recompress_jpeg(data: bytes, notes: list[str]) -> tuple[str, bytes] | None:
    """The smallest recompression that gives ``data`` back exactly: Lepton, else JPEG XL's JPEG transcoding."""
    for codec in ("lepton", "jxl-jpeg"):
        encode, decode = RECOMPRESS[codec]
        try:
            packed = encode(data)
            if decode(packed) != data:
                notes.append(f"{codec}: refused (its round trip did not give the original bytes)")
                continue
        except Exception as exc:  # noqa: BLE001 -- arithmetic coding, CMYK, 12-bit, truncated: each library says
            notes.append(f"{codec}: refused ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
            continue
        if len(packed) < len(data):
            return codec, packed
        notes.append(f"{codec}: not smaller ({len(packed)} of {len(data)} bytes)")
    return None


# ------------------------------------------------------------------ the original pixels back


def _metadata(im) -> tuple[bytes | None, bytes | None, bytes | None]:
    """ICC profile, EXIF (without its 'Exif\\0\\0' prefix) and XMP, as Pillow found them."""
    icc = im.info.get("icc_profile") or None
    exif = im.info.get("exif") or None
    if exif and exif.startswith(b"Exif\x00\x00"):
        exif = exif[6:]
    xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp") or None
    if isinstance(xmp, str):
        xmp = xmp.encode("utf-8")
    return icc, exif, xmp


def _png_is_wide(data: bytes) -> int | None:
    """Channels of a 16-bit PNG that is not plain gray (Pillow would reduce it to 8 bits), else None."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 26 or data[24] != 16:
        return None
    return {0: None, 2: 3, 4: 2, 6: 4}.get(data[25])


def read_exact(data: bytes, source: str = "input", max_pixels: int | None = None) -> tuple[ExactPixels, str]:
    """An image's exact pixels and metadata, and its format; ImageInputError for what cannot be read exactly.

    Pillow decodes every mode it holds without loss; 16-bit colour PNGs
    (which Pillow reduces to 8 bits) go through imagecodecs. The size is
    checked against ``max_pixels`` from the header, before any pixel is decoded.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageInputError(f"{source}: {w}x{h} pixels exceeds the limit of {max_pixels} pixels")
            if getattr(im, "n_frames", 1) > 1:
                raise ImageInputError(f"{source}: has {im.n_frames} frames")
            fmt = im.format
            wide = _png_is_wide(data) if fmt == "PNG" else None
            if wide is not None:
                import imagecodecs

                arr = np.asarray(imagecodecs.png_decode(data))
                if arr.dtype != np.uint16 or arr.shape[:2] != (h, w):
                    raise ImageInputError(f"{source}: 16-bit PNG decoded as {arr.dtype} {arr.shape}")
                icc, exif, xmp = _metadata(im)
                return ExactPixels(arr, WIDE_MODES[1 if arr.ndim == 2 else arr.shape[2]], None, None, icc, exif,
                                   xmp), fmt
            im.load()
    except ImageInputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, MemoryError,
            Image.DecompressionBombError) as exc:
        raise ImageInputError(f"{source}: not an image read exactly here ({type(exc).__name__}: {exc})") from None
    if im.mode not in PILLOW_MODES:
        raise ImageInputError(f"{source}: mode {im.mode} is not kept exactly by a pixel codec")
    if fmt == "TIFF" and im.mode != "I;16" and any(int(b) > 8 for b in _as_tuple(im.tag_v2.get(258, (8,)))):
        raise ImageInputError(f"{source}: a TIFF of more than 8 bits per sample, which Pillow reduces")
    arr = np.asarray(im)
    palette = transparency = None
    if im.mode == "P":
        palette = bytes(im.palette.tobytes()) if im.palette is not None else None
        t = im.info.get("transparency")
        transparency = t if isinstance(t, bytes) else (str(t).encode() if t is not None else None)
    icc, exif, xmp = _metadata(im)
    return ExactPixels(np.ascontiguousarray(arr), im.mode, palette, transparency, icc, exif, xmp), fmt


def _as_tuple(v) -> tuple:
    return tuple(v) if isinstance(v, tuple | list) else (v,)


def _pillow_image(px: ExactPixels):
    from PIL import Image

    if px.mode == "1":
        im = Image.fromarray((px.array > 0).astype(np.uint8) * 255, "L").convert("1", dither=Image.Dither.NONE)
    elif px.mode == "I;16":
        im = Image.frombytes("I;16", (px.width, px.height), px.array.astype("<u2").tobytes())
    else:
        im = Image.fromarray(px.array, px.mode)
    if px.mode == "P" and px.palette is not None:
        im.putpalette(px.palette, rawmode=_palette_rawmode(px.palette))
    return im


def _palette_rawmode(palette: bytes) -> str:
    return "RGBA" if len(palette) % 4 == 0 and len(palette) % 3 != 0 else "RGB"


def _save_options(px: ExactPixels) -> dict:
    opts: dict = {}
    if px.icc:
        opts["icc_profile"] = px.icc
    if px.exif:
        opts["exif"] = b"Exif\x00\x00" + px.exif
    return opts


def write_png(px: ExactPixels) -> bytes:
    """The pixels as a PNG with their metadata (16-bit colour through imagecodecs, which writes none)."""
    if px.mode in WIDE_MODES.values():
        if px.has_metadata:
            raise ValueError("16-bit colour PNGs are written without metadata")
        import imagecodecs

        return bytes(imagecodecs.png_encode(px.array, level=9))
    from PIL import PngImagePlugin

    im = _pillow_image(px)
    opts = _save_options(px)
    if px.xmp:
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", px.xmp.decode("utf-8", "surrogateescape"))
        opts["pnginfo"] = info
    if px.mode == "P" and px.transparency is not None:
        t = px.transparency
        opts["transparency"] = t if not t.isdigit() else int(t)
    buf = io.BytesIO()
    im.save(buf, "PNG", optimize=True, **opts)
    return buf.getvalue()


def _write_webp(px: ExactPixels) -> bytes:
    if px.mode not in ("RGB", "RGBA"):
        raise ValueError(f"lossless WebP does not keep mode {px.mode}")
    opts = _save_options(px)
    if px.xmp:
        opts["xmp"] = px.xmp
    buf = io.BytesIO()
    # method 4 (libwebp's default): method 6 saved 3% more on the graphics set at 9x the time
    _pillow_image(px).save(buf, "WEBP", lossless=True, quality=100, method=4, exact=True, **opts)
    return buf.getvalue()


def _write_jxl(px: ExactPixels) -> bytes:
    if px.has_metadata:
        raise ValueError("lossless JPEG XL is written here without metadata")
    if px.mode not in ("L", "LA", "RGB", "RGBA", "I;16", *WIDE_MODES.values()):
        raise ValueError(f"lossless JPEG XL does not keep mode {px.mode}")
    import imagecodecs

    return bytes(imagecodecs.jpegxl_encode(px.array, lossless=True, effort=7))


WRITERS = {"jxl-lossless": _write_jxl, "webp-lossless": _write_webp, "png": write_png}


def exact_pixels(codec: str, data: bytes, max_pixels: int | None = None, source: str = "member") -> ExactPixels:
    """A pixel file's exact pixels: what ``--lossless`` wrote, read back the same way as its source was."""
    if codec == "jxl-lossless":
        import imagecodecs

        try:
            arr = np.asarray(imagecodecs.jpegxl_decode(data))
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"{source}: lossless JPEG XL does not decode ({type(exc).__name__}: {exc})") from None
        if max_pixels is not None and arr.shape[0] * arr.shape[1] > max_pixels:
            raise ValueError(f"{source}: {arr.shape[1]}x{arr.shape[0]} pixels exceeds the limit")
        channels = 1 if arr.ndim == 2 else arr.shape[2]
        if arr.dtype == np.uint16:
            mode = "I;16" if channels == 1 else WIDE_MODES[channels]
        else:
            mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
        return ExactPixels(np.ascontiguousarray(arr), mode)
    if codec not in PIXEL_CODECS:
        raise ValueError(f"codec {codec!r} does not hold exact pixels")
    try:
        px, _ = read_exact(data, source, max_pixels)
    except ImageInputError as exc:
        raise ValueError(str(exc)) from None
    return px


def _jxl_mode_fix(px: ExactPixels, source: ExactPixels) -> ExactPixels:
    """Lossless JPEG XL reads a 16-bit gray image back as I;16 whatever its source called it: compare alike."""
    if px.mode == "I;16" and source.mode == "L;16":
        px.mode = "L;16"
    return px


def _pixel_candidates(px: ExactPixels, source_format: str, notes: list[str]) -> list[tuple[str, bytes]]:
    """Every pixel codec's file that reads back to exactly ``px`` (pixels, palette and metadata)."""
    want = px.digest()
    out = []
    for codec, write in WRITERS.items():
        if codec == "png" and source_format == "PNG" and px.mode in ("L", "LA", "RGB", "RGBA"):
            continue  # a PNG rewritten by Pillow is rarely smaller than the PNG it came from, and costs as much
        try:
            packed = write(px)
            back = exact_pixels(codec, packed)
            if codec == "jxl-lossless":
                back = _jxl_mode_fix(back, px)
        except Exception as exc:  # noqa: BLE001 -- a mode or metadata the codec does not carry
            notes.append(f"{codec}: {str(exc).splitlines()[0][:160]}")
            continue
        if back.digest() != want:
            notes.append(f"{codec}: refused (read back other pixels or metadata)")
            continue
        out.append((codec, packed))
    return out


JXL_SIGNATURES = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")


def probe_format(data: bytes) -> str | None:
    """The format Pillow recognises, from the header alone (None when it recognises none).

    JPEG XL is named by its signature and never opened here: its Pillow
    plugin decodes the whole image at open, whatever its size.
    """
    from PIL import Image

    if data.startswith(JXL_SIGNATURES):
        return "JXL"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(io.BytesIO(data)).format
    except Exception:  # noqa: BLE001 -- not an image Pillow knows: stored as it is
        return None


def store_exactly(data: bytes, source: str = "input", max_pixels: int | None = None,
                  recompress: bool = True) -> ExactFile:
    """The smallest file that gives back ``data`` (JPEG) or its pixels and metadata (other images); the
    original itself when nothing smaller reads back exactly, or when ``recompress`` is False (an image over
    the memory budget). Never raises for a file that can be stored."""
    t0 = time.perf_counter()
    notes: list[str] = []
    fmt = probe_format(data)
    if not recompress:
        return ExactFile("stored", data, "bytes", fmt, None, None, None, None, None, time.perf_counter() - t0, notes)
    shape: tuple[int | None, int | None, str | None, int | None] = (None, None, None, None)

    def keep(codec: str, packed: bytes, exact: str, px: ExactPixels | None = None) -> ExactFile:
        w, h, mode, depth = (px.width, px.height, px.mode, px.bit_depth) if px is not None else shape
        digest = px.digest() if exact == "pixels" and px is not None else None
        return ExactFile(codec, packed, exact, fmt, w, h, mode, depth, digest, time.perf_counter() - t0, notes)

    if is_jpeg(data):
        header = _header_size(data, max_pixels, notes)
        if header is not None:
            shape = header
            found = _recompress_jpeg(data, notes)
            if found is not None:
                return keep(found[0], found[1], "bytes")
        return keep("stored", data, "bytes")
    if fmt in PIXEL_SOURCES:
        try:
            px, fmt = read_exact(data, source, max_pixels)
        except ImageInputError as exc:
            notes.append(f"pixels: {exc}")
            return keep("stored", data, "bytes")
        cands = _pixel_candidates(px, fmt, notes)
        best = min(cands, key=lambda c: len(c[1]), default=None)
        if best is not None and len(best[1]) < len(data):
            return keep(best[0], best[1], "pixels", px)
        if best is not None:
            notes.append(f"{best[0]}: not smaller ({len(best[1])} of {len(data)} bytes)")
        return keep("stored", data, "bytes", px)
    notes.append(f"{fmt}: no exact recompression here" if fmt else "not an image format Pillow recognises")
    return keep("stored", data, "bytes")


def _header_size(data: bytes, max_pixels: int | None, notes: list[str]) -> tuple[int, int, str, int] | None:
    """A JPEG's (width, height, mode, bit depth) from its header; None (stored as is) when Pillow cannot read it
    or it is over the pixel limit (recompressing it would cost what decoding it does)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            mode = im.mode
    except Exception as exc:  # noqa: BLE001
        notes.append(f"JPEG header unreadable ({type(exc).__name__})")
        return None
    if max_pixels is not None and w * h > max_pixels:
        notes.append(f"{w}x{h} pixels is over the limit of {max_pixels}: not recompressed")
        return None
    return w, h, mode, 12 if getattr(im, "bits", 8) == 12 else 8


def check_exact(codec: str, data: bytes, row: dict, max_pixels: int | None = None) -> bytes | ExactPixels:
    """An exact member checked against its row: the original bytes (``source_sha256``) or the exact pixels
    (``pixel_hash``); ValueError naming what differs."""
    key = row.get("key")
    if codec in BYTES_CODECS:
        want_len = row.get("source_bytes")
        out = original_bytes(codec, data, int(want_len) if want_len is not None else None)
        got = hashlib.sha256(out).hexdigest()
        if row.get("source_sha256") and got != row["source_sha256"]:
            raise ValueError(f"{key}: {codec} file gives bytes whose sha256 {got[:16]} is not the original's "
                             f"{str(row['source_sha256'])[:16]}")
        return out
    px = exact_pixels(codec, data, max_pixels, str(key))
    if codec == "jxl-lossless" and row.get("mode") == "L;16" and px.mode == "I;16":
        px.mode = "L;16"
    if row.get("width") is not None and (px.width, px.height) != (row["width"], row["height"]):
        raise ValueError(f"{key}: decoded size {px.width}x{px.height} differs from the manifest's "
                         f"{row['width']}x{row['height']}")
    if row.get("pixel_hash") and px.digest() != row["pixel_hash"]:
        raise ValueError(f"{key}: {codec} pixels or metadata differ from the original's (pixel hash)")
    return px
