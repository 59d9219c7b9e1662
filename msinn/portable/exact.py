"""The integer layers of the portable decoder, and their own exactness conditions.

Every tensor on the portable decoder path holds integers ("codes"); the value
a code stands for is ``code * 2**-frac`` with a per-tensor ``frac`` fixed when
the model was converted (:mod:`msinn.portable.formats`). Two carriers hold
codes: float32 for the convolutions (exact while every partial sum is an
integer within 2**24, whatever order the kernel adds in:
:mod:`msinn.portable.kernels`), float64 for the main path and the channel
mixing (2**53).

Each layer checks what it can see by itself (:meth:`QConv.check`: its worst
case for inputs within its declared ``in_bound``). That its real inputs stay
within ``in_bound`` is the proof's job (:mod:`msinn.portable.proof`), which
follows the decoder's own code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .formats import F32_EXACT, F64_EXACT, LEAKY_NUM, LEAKY_SHIFT
from .kernels import conv2d_exact
from .tables import CANON_LIMIT, derive_lut


class BoundError(ValueError):
    """A layer's worst case does not fit its carrier: exactness cannot be proved."""


def pow2(e: int) -> float:
    """2**e as a float, exactly (ldexp never rounds a power of two in range)."""
    return math.ldexp(1.0, int(e))


def round_half_up(v: float | int) -> int:
    """floor(v + 1/2) for the quantisers that build tables and weights (Python floats: exact ties)."""
    return math.floor(v + 0.5)


# ---------------------------------------------------------------------- layers
def _scale_vector(shifts: list[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([pow2(-d) for d in shifts], dtype=dtype, device=device)


def _rounding(shifts: list[int]) -> list[int]:
    """The integer added before a floor-shift by d to round half up (0 when nothing is shifted out)."""
    return [1 << (d - 1) if d > 0 else 0 for d in shifts]


def check_integer(name: str, t: torch.Tensor, limit: int) -> None:
    """Integer dtype and every value within +-limit (by min and max: ``abs`` of int64's minimum overflows)."""
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64):
        raise BoundError(f"{name}: integer tensor expected, found {getattr(t, 'dtype', type(t).__name__)}")
    if t.numel() and not -limit <= int(t.min()) <= int(t.max()) <= limit:
        raise BoundError(f"{name}: values beyond +-{limit}")


@dataclass
class _Fixed:
    """Integer weights ``w`` (each output channel stands for ``w_c * 2**-wexp_c``), integer bias ``b``
    in accumulator units, and the input and output formats and clamps."""

    w: torch.Tensor
    b: torch.Tensor  # int64, Cout
    wexp: list[int]
    frac_in: int
    frac_out: int
    in_bound: int
    out_bound: int

    def __post_init__(self) -> None:
        # the accumulator of channel c has frac_in + wexp_c fractional bits: shift it to frac_out
        self.shift = [self.frac_in + s - self.frac_out for s in self.wexp]
        self._dev: dict[torch.device, tuple] = {}

    def _bias(self) -> torch.Tensor:
        """The bias plus the offset that makes the floor-shift round half up."""
        return self.b.to(torch.int64) + torch.tensor(_rounding(self.shift), dtype=torch.int64)

    def _check_common(self, name: str, w_limit: int, carrier: int) -> None:
        """Shapes, integer tensors, magnitudes that keep every later sum free of int64 overflow."""
        if not all(isinstance(v, int) for v in (self.frac_in, self.frac_out, self.in_bound, self.out_bound)):
            raise BoundError(f"{name}: formats and bounds must be integers")
        if not all(isinstance(v, int) and -60 <= v <= 60 for v in self.wexp):
            raise BoundError(f"{name}: weight exponents must be integers in [-60, 60]")
        if not 0 <= self.in_bound <= carrier or not 0 <= self.out_bound <= carrier:
            raise BoundError(f"{name}: bounds {self.in_bound}/{self.out_bound} out of range")
        if not -60 <= self.frac_in <= 60 or not -60 <= self.frac_out <= 60:
            raise BoundError(f"{name}: formats {self.frac_in}/{self.frac_out} out of range")
        check_integer(f"{name}.w", self.w, w_limit)
        check_integer(f"{name}.b", self.b, F64_EXACT)
        if self.w.dim() < 2 or self.w.shape[0] != len(self.wexp) or tuple(self.b.shape) != (len(self.wexp),):
            raise BoundError(f"{name}: {len(self.wexp)} exponents for {tuple(self.w.shape)} weights")

    def _worst(self, l1: torch.Tensor, x: int, with_bias: bool = True) -> int:
        """max over channels of ``l1_c * x (+ |bias_c|)``, in Python integers (no overflow)."""
        bias = self._bias().tolist() if with_bias else [0] * len(l1)
        return max((int(v) * x + abs(int(b)) for v, b in zip(l1.tolist(), bias)), default=0)


@dataclass
class QConv(_Fixed):
    """Integer convolution from one fixed-point format to another.

    With input codes ``x`` (value ``x * 2**-frac_in``, ``|x| <= in_bound``),
    integer weights ``w`` standing for ``w_c * 2**-wexp_c`` and integer bias
    ``b`` in accumulator units (``2**-(frac_in + wexp_c)``)::

        y_c = act(clamp(floor((sum w_c * x + b_c) / 2**d_c + 1/2), +-out_bound))
        d_c = frac_in + wexp_c - frac_out

    One pass (``split == 0``): the float32 weights handed to the kernel are
    ``w * 2**-d`` (exact: a power of two only moves the exponent) with the
    rounding offset folded into the bias, so the kernel's output is already in
    output units; ``floor`` and ``clamp`` follow. Needs ``sum|w| * X <= 2**24``.

    Two passes (``split == k``): for layers that need more precision than one
    float32 pass can hold, the input is split exactly into ``hi = floor(x /
    2**k)`` and ``lo = x - hi * 2**k``, each convolved exactly in float32 with
    the integer weights, and ``hi_acc * 2**k + lo_acc + b`` is formed and
    rounded in float64. Needs ``sum|w| * max(|hi|, |lo|) <= 2**24``.

    ``act="leaky"`` applies ``max(y, floor(y * 41/4096))``, exact on float32
    codes below 2**18 (the output bound is checked).
    """

    split: int = 0
    act: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.padding = self.w.shape[-1] // 2

    def pass_bound(self) -> int:
        """Largest input magnitude one float32 pass sees."""
        if not self.split:
            return self.in_bound
        return max(-((-self.in_bound) >> self.split), (1 << self.split) - 1)

    def _l1(self) -> torch.Tensor:
        return self.w.to(torch.int64).abs().sum(dim=(1, 2, 3))

    def _split_bias(self) -> tuple[list[int], list[int]]:
        """The bias (with rounding) as ``hi * 2**k + lo``, ``0 <= lo < 2**k``."""
        k = self.split
        c = self._bias().tolist()
        return [v >> k for v in c], [v - ((v >> k) << k) for v in c]

    def fast_split(self) -> bool:
        """Whether the two-pass epilogue can stay in float32 (every channel drops at least k bits)."""
        if not self.split or min(self.shift) < self.split:
            return False
        k = self.split
        hi, lo = self._split_bias()
        x_hi = -((-self.in_bound) >> k)
        # hi pass plus the carried lo quotient (at most L1 + 1 in magnitude) must stay within 2**24
        for v, bh, bl in zip(self._l1().tolist(), hi, lo):
            if v * x_hi + abs(bh) + v + 1 > F32_EXACT or v * ((1 << k) - 1) + bl > F32_EXACT:
                return False
        return True

    def worst_case(self) -> int:
        """Largest magnitude any float32 partial sum can reach, in accumulator units."""
        if self.split:
            return self._worst(self._l1(), self.pass_bound(), with_bias=False)
        return self._worst(self._l1(), self.in_bound)

    def check(self, name: str) -> None:
        """This layer's own conditions, for inputs within ``in_bound`` (raises :class:`BoundError`)."""
        self._check_common(name, F32_EXACT, F32_EXACT)
        if self.w.dim() != 4 or self.w.shape[-1] != self.w.shape[-2] or self.w.shape[-1] % 2 == 0:
            raise BoundError(f"{name}: a square kernel of odd size expected, found {tuple(self.w.shape)}")
        if any(not -60 <= d <= 60 for d in self.shift) or not isinstance(self.split, int) or not 0 <= self.split <= 24:
            raise BoundError(f"{name}: shift outside [-60, 60]")
        if self.act not in ("none", "leaky"):
            raise BoundError(f"{name}: unknown activation {self.act!r}")
        worst = self.worst_case()
        if worst > F32_EXACT:
            raise BoundError(f"{name}: worst-case partial sum {worst} exceeds 2**24")
        if self.split and self._worst(self._l1(), self.in_bound) > F64_EXACT:
            raise BoundError(f"{name}: recombined sum exceeds 2**53")
        if self.act == "leaky" and self.out_bound * LEAKY_NUM > F32_EXACT:
            raise BoundError(f"{name}: LeakyReLU product exceeds 2**24")

    def _params(self, device: torch.device) -> tuple:
        if device not in self._dev:
            k = self.split
            if not k:
                scale = torch.tensor([pow2(-d) for d in self.shift], dtype=torch.float64)
                w = (self.w.double() * scale.view(-1, 1, 1, 1)).float()
                b = (self._bias().double() * scale).float()
                params: tuple = ("one", w, b)
            elif self.fast_split():
                # hi pass pre-scaled by 2**-(d-k); lo pass in integers, its quotient by 2**k carried over
                scale = torch.tensor([pow2(k - d) for d in self.shift], dtype=torch.float64)
                hi_b, lo_b = self._split_bias()
                w_hi = (self.w.double() * scale.view(-1, 1, 1, 1)).float()
                b_hi = (torch.tensor(hi_b, dtype=torch.float64) * scale).float()
                params = ("fast", w_hi, b_hi, self.w.float(), torch.tensor(lo_b, dtype=torch.float32),
                          scale.float().view(1, -1, 1, 1))
            else:
                scale = torch.tensor([pow2(-d) for d in self.shift], dtype=torch.float64)
                params = ("f64", self.w.float(), torch.zeros(self.w.shape[0]), self._bias().double().view(1, -1, 1, 1),
                          scale.view(1, -1, 1, 1))
            self._dev[device] = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in params)
        return self._dev[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Output codes for input codes ``x`` (two-pass layers reuse ``x``'s memory: pass a temporary)."""
        params = self._params(x.device)
        mode = params[0]
        if mode == "one":
            y = conv2d_exact(x, params[1], params[2], self.padding)
        else:
            k = self.split
            hi = (x * pow2(-k)).floor_()
            lo = x.add_(hi, alpha=-pow2(k))  # exact: x - hi * 2**k lies in [0, 2**k)
            if mode == "fast":
                _, w_hi, b_hi, w_lo, b_lo, scale = params
                y = conv2d_exact(hi, w_hi, b_hi, self.padding)
                q = conv2d_exact(lo, w_lo, b_lo, self.padding).mul_(pow2(-k)).floor_()
                y.addcmul_(q, scale)  # exact: hi part and carried quotient share the output's units
            else:
                _, w, zero, b, scale = params
                acc = conv2d_exact(hi, w, zero, self.padding).double().mul_(pow2(k))
                acc += conv2d_exact(lo, w, zero, self.padding)
                # rounded and clamped in float64, so the float32 result is an exact integer
                y = acc.add_(b).mul_(scale).floor_().clamp_(-self.out_bound, self.out_bound).float()
        y = y.floor_().clamp_(-self.out_bound, self.out_bound)
        if self.act == "leaky":
            y = torch.maximum(y, (y * (LEAKY_NUM * pow2(-LEAKY_SHIFT))).floor_(), out=y)
        return y

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The float weight and bias this layer stands for."""
        scale = _scale_vector(self.wexp, torch.device("cpu"), torch.float64)
        w = self.w.double() * scale.view(-1, 1, 1, 1)
        b = self.b.double() * scale * pow2(-self.frac_in)
        return w.float(), b.float()


@dataclass
class Lut:
    """Table lookup: code k in [-in_bound, in_bound] (format ``frac_in``) -> table[k + in_bound] (``frac_out``)."""

    table: torch.Tensor  # int32, 2 * in_bound + 1 entries
    in_bound: int
    frac_in: int = 0
    frac_out: int = 0

    def __post_init__(self) -> None:
        self._dev: dict[torch.device, torch.Tensor] = {}
        self.out_bound = max(-int(self.table.min()), int(self.table.max())) if self.table.numel() else 0

    def check(self, name: str) -> None:
        """The table covers exactly the declared inputs and holds float32-exact integers."""
        if self.table.numel() != 2 * self.in_bound + 1:
            raise BoundError(f"{name}: table of {self.table.numel()} entries for inputs within +-{self.in_bound}")
        check_integer(name, self.table, F32_EXACT)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._dev:
            self._dev[x.device] = self.table.float().to(x.device)
        idx = x.add_(self.in_bound).to(torch.int32).view(-1)  # consumes x (a temporary)
        return self._dev[x.device].index_select(0, idx).view(x.shape)


@dataclass
class QMix(_Fixed):
    """Integer 1x1 channel mixing in float64, same formats as :class:`QConv` (2**53 bound)."""

    def worst_case(self) -> int:
        return self._worst(self.w.to(torch.int64).abs().sum(dim=1), self.in_bound)

    def check(self, name: str) -> None:
        """This layer's own conditions, for inputs within ``in_bound`` (raises :class:`BoundError`)."""
        self._check_common(name, F64_EXACT, F64_EXACT)
        if self.w.dim() != 2:
            raise BoundError(f"{name}: a matrix expected, found {tuple(self.w.shape)}")
        if any(not 0 <= d <= 60 for d in self.shift):
            raise BoundError(f"{name}: shift outside [0, 60]")
        if self.worst_case() > F64_EXACT:
            raise BoundError(f"{name}: worst-case partial sum exceeds 2**53")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._dev:
            scale = _scale_vector(self.shift, x.device, torch.float64).view(1, -1, 1)
            b = self._bias().double().to(x.device).view(1, -1, 1)
            self._dev[x.device] = (self.w.double().to(x.device), b, scale)
        w, b, scale = self._dev[x.device]
        n, c, h, wd = x.shape
        y = torch.matmul(w, x.reshape(n, c, h * wd))  # float64: no precision setting applies
        y = y.add_(b).mul_(scale).floor_().clamp_(-self.out_bound, self.out_bound)
        return y.view(n, -1, h, wd)

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = _scale_vector(self.wexp, torch.device("cpu"), torch.float64)
        return self.w.double() * scale.view(-1, 1), self.b.double() * scale * pow2(-self.frac_in)


Layer = QConv | QMix | Lut


def build_layer(name: str, s: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Layer:
    """One layer from its entry in a model file's spec (formats, bounds) and its tensors; checked."""
    kind = s["kind"]
    layer: Layer
    if kind == "conv":
        layer = QConv(tensors[f"{name}.w"], tensors[f"{name}.b"], list(s["wexp"]), s["frac_in"], s["frac_out"],
                      s["in_bound"], s["out_bound"], s.get("split", 0), s.get("act", "none"))
    elif kind == "mix":
        layer = QMix(tensors[f"{name}.w"], tensors[f"{name}.b"], list(s["wexp"]), s["frac_in"], s["frac_out"],
                     s["in_bound"], s["out_bound"])
    elif kind == "lut":
        canon = tensors[f"canon.{s['fn']}"]
        check_integer(f"canon.{s['fn']}", canon, CANON_LIMIT)
        table = derive_lut(s["fn"], canon.numpy().astype(np.int64), s["in_bound"], s["frac_in"], s["frac_out"],
                           s["out_bound"])
        layer = Lut(torch.from_numpy(table).to(torch.int32), s["in_bound"], s["frac_in"], s["frac_out"])
    else:
        raise BoundError(f"{name}: unknown layer kind {kind!r}")
    layer.check(name)
    return layer


def rescale(x: torch.Tensor, shift: int, bound: int) -> torch.Tensor:
    """Codes to another format: ``floor(x / 2**shift + 1/2)`` (shift > 0) or ``x * 2**-shift``, clamped.

    Exact when ``|x| + 2**(shift-1)`` fits the carrier (a left shift only
    moves the exponent); :mod:`msinn.portable.proof` checks every call.
    """
    if not -200 <= shift <= 52:
        raise BoundError(f"rescale by 2**{-shift} is outside the exact range")
    if shift > 0:
        y = (x + (1 << (shift - 1))).mul_(pow2(-shift)).floor_()
    elif shift < 0:
        y = x * pow2(-shift)
    else:
        y = x.clone()
    return y.clamp_(-bound, bound)
