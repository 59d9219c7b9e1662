"""Classical codecs (JPEG, WebP, AVIF through Pillow) as baselines for ``msinn eval``.

Each image is really encoded and decoded, so sizes and reconstructions are
what the codec's users get, and the quality sweeps cover the model's rates.
"""

from __future__ import annotations

import io

import numpy as np

# Quality sweeps chosen to span roughly 0.1-3 bpp on natural photographs (Kodak-like content).
CODEC_QUALITIES: dict[str, tuple[int, ...]] = {
    "jpeg": (5, 10, 20, 30, 50, 70, 85, 92, 96),
    "webp": (0, 10, 25, 50, 70, 85, 95, 100),
    "avif": (10, 25, 40, 55, 70, 80, 88, 94),
}
AVIF_SPEED = 6  # libavif's default trade-off; slower speeds gain little and cost seconds per image


def code_classical(name: str, img_uint8_hwc: np.ndarray, quality: int) -> tuple[int, np.ndarray]:
    """(bytes, 8-bit reconstruction) of one image through a Pillow codec at one quality."""
    from PIL import Image

    im = Image.fromarray(img_uint8_hwc, "RGB")
    buf = io.BytesIO()
    if name == "jpeg":
        im.save(buf, "JPEG", quality=quality, subsampling=0)  # 4:4:4, like the model
    elif name == "webp":
        im.save(buf, "WEBP", quality=quality, method=6)  # lossy WebP is always 4:2:0
    elif name == "avif":
        im.save(buf, "AVIF", quality=quality, subsampling="4:4:4", speed=AVIF_SPEED)
    else:
        raise ValueError(f"unknown codec {name!r}")
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as dec:
        rec = np.asarray(dec.convert("RGB"))
    return len(data), rec


def codec_available(name: str) -> str | None:
    """None if Pillow can encode and decode ``name`` here, else why not (Pillow builds differ)."""
    try:
        nbytes, rec = code_classical(name, np.full((16, 16, 3), 128, np.uint8), CODEC_QUALITIES[name][-1])
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    if nbytes <= 0 or rec.shape != (16, 16, 3):
        return "round trip through Pillow produced no image"
    return None
