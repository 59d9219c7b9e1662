"""Exact integer arithmetic on stock torch kernels.

Every tensor on the portable decoder path holds integers ("codes"); the value
a code stands for is ``code * 2**-frac`` with a per-tensor ``frac`` fixed when
the model was converted. Two carriers hold codes:

- float32, for the convolutions that dominate the cost: an IEEE float32 sum of
  products is exact when every partial sum is an integer of magnitude at most
  2**24, *whatever order the kernel adds in* (blocked, vectorised, split over
  threads, fused multiply-add). Each layer's input is clamped to a bound ``X``
  and its integer weights satisfy ``sum|w| * X + |bias| <= 2**24``, so this
  holds for every possible input;
- float64, for the main signal path and the channel mixing of the invertible
  transform: the same argument with 2**53.

Scaling by a power of two, ``floor``, ``clamp``, comparisons, concatenation and
table lookups are exact too, so the result is a function of the integers alone:
the same on every CPU, GPU, thread count and library version. What would break
this is a kernel that does not compute a plain sum of products: Winograd or FFT
convolutions, TF32 or bf16 "fast math". The kernels used here never choose
those (oneDNN's direct convolution on CPU, cuBLAS GEMM with cuDNN off on CUDA,
TF32/bf16 disabled for the duration of each call), and :func:`kernels_are_exact`
proves it on each device before first use by checking results at the bound
against an exact float64 computation; a device that fails is served by the
float64 path, which is exact by construction and slower.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

F32_EXACT = 1 << 24  # every integer of magnitude <= 2**24 is a float32
F64_EXACT = 1 << 53


class BoundError(ValueError):
    """A layer's worst case does not fit its carrier: exactness cannot be proved."""


def pow2(e: int) -> float:
    """2**e as a float, exactly (ldexp never rounds a power of two in range)."""
    return math.ldexp(1.0, int(e))


def round_half_up(v: float | int) -> int:
    """floor(v + 1/2) for the quantisers that build tables and weights (Python floats: exact ties)."""
    return math.floor(v + 0.5)


# ---------------------------------------------------------------------- numerics guard
_FLAG_LOCK = threading.RLock()


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """Plain IEEE float32 in every backend for the duration: no TF32, no bf16, no NNPACK/cuDNN convs.

    The settings are process-global in torch, so they are set and restored
    under a lock; callers on other threads that need other settings are not
    disturbed for longer than one call.
    """
    with _FLAG_LOCK:
        objs = _precision_objects()
        saved = [(obj, obj.fp32_precision) for obj in objs]
        legacy = None
        if objs:
            for obj in objs:
                obj.fp32_precision = "ieee"
        else:  # torch before the fp32_precision API
            legacy = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        # cuDNN may pick Winograd/FFT, NNPACK does: both off (raw toggles; the flags() helpers
        # read legacy TF32 state and refuse to mix with the fp32_precision API)
        cudnn_on, nnpack_on = torch.backends.cudnn.enabled, torch._C._get_nnpack_enabled()
        torch.backends.cudnn.enabled = False
        torch._C._set_nnpack_enabled(False)
        try:
            yield
        finally:
            torch.backends.cudnn.enabled = cudnn_on
            torch._C._set_nnpack_enabled(nnpack_on)
            for obj, value in saved:
                obj.fp32_precision = value
            if legacy is not None:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = legacy


def _precision_objects() -> list:
    objs = []
    for path in ("mkldnn.conv", "mkldnn.matmul", "cuda.matmul", "cudnn.conv", "cudnn.rnn"):
        obj = torch.backends
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None and hasattr(obj, "fp32_precision"):
            objs.append(obj)
    return objs


# ---------------------------------------------------------------------- kernels
def _conv_f64(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, padding: int) -> torch.Tensor:
    """Convolution as im2col + float64 GEMM: exact whenever the float32 bound holds (and far beyond)."""
    n, _, h, wd = x.shape
    cout, _, kh, kw = w.shape
    cols = F.unfold(x.double(), (kh, kw), padding=padding) if kh > 1 or kw > 1 else x.double().reshape(n, -1, h * wd)
    out = torch.matmul(w.double().reshape(cout, -1), cols) + b.double().view(1, cout, 1)
    return out.view(n, cout, h, wd)


_EXACT: dict[tuple[str, int | None], bool] = {}


def kernels_are_exact(device: torch.device) -> bool:
    """Check once per device that float32 convolutions here are exact sums of products.

    Inputs sit at the clamp bounds and the weights' L1 norms at the 2**24
    budget, where a Winograd/FFT transform, TF32 or bf16 would round and show
    up as a mismatch against the exact float64 result.
    """
    key = (device.type, device.index)
    if key not in _EXACT:
        g = torch.Generator().manual_seed(20261125)
        ok = True
        for cin, cout, k, hw in ((48, 48, 3, 37), (64, 32, 3, 19), (12, 96, 1, 23), (96, 5, 3, 8)):
            x_bound = 2047
            x = torch.randint(-x_bound, x_bound + 1, (1, cin, hw, hw + 3), generator=g).float()
            x[..., ::5, ::3] = float(x_bound)
            budget = (F32_EXACT - 4096) // x_bound
            w = torch.randint(-300, 301, (cout, cin, k, k), generator=g).double()
            l1 = w.abs().sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)
            w = torch.floor(w * budget / l1).float()
            b = torch.randint(-4096, 4097, (cout,), generator=g).float()
            expect = _conv_f64(x, w, b, k // 2)
            with ieee_fp32():
                got = _conv_fast(x.to(device), w.to(device), b.to(device), k // 2).double().cpu()
            ok = ok and bool(torch.equal(got, expect))
        _EXACT[key] = ok
    return _EXACT[key]


def _conv_fast(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, padding: int) -> torch.Tensor:
    """Direct convolution, or a GEMM for 1x1 kernels (several times faster for few channels)."""
    if w.shape[-1] == 1 and w.shape[-2] == 1 and x.shape[0] == 1:
        n, c, h, wd = x.shape
        y = torch.addmm(b.view(-1, 1), w.view(w.shape[0], c), x.reshape(c, h * wd))
        return y.view(1, -1, h, wd)
    return F.conv2d(x, w, b, padding=padding)


def conv2d_exact(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, padding: int) -> torch.Tensor:
    """float32 convolution of codes within the proved bound; exact on every device."""
    if not kernels_are_exact(x.device):
        return _conv_f64(x, w, b, padding).float()
    with ieee_fp32():
        return _conv_fast(x, w, b, padding)


# ---------------------------------------------------------------------- layers
def _scale_vector(shifts: list[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([pow2(-d) for d in shifts], dtype=dtype, device=device)


def _rounding(shifts: list[int]) -> list[int]:
    """The integer added before a floor-shift by d to round half up (0 when nothing is shifted out)."""
    return [1 << (d - 1) if d > 0 else 0 for d in shifts]


LEAKY_NUM, LEAKY_SHIFT = 41, 12  # LeakyReLU slope 41/4096 = 0.0100098 (CompressAI's 0.01)


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

    def _check_shape(self, name: str) -> None:
        if self.w.shape[0] != len(self.wexp) or self.b.shape != (len(self.wexp),):
            raise BoundError(f"{name}: {len(self.wexp)} exponents for {self.w.shape[0]} channels")


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
        return self.w.abs().to(torch.int64).sum(dim=(1, 2, 3))

    def _split_bias(self) -> tuple[list[int], list[int]]:
        """The bias (with rounding) as ``hi * 2**k + lo``, ``0 <= lo < 2**k``."""
        k = self.split
        c = self._bias().tolist()
        return [v >> k for v in c], [v - ((v >> k) << k) for v in c]

    def fast_split(self) -> bool:
        """Whether the two-pass epilogue can stay in float32 (every channel drops at least k bits)."""
        if not self.split or min(self.shift) < self.split:
            return False
        l1 = self._l1()
        hi, lo = self._split_bias()
        hi_t, lo_t = torch.tensor(hi, dtype=torch.int64), torch.tensor(lo, dtype=torch.int64)
        x_hi = -((-self.in_bound) >> self.split)
        # hi pass plus the carried lo quotient (at most L1 + 1 in magnitude) must stay within 2**24
        hi_ok = bool(((l1 * x_hi + hi_t.abs() + l1 + 1) <= F32_EXACT).all())
        lo_ok = bool(((l1 * ((1 << self.split) - 1) + lo_t) <= F32_EXACT).all())
        return hi_ok and lo_ok

    def worst_case(self) -> int:
        """Largest magnitude any float32 partial sum can reach, in accumulator units."""
        l1 = self._l1()
        if self.split:
            return int((l1 * self.pass_bound()).max())
        return int((l1 * self.in_bound + self._bias().abs()).max())

    def check(self, name: str) -> None:
        if not 0 <= self.in_bound <= F32_EXACT or not 0 <= self.out_bound <= F32_EXACT:
            raise BoundError(f"{name}: bounds {self.in_bound}/{self.out_bound} out of range")
        self._check_shape(name)
        if any(not -60 <= d <= 60 for d in self.shift) or not 0 <= self.split <= 24:
            raise BoundError(f"{name}: shift outside [-60, 60]")
        if self.act not in ("none", "leaky"):
            raise BoundError(f"{name}: unknown activation {self.act!r}")
        worst = self.worst_case()
        if worst > F32_EXACT:
            raise BoundError(f"{name}: worst-case partial sum {worst} exceeds 2**24")
        if self.split and int((self._l1() * self.in_bound + self._bias().abs()).max()) > F64_EXACT:
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
    """Table lookup: code k in [-in_bound, in_bound] -> table[k + in_bound]."""

    table: torch.Tensor  # int32, 2 * in_bound + 1 entries
    in_bound: int

    def __post_init__(self) -> None:
        self._dev: dict[torch.device, torch.Tensor] = {}

    @property
    def out_bound(self) -> int:
        return int(self.table.abs().max())

    def check(self, name: str) -> None:
        if self.table.numel() != 2 * self.in_bound + 1:
            raise BoundError(f"{name}: table of {self.table.numel()} entries for inputs within +-{self.in_bound}")
        if self.out_bound > F32_EXACT:
            raise BoundError(f"{name}: table values exceed 2**24")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._dev:
            self._dev[x.device] = self.table.float().to(x.device)
        idx = x.add_(self.in_bound).to(torch.int32).view(-1)  # consumes x (a temporary)
        return self._dev[x.device].index_select(0, idx).view(x.shape)


@dataclass
class QMix(_Fixed):
    """Integer 1x1 channel mixing in float64, same formats as :class:`QConv` (2**53 bound)."""

    def worst_case(self) -> int:
        l1 = self.w.abs().to(torch.int64).sum(dim=1)
        return int((l1 * self.in_bound + self._bias().abs()).max())

    def check(self, name: str) -> None:
        self._check_shape(name)
        if any(not 0 <= d <= 60 for d in self.shift):
            raise BoundError(f"{name}: shift outside [0, 60]")
        if self.worst_case() > F64_EXACT or self.out_bound > F64_EXACT:
            raise BoundError(f"{name}: worst-case partial sum exceeds 2**53")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._dev:
            scale = _scale_vector(self.shift, x.device, torch.float64).view(1, -1, 1)
            b = self._bias().double().to(x.device).view(1, -1, 1)
            self._dev[x.device] = (self.w.double().to(x.device), b, scale)
        w, b, scale = self._dev[x.device]
        n, c, h, wd = x.shape
        with ieee_fp32():
            y = torch.matmul(w, x.reshape(n, c, h * wd))
        y = y.add_(b).mul_(scale).floor_().clamp_(-self.out_bound, self.out_bound)
        return y.view(n, -1, h, wd)

    def dequantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = _scale_vector(self.wexp, torch.device("cpu"), torch.float64)
        return self.w.double() * scale.view(-1, 1), self.b.double() * scale * pow2(-self.frac_in)


def rescale(x: torch.Tensor, shift: int, bound: int) -> torch.Tensor:
    """Codes to another format: ``floor(x / 2**shift + 1/2)`` (shift > 0) or ``x * 2**-shift``, clamped.

    Exact when ``|x| + 2**(shift-1)`` (or ``|x| * 2**-shift``) fits the carrier;
    the callers' bounds are proved by the model's ``check_bounds``. A left
    shift (``shift <= 0``) only moves the exponent, so it is always exact.
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
