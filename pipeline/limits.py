"""Per-image limits: the working memory an image will need, judged from its header before it is decoded.

A legitimate image can need more memory than an actor has (a 16384x16384
PNG of 261 KB grew an actor past 3 GB and kept growing); Ray's memory
monitor would then kill the actor again and again. So each image's peak is
estimated from its size (read from its header by :mod:`msinn.sizing`, never
by decoding it) and from what the job will run on it (the refinement level),
and refused, with the reason, when it is over the job's budget
(``--image-memory-mb``, a default a user can raise). The time limit is the
pool's (``pool.py``): it needs a clock outside the actor.

The model of the peak was measured on the bundled model, one image at a
time, with ``python bench/image_memory.py`` (docs/pipeline.md, "Guarantees"; peak RSS
over the loaded model, this project's 2-core CPU, one thread):

* effort 0 (512, 1024, 2048 and 4096 pixel squares: +186, +757, +939 and
  +2839 MB): images up to ``--tile-pixels`` are coded whole (about 760 bytes
  per pixel), larger ones in 1 MP tiles (about 400 MB plus 160 bytes per
  pixel of the whole image);
* effort 1 and 2 add one refinement step's graph through the decoder, for
  one tile at a time (the whole image up to ``--tile-pixels``): about 192 MB
  plus 3400 bytes per pixel of the largest tile (256, 512, 1024 and 2048
  squares at effort 1: +333, +1161, +4089 and +4411 MB). The number of steps
  changes the time, not the peak (512 at effort 2 with 20 steps: see
  docs/pipeline.md).

With several weights (``--also-model``) each one's prepared encode is held
until the choice, the next weights' network running meanwhile: the estimate
counts the whole peak once per weights (an upper bound, not measured).
"""

from __future__ import annotations

from msinn.sizing import image_size

UNTILED_BYTES_PER_PIXEL = 760
TILED_BASE_BYTES = 400 << 20
TILED_BYTES_PER_PIXEL = 160
REFINE_BASE_BYTES = 192 << 20  # one SGA step (forward and backward through the float decoder) ...
REFINE_BYTES_PER_PIXEL = 3400  # ... per pixel of the tile it refines
TILE_SIDE = 1024  # the encoder's tiles above tile_pixels (msinn.encoding.DEFAULT_TILE_SIZE; not imported: no torch)


def peak_bytes(width: int, height: int, tile_pixels: int, effort: int = 0, weights: int = 1) -> int:
    """Estimated working memory to encode a ``width`` x ``height`` image at ``effort`` with ``weights`` sets of
    weights, above the loaded models."""
    pixels = width * height
    if pixels <= tile_pixels:
        base, largest_tile = UNTILED_BYTES_PER_PIXEL * pixels, pixels
    else:
        base = TILED_BASE_BYTES + TILED_BYTES_PER_PIXEL * pixels
        largest_tile = min(width, TILE_SIDE) * min(height, TILE_SIDE)
    return weights * (base + (REFINE_BASE_BYTES + REFINE_BYTES_PER_PIXEL * largest_tile if effort else 0))


def memory_refusal(data: bytes, budget: int, tile_pixels: int, effort: int, weights: int = 1) -> str | None:
    """Why an image is refused before decoding (its estimated peak at ``effort`` is over ``budget``), or None.

    Data whose size its header does not tell is left to the decoder, which refuses it with its own reason
    (:func:`msinn.images.open_image` sizes every image the same way before decoding)."""
    try:
        size = image_size(data)
    except ValueError:
        return None
    need = peak_bytes(size.width, size.height, tile_pixels, effort, weights)
    if need <= budget:
        return None
    at = (f" at --effort {effort}" if effort else "") + (f" with {weights} sets of weights" if weights > 1 else "")
    return (f"needs about {need / 2**30:.1f} GiB to encode ({size.width}x{size.height}{at}), over the image memory "
            f"budget of {budget / 2**30:.1f} GiB (raise --image-memory-mb if the workers have the memory)")
