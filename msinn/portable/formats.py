"""Names and fixed-point formats of the portable profile, defined once.

A value on the integer path is ``code * 2**-frac``. The main signal path
(latents, support, coupling halves, image) holds float64 codes in
``MAIN_FRAC``; each convolution's formats are chosen at conversion and stored
in the model file. Everything here is part of the file format: changing a
number changes what existing files decode to.
"""

from __future__ import annotations

from .tables import LOG_FRAC

PROFILE = "portable-1"  # the container's coding profile
FORMAT = "msinn-portable"  # the model file's "format" field
FORMAT_VERSION = 1

F32_EXACT = 1 << 24  # every integer of magnitude <= 2**24 is a float32
F64_EXACT = 1 << 53
I64_EXACT = (1 << 63) - 1

MAIN_FRAC = 16
MAIN_BOUND = (1 << 36) - 1
GAIN_FRAC = 16  # per-channel gains (== MAIN_FRAC: symbol * gain lands in main codes)
MUL_FRAC = 14  # the affine coupling's multiplier
TANH_FRAC = 14  # the residual prediction's tanh
SIGMOID_FRAC = 14  # the post-net's squeeze-excite gate
SYMBOL_BOUND = (1 << 15) - 1  # coded symbols are clamped to this
QP_FRAC = LOG_FRAC  # the rate parameter is a multiple of 2**-16
LEAKY_NUM, LEAKY_SHIFT = 41, 12  # LeakyReLU slope 41/4096 = 0.0100098 (CompressAI's 0.01)
# The post-net's squeeze-excite sums a tile's codes in int64: tiles up to this many pixels are proved
MAX_TILE_PIXELS = 1 << 26
