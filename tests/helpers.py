"""Inputs every kind of test makes: image files in memory."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def image_file(image: Image.Image | np.ndarray, fmt: str = "PNG", mode: str | None = None, **save) -> bytes:
    """The file (PNG unless ``fmt`` says otherwise) of a Pillow image or a uint8 array (HxW or HxWxC).

    ``mode`` names the array's Pillow mode where its shape does not (``"RGBA"`` for a 4-channel array is
    implied); ``save`` goes to ``Image.save`` (``transparency=0``, ``quality=95``, ``exif=...``).
    """
    im = image if isinstance(image, Image.Image) else Image.fromarray(image, mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def png_stream(width: int, height: int) -> bytes:
    """A valid black PNG of any size, written row by row (nothing of its pixel size is ever held)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z = zlib.compressobj(6)
    rows = bytes(1 + 3 * width) * 64  # filter byte and pixels, 64 rows at a time
    idat = b"".join(z.compress(rows) for _ in range(height // 64)) + z.compress(rows[: (height % 64) * (1 + 3 * width)])
    idat += z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
