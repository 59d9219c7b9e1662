"""Per-image limits: the working memory an image will need, judged from its header before it is decoded.

A legitimate image can need more memory than an actor has (a 16384x16384
PNG of 261 KB grew an actor past 3 GB and kept growing); Ray's memory
monitor would then kill the actor again and again. So each image's peak is
estimated from its size before a pixel is decoded and refused, with the
reason, when it is over the job's budget (``--image-memory-mb``, a default a
user can raise). The time limit is the pool's (``pool.py``): it needs a
clock outside the actor.

The model of the peak was measured on the bundled model, one image at a
time, with ``python bench/image_memory.py`` (1024, 2048 and 4096 pixel
squares: +600, +923 and +2593 MB over the loaded model): images up to
``--tile-pixels`` are coded whole (about 600 bytes per pixel), larger ones in
1 MP tiles (about 400 MB plus 140 bytes per pixel of the whole image).
"""

from __future__ import annotations

import io
import warnings

UNTILED_BYTES_PER_PIXEL = 600
TILED_BASE_BYTES = 400 << 20
TILED_BYTES_PER_PIXEL = 140


def peak_bytes(width: int, height: int, tile_pixels: int) -> int:
    """Estimated working memory to encode a ``width`` x ``height`` image, above the loaded model."""
    pixels = width * height
    if pixels <= tile_pixels:
        return UNTILED_BYTES_PER_PIXEL * pixels
    return TILED_BASE_BYTES + TILED_BYTES_PER_PIXEL * pixels


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from an image's header alone (nothing decoded), or None when Pillow cannot tell."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the size is what we want to know
            try:
                with Image.open(io.BytesIO(data)) as im:
                    return im.size
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except Exception:  # not an image: the decoder says so, with its own reason
        return None


def memory_refusal(data: bytes, budget: int, tile_pixels: int) -> str | None:
    """Why an image is refused before decoding (its estimated peak is over ``budget``), or None."""
    size = image_size(data)
    if size is None:
        return None
    need = peak_bytes(*size, tile_pixels)
    if need <= budget:
        return None
    return (f"needs about {need / 2**30:.1f} GiB to encode ({size[0]}x{size[1]}), over the image memory budget of "
            f"{budget / 2**30:.1f} GiB (raise --image-memory-mb if the workers have the memory)")
