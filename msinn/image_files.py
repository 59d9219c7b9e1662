"""Image files under a folder or any fsspec URI: listing them and reading one as 8-bit RGB, as training and
evaluation take their data (the codec reads bytes it is given: :mod:`msinn.images`)."""

from __future__ import annotations

import io

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem
from PIL import Image, ImageOps

from .images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from .sizing import check_size, image_size, register_plugins


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


def read_uri(uri: str, storage_options: dict | None = None) -> bytes:
    """A whole file's bytes from a local path or any fsspec URI."""
    with fsspec.open(uri, "rb", **(storage_options or {})) as f:
        return f.read()


def read_image_rgb(uri: str, storage_options: dict | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB array, EXIF orientation applied (evaluation and training; the codec uses open_image).

    Sized from its header and held to ``DEFAULT_MAX_PIXELS`` before decoding, as every image is."""
    data = read_uri(uri, storage_options)
    size = image_size(data, uri)
    check_size(size, uri, DEFAULT_MAX_PIXELS)
    register_plugins()
    im = Image.open(io.BytesIO(data), formats=[size.format])
    im = ImageOps.exif_transpose(im)
    return np.asarray(im.convert("RGB"))
