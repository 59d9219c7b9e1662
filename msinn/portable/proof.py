"""The exactness proof: the decoder's own code, run on bounds instead of tensors.

:func:`prove` runs :meth:`IntegerDecoder.reconstruct` (every level, the
inverse transform, the post-net) and the pixel conversion with
:class:`BoundOps`, whose values are :class:`Bound` s: a magnitude bound, a
fixed-point format and a carrier (float32 or float64). Every step checks what
makes it exact:

- a layer's input is in the layer's format, on its carrier, and within its
  declared input bound (the layer itself proved, when it was built, that such
  inputs keep every partial sum within 2**24 or 2**53);
- sums, products and rounding offsets stay within the carrier's exact range;
- values joined by a sum, a concatenation or a selection share one format.

Since the proof follows the code that runs, a layer is checked against the
clamp its real producer applies, not against a hand-written wiring. Before
that, :func:`check_tables` checks the shipped tables a decoder relies on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..config import LATENT_CHANNELS, MSINNConfig
from ..model import LEVELS, Level
from .exact import BoundError, Layer, QMix, check_integer
from .formats import (
    F32_EXACT,
    F64_EXACT,
    GAIN_FRAC,
    LEAKY_NUM,
    MAIN_BOUND,
    MAIN_FRAC,
    SYMBOL_BOUND,
)
from .tables import CANON_FRAC_IN, CANON_LIMIT, CANON_RANGE, EXP2_FRAC

LIMIT = {"f32": F32_EXACT, "f64": F64_EXACT}
MAIN_SOURCE = "main path"  # a layer's input rescaled from the main path and clamped to the layer's own bound


@dataclass(frozen=True)
class Bound:
    """What the proof knows of a tensor: ``|code| <= bound``, its format, its carrier, what made it."""

    bound: int
    frac: int
    carrier: str  # "f32" or "f64"
    source: str


class BoundOps:
    """The decoder's arithmetic (:class:`msinn.portable.ops.TensorOps`) on :class:`Bound` s, checking each step.

    ``inputs`` records what reached each layer (the widest input over its calls).
    """

    def __init__(self) -> None:
        self.inputs: dict[str, Bound] = {}

    @staticmethod
    def _fits(v: int, carrier: str, what: str) -> None:
        if v > LIMIT[carrier]:
            top = LIMIT[carrier].bit_length() - 1
            raise BoundError(f"{what}: {v} exceeds the {carrier} carrier's exact range 2**{top}")

    @staticmethod
    def _same(a: Bound, b: Bound, what: str) -> None:
        if a.carrier != b.carrier or a.frac != b.frac:
            raise BoundError(f"{what}: {a.source} ({a.carrier}, format {a.frac}) and {b.source} "
                             f"({b.carrier}, format {b.frac}) do not share a format")

    def layer(self, name: str, layer: Layer, x: Bound) -> Bound:
        carrier = "f64" if isinstance(layer, QMix) else "f32"
        if x.carrier != carrier:
            raise BoundError(f"{name}: input from {x.source} on {x.carrier}, the layer runs on {carrier}")
        if x.frac != layer.frac_in:
            raise BoundError(f"{name}: input from {x.source} in format {x.frac}, the layer reads {layer.frac_in}")
        if x.bound > layer.in_bound:
            raise BoundError(f"{name}: input from {x.source} reaches {x.bound}, beyond the layer's input bound "
                             f"{layer.in_bound} (output bound of the producer exceeds the consumer's input bound)")
        seen = self.inputs.get(name)
        if seen is None or x.bound > seen.bound:
            self.inputs[name] = x
        return Bound(layer.out_bound, layer.frac_out, carrier, name)

    def rescale(self, x: Bound, frac_in: int, frac_out: int, bound: int, log2_gain: int = 0) -> Bound:
        if x.frac != frac_in:
            raise BoundError(f"rescale of {x.source}: format {x.frac} where {frac_in} was expected")
        shift = frac_in - frac_out - log2_gain
        if not -200 <= shift <= 52:
            raise BoundError(f"rescale of {x.source} by 2**{-shift} is outside the exact range")
        if shift > 0:
            self._fits(x.bound + (1 << (shift - 1)), x.carrier, f"rounding {x.source}")
            top = (x.bound + (1 << (shift - 1))) >> shift
        else:
            top = x.bound << -shift  # a power of two only moves the exponent
        return Bound(min(top, bound), frac_out, x.carrier, x.source)

    def from_main(self, x: Bound, name: str, layer: Layer) -> Bound:
        if x.carrier != "f64" or x.frac != MAIN_FRAC:
            raise BoundError(f"{name}: input from {x.source} is not on the main path")
        y = self.to_f32(self.rescale(x, MAIN_FRAC, layer.frac_in, layer.in_bound))
        return Bound(y.bound, y.frac, y.carrier, MAIN_SOURCE)

    def to_main(self, x: Bound, frac: int) -> Bound:
        return self.rescale(self.to_f64(x), frac, MAIN_FRAC, MAIN_BOUND)

    def to_f64(self, x: Bound) -> Bound:
        return Bound(x.bound, x.frac, "f64", x.source)

    def to_f32(self, x: Bound) -> Bound:
        self._fits(x.bound, "f32", f"{x.source} to float32")
        return Bound(x.bound, x.frac, "f32", x.source)

    def add(self, a: Bound, b: Bound) -> Bound:
        self._same(a, b, "sum")
        self._fits(a.bound + b.bound, a.carrier, f"sum of {a.source} and {b.source}")
        return Bound(a.bound + b.bound, a.frac, a.carrier, f"{a.source}+{b.source}")

    sub = add

    def mul(self, a: Bound, b: Bound) -> Bound:
        if a.carrier != b.carrier:
            raise BoundError(f"product of {a.source} and {b.source} on two carriers")
        self._fits(a.bound * b.bound, a.carrier, f"product of {a.source} and {b.source}")
        return Bound(a.bound * b.bound, a.frac + b.frac, a.carrier, f"{a.source}*{b.source}")

    def times(self, x: Bound, k: int) -> Bound:
        self._fits(x.bound * abs(k), x.carrier, f"{x.source} times {k}")
        return Bound(x.bound * abs(k), x.frac, x.carrier, x.source)

    def clamp(self, x: Bound, bound: int) -> Bound:
        return Bound(min(x.bound, bound), x.frac, x.carrier, x.source)

    def relu(self, x: Bound) -> Bound:
        return x

    def leaky(self, x: Bound) -> Bound:
        self._fits(x.bound * LEAKY_NUM, x.carrier, f"LeakyReLU of {x.source}")
        return x

    def copy(self, x: Bound) -> Bound:
        return x

    def cat(self, *xs: Bound) -> Bound:
        for x in xs[1:]:
            self._same(xs[0], x, "concatenation")
        return Bound(max(x.bound for x in xs), xs[0].frac, xs[0].carrier, "+".join(x.source for x in xs))

    def halves(self, x: Bound) -> tuple[Bound, Bound]:
        return x, x

    def rearrange(self, fn: Callable, x: Bound) -> Bound:
        return x

    def where(self, mask: Any, a: Bound, b: Bound) -> Bound:
        self._same(a, b, "selection")
        return Bound(max(a.bound, b.bound), a.frac, a.carrier, f"{a.source}|{b.source}")

    def zero_where(self, x: Bound, mask: Any) -> Bound:
        return x

    def zeros_like(self, x: Bound) -> Bound:
        return Bound(0, x.frac, x.carrier, "zeros")

    def spatial_mean(self, x: Bound) -> Bound:
        if x.carrier != "f64":
            raise BoundError(f"mean of {x.source}: not on the main path")
        return Bound(min(x.bound, MAIN_BOUND), x.frac, "f64", f"mean({x.source})")

    def constant(self, codes: torch.Tensor, frac: int, h: int, w: int, device: Any) -> Bound:
        check_integer("initial_scale_codes", codes, F32_EXACT)
        return Bound(int(codes.to(torch.int64).abs().max()) if codes.numel() else 0, frac, "f32", "initial_scale_codes")

    def index(self, thresholds: Any, scale: Bound, frac: int, gain: Bound) -> Bound:
        if scale.frac != frac:
            raise BoundError(f"scale index of {scale.source}: format {scale.frac} where {frac} was expected")
        self._fits(scale.bound * gain.bound, "f64", f"{scale.source} times its scale gain")
        return Bound(0, 0, "index", "index")


class _Symbols:
    """Decoded symbols as the proof sees them: any value the decoder's clamp lets through."""

    def size(self, level: Level) -> tuple[int, int]:
        return 1, 1

    def masks(self, level: Level) -> tuple[None, None]:
        return None, None

    def anchors(self, level: Level, idx: Bound) -> Bound:
        return Bound(SYMBOL_BOUND, 0, "f64", f"symbols of level {level.index}")

    non_anchors = anchors


def check_tables(config: MSINNConfig, tensors: Mapping[str, torch.Tensor]) -> None:
    """Every shipped table the decoder reads is there, of an integer type where it must be, and well formed."""

    def need(key: str, shape: tuple | None = None, limit: int | None = None) -> torch.Tensor:
        if key not in tensors:
            raise BoundError(f"table {key} is missing")
        t = tensors[key]
        if limit is not None:
            check_integer(key, t, limit)
        if shape is not None and tuple(t.shape) != shape:
            raise BoundError(f"table {key} has shape {tuple(t.shape)}, expected {shape}")
        return t

    channels = sum(LATENT_CHANNELS)
    for key in ("log_inv_gain", "log_scale_gain"):
        need(key, (config.anchor_num, channels), 1 << 40)
    exp2 = need("exp2", ((1 << EXP2_FRAC) + 1,), 1 << 40)
    if int(exp2.min()) < 0:
        raise BoundError("table exp2 holds negative values")
    need("initial_scale_codes", (LATENT_CHANNELS[0],), F32_EXACT)
    for fn in ("gelu", "tanh", "inv_coupling_scale", "sigmoid"):
        need(f"canon.{fn}", (2 * (CANON_RANGE << CANON_FRAC_IN) + 1,), CANON_LIMIT)
    scale_table = need("scale_table")
    n = scale_table.numel()
    if scale_table.dim() != 1 or n < 2 or not scale_table.is_floating_point():
        raise BoundError("table scale_table must be a 1-D float table of two or more entries")
    s = scale_table.double()
    if not bool(torch.isfinite(s).all()) or not bool((s[1:] > s[:-1]).all()) or float(s[0]) <= 0:
        raise BoundError("table scale_table must be finite, positive and increasing (searched by bisection)")
    cdf = need("cdf", None, 1 << 31)
    if cdf.dim() != 2 or cdf.shape[0] != n:
        raise BoundError(f"table cdf must have one row per scale-table entry ({n})")
    length = need("cdf_length", (n,), cdf.shape[1])
    need("cdf_offset", (n,), 1 << 31)
    if int(length.min()) < 2:
        raise BoundError("table cdf_length: every CDF needs two entries or more")


def prove(decoder: Any) -> dict[str, Bound]:
    """Prove that decoding with ``decoder`` (an :class:`~msinn.portable.decoder.IntegerDecoder`) is exact.

    Its layers proved their own worst cases when they were built; this runs
    its decoding code on bounds. Raises :class:`BoundError` naming the first
    step that could leave its carrier's exact range. Returns the wiring it
    found: for each layer, the widest input that reaches it (bound, format,
    carrier) and what produced it (a layer, or ``MAIN_SOURCE``).
    """
    o = BoundOps()
    ig, sg = decoder.largest_gains()
    gains = [(Bound(ig, GAIN_FRAC, "f64", "inverse gain"), Bound(sg, GAIN_FRAC, "f64", "scale gain"))] * len(LEVELS)
    image = decoder.reconstruct(o, _Symbols(), gains)
    if image.carrier != "f64" or image.frac != MAIN_FRAC:
        raise BoundError(f"the image from {image.source} is not in the main format")
    decoder.pixels(o, image)
    return o.inputs
