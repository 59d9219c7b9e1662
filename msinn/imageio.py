"""Listing and reading images from local paths or any fsspec URI."""

from __future__ import annotations

import io

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")


def list_images(uri: str, storage_options: dict | None = None) -> list[str]:
    """Image files under a folder or prefix (recursive), sorted, as URIs fsspec can open."""
    fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    if fs.isfile(root):
        files = [root]
    else:
        files = [p for p in fs.find(root) if p.lower().endswith(IMAGE_EXTENSIONS)]
    if not files:
        raise FileNotFoundError(f"{uri}: no image files found")
    local = isinstance(fs, LocalFileSystem)
    return sorted(p if local else fs.unstrip_protocol(p) for p in files)


def read_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    with fsspec.open(uri, "rb", **(storage_options or {})) as f:
        return f.read()


def read_image_rgb(uri: str, storage_options: dict | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB array, EXIF orientation applied."""
    im = Image.open(io.BytesIO(read_bytes(uri, storage_options)))
    im = ImageOps.exif_transpose(im)
    return np.asarray(im.convert("RGB"))
