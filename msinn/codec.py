"""The codec's public names in one place: ``from msinn.codec import encode_image, decode_image``.

Encoding lives in :mod:`msinn.encoding`, decoding and its checks in
:mod:`msinn.decoding`, the model's identity as files record it in
:mod:`msinn.checkpoint`; this module only re-exports them, so code written
against ``msinn.codec`` keeps working.
"""

from __future__ import annotations

from .checkpoint import model_identity
from .decoding import (
    DEFAULT_MAX_TILE_PIXELS,
    DecodedImage,
    NumericsMismatch,
    check_header_model,
    check_limits,
    check_profile,
    decode_image,
)
from .encoding import (
    DEFAULT_TILE_PIXELS,
    DEFAULT_TILE_SIZE,
    PROBE_FRACTION,
    EncodeOptions,
    EncodeResult,
    PendingEncode,
    encode_image,
    prepare_encode,
    tile_grid,
)

__all__ = [
    "DEFAULT_MAX_TILE_PIXELS",
    "DEFAULT_TILE_PIXELS",
    "DEFAULT_TILE_SIZE",
    "PROBE_FRACTION",
    "DecodedImage",
    "EncodeOptions",
    "EncodeResult",
    "NumericsMismatch",
    "PendingEncode",
    "check_header_model",
    "check_limits",
    "check_profile",
    "decode_image",
    "encode_image",
    "model_identity",
    "prepare_encode",
    "tile_grid",
]
