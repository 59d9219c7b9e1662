"""Inputs every kind of test makes: image files in memory."""

from __future__ import annotations

import io

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
