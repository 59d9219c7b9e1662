"""An image's size from its file header alone, before any pixel is decoded, whatever its format.

Every limit on an image (``--max-pixels``, the pipeline's memory budget, an
archive row's recorded size) is only worth its check if the check comes
before the decoder allocates. Pillow's own format plugins read the header at
``Image.open`` and decode on ``load``, so their size is known cheaply. The
JPEG XL plugin (``pillow_jxl``) decodes the whole image inside ``Image.open``
(a 26 KB file of 16000x16000 took seconds and gigabytes before any limit
ran), so JPEG XL is recognised by its signature, whatever the file is called,
and sized here from its codestream's ``SizeHeader`` (ISO/IEC 18181-1, 9.2.2;
in a container, the ``jxlc``/``jxlp`` boxes of 18181-2): a few bytes, parsed
without libjxl. Data that cannot be sized this way is refused, never decoded
to find out.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
from dataclasses import dataclass
from functools import cache

from .errors import ImageInputError

JXL_CODESTREAM = b"\xff\x0a"
JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
EAGER_FORMATS = ("JXL",)  # Pillow plugins that decode inside Image.open: sized here, never by opening them
PILLOW_LOCK = threading.Lock()  # Image.MAX_IMAGE_PIXELS is global: set it for one open at a time

# SizeHeader.ratio (1..7): width = height * num // den
_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}
_DIM = ((1, 9), (1, 13), (1, 18), (1, 30))  # U32 distributions of a dimension: offset + u(bits)


@dataclass(frozen=True)
class Size:
    """What the header says: the format (Pillow's name) and the size the decoder will produce."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


@cache
def register_plugins() -> None:
    """Register the format plugins this project reads beyond Pillow's own (JPEG XL), once per process.

    Every format is readable wherever an image is opened, whichever codecs a
    command was told to write: the same file is never accepted by one command
    and refused by another.
    """
    try:
        import pillow_jxl  # noqa: F401  (registers JXL with Pillow)
    except ImportError:  # a build without the plugin: JPEG XL files are then "not a decodable image"
        pass


def is_jxl(data: bytes) -> bool:
    """A JPEG XL codestream or container, by its signature (never by a file name)."""
    return data[:2] == JXL_CODESTREAM or data[:12] == JXL_CONTAINER


class _Bits:
    """JPEG XL's bit reader: least significant bit of each byte first."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def u(self, n: int) -> int:
        value = 0
        for i in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise ValueError("header truncated")
            value |= ((self.data[byte] >> (self.pos & 7)) & 1) << i
            self.pos += 1
        return value

    def u32(self, dists: tuple[tuple[int, int], ...]) -> int:
        offset, bits = dists[self.u(2)]
        return offset + self.u(bits)


def _codestream_head(data: bytes, want: int = 64) -> bytes:
    """The first ``want`` bytes of a JPEG XL codestream, bare or out of its container's boxes."""
    if data[:2] == JXL_CODESTREAM:
        return data[:want]
    out = b""
    pos = 0
    while pos < len(data) and len(out) < want:
        if pos + 8 > len(data):
            raise ValueError("container box header truncated")
        size, kind = struct.unpack_from(">I4s", data, pos)
        head = 8
        if size == 1:
            if pos + 16 > len(data):
                raise ValueError("container box header truncated")
            size, head = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:  # the last box runs to the end of the file
            size = len(data) - pos
        if size < head:
            raise ValueError(f"container box {kind!r} has an impossible size {size}")
        body = data[pos + head : pos + size]
        if kind == b"jxlc":
            out += body
        elif kind == b"jxlp":
            out += body[4:]  # after its sequence number
        pos += size
    if out[:2] != JXL_CODESTREAM:
        raise ValueError("container holds no codestream")
    return out


def jxl_size(data: bytes) -> tuple[int, int]:
    """(width, height) a JPEG XL file decodes to: its SizeHeader, turned as its orientation says."""
    bits = _Bits(_codestream_head(data), 16)
    small = bits.u(1)
    height = (bits.u(5) + 1) * 8 if small else bits.u32(_DIM)
    ratio = bits.u(3)
    if ratio:
        num, den = _RATIOS[ratio]
        width = height * num // den
    else:
        width = (bits.u(5) + 1) * 8 if small else bits.u32(_DIM)
    # ImageMetadata follows: all_default, extra_fields, orientation (1..8; 5..8 swap the axes, and libjxl
    # turns the pixels unless told to keep them)
    if not bits.u(1) and bits.u(1) and bits.u(3) + 1 >= 5:
        width, height = height, width
    return width, height


def _pillow_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from Pillow's header parse, trying only plugins that decode lazily."""
    from PIL import Image

    register_plugins()
    Image.init()
    lazy = [f for f in Image.ID if f not in EAGER_FORMATS]
    with warnings.catch_warnings(), PILLOW_LOCK:
        warnings.simplefilter("ignore")
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the size is what we want to know
        try:
            with Image.open(io.BytesIO(data), formats=lazy) as im:
                return str(im.format), int(im.size[0]), int(im.size[1])
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def image_size(data: bytes, source: str = "input") -> Size:
    """The size ``data`` will decode to, from its header alone; ImageInputError naming ``source`` if it cannot be
    told (not an image, or a header too damaged to read): such data is never decoded."""
    if not data:
        raise ImageInputError(f"{source}: empty file")
    if is_jxl(data):
        try:
            width, height = jxl_size(data)
        except ValueError as exc:
            raise ImageInputError(f"{source}: JPEG XL header unreadable ({exc})") from None
        return Size("JXL", width, height)
    try:
        fmt, width, height = _pillow_size(data)
    except Exception as exc:  # Pillow raises many kinds for data that is not an image it knows
        raise ImageInputError(f"{source}: not a decodable image ({type(exc).__name__}: {exc})") from None
    return Size(fmt, width, height)


def check_size(size: Size, source: str, max_pixels: int, expect: tuple[int, int] | None = None) -> None:
    """Refuse, before decoding, a size over ``max_pixels``, without pixels, or other than ``expect`` (w, h)."""
    w, h = size.width, size.height
    if w < 1 or h < 1:
        raise ImageInputError(f"{source}: image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageInputError(f"{source}: {w}x{h} pixels exceeds the limit of {max_pixels} pixels")
    if expect is not None and (w, h) != tuple(expect):
        raise ImageInputError(f"{source}: its header says {w}x{h}, not the {expect[0]}x{expect[1]} recorded for it; "
                              "refused before decoding")
