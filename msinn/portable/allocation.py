"""Bit allocation for one integer convolution: calibration statistics, formats, quantised weights.

A float32 convolution is exact when ``sum|w| * X + |bias| <= 2**24`` (``X``
the input clamp), so activation bits and weight bits trade against each
other. :func:`allocate` picks, per layer, the split minimising the predicted
output noise (input rounding through the weights, plus weight rounding times
the input's power); :func:`quantise` then gives each output channel the
finest weight exponent that keeps its bound. Used by
:mod:`msinn.portable.convert` only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..model import MSINN
from .exact import pow2
from .formats import F32_EXACT

HEADROOM = 2.0  # inputs cover twice the calibrated range
MIN_BITS, MAX_BITS = 6, 20
SPLIT_TARGET_DB = 52.0  # a layer allowed two passes takes them when one pass predicts less than this


@dataclass
class Stats:
    """What calibration saw of one layer: its input's largest magnitude and mean square, its largest outputs."""

    in_max: float = 0.0
    in_sq: float = 0.0
    in_n: int = 0
    out_max: torch.Tensor | None = None

    @property
    def in_ms(self) -> float:
        return self.in_sq / max(self.in_n, 1)


@dataclass
class ConvAllocation:
    """One integer convolution being allocated: its float weights, its statistics, the formats chosen."""

    name: str
    weight: torch.Tensor  # float64, masked if masked
    bias: torch.Tensor  # float64
    stats: Stats
    bits: int = 0
    e_in: int = 0
    split: int = 0  # two float32 passes over hi/lo halves of the input (0: one pass)
    max_bits: int = 24
    act: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def frac_in(self) -> int:
        return self.bits - self.e_in

    @property
    def in_bound(self) -> int:
        return (1 << self.bits) - 1

    @property
    def pass_bound(self) -> int:
        """The largest input magnitude one float32 pass sees."""
        return (1 << (self.bits - self.split)) if self.split else self.in_bound


def compact(t: torch.Tensor) -> torch.Tensor:
    """Integers in the narrowest of int16/int32/int64 that holds them (the file stays small)."""
    top = int(t.abs().max()) if t.numel() else 0
    for dtype in (torch.int16, torch.int32):
        if top <= torch.iinfo(dtype).max:
            return t.to(dtype)
    return t.to(torch.int64)


def log2_ceil(v: float) -> int:
    """ceil(log2(v)), 0 for v <= 0."""
    return 0 if v <= 0 else math.ceil(math.log2(v))


# ---------------------------------------------------------------------- calibration
def calibrate(
    model: MSINN, images: Iterable[torch.Tensor], qps: Sequence[float] | None = None
) -> dict[nn.Module, Stats]:
    """Statistics of every convolution's input and output on the decoder path."""
    model.eval()
    stats: dict[nn.Module, Stats] = {}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]

    def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        st = stats.setdefault(mod, Stats())
        x = inp[0].detach().double()
        st.in_max = max(st.in_max, float(x.abs().max()))
        st.in_sq += float((x * x).sum())
        st.in_n += x.numel()
        o = out.detach().abs()
        per = o.amax(dim=tuple(d for d in range(o.dim()) if d != 1)).double() if o.dim() > 1 else o.double()
        st.out_max = per if st.out_max is None else torch.maximum(st.out_max, per)

    qps = list(range(model.anchor_num)) if qps is None else list(qps)
    with torch.inference_mode():
        for x in images:
            latents = model.analyze(x)
            handles = [m.register_forward_hook(hook) for m in convs]
            try:
                for qp in qps:
                    model.forward_latents(latents, qp)
            finally:
                for h in handles:
                    h.remove()
    return stats


# ---------------------------------------------------------------------- bit allocation
def _weight_exponents(
    w: torch.Tensor, b: torch.Tensor | None, frac_in: int, x_bound: int, limit: int
) -> list[int]:
    """Per output channel, the largest exponent s with sum|round(w 2**s)| X + |round(b 2**(s+frac_in))| <= limit.

    ``b=None``: the bias is added outside the float32 passes (two-pass layers).
    """
    out = []
    l1 = w.abs().sum(dim=1)
    for c in range(w.shape[0]):
        if float(l1[c]) > 0:
            s = math.floor(math.log2(limit / (float(l1[c]) * x_bound + 1e-300))) + 1
        else:
            s = 40
        s = min(s, 40)
        while s > -40:
            wq = torch.round(w[c] * pow2(s))
            bq = round(float(b[c]) * pow2(s + frac_in)) if b is not None else 0
            if float(wq.abs().sum()) * x_bound + abs(bq) <= limit:
                break
            s -= 1
        out.append(s)
    return out


def allocate(alloc: ConvAllocation, limit: int = F32_EXACT) -> None:
    """Choose the input's bits and range for ``alloc`` (minimum predicted output noise).

    A layer that may take two passes (``alloc.split`` set) takes them only when
    one pass cannot reach ``SPLIT_TARGET_DB``: small kernels often can.
    """
    w = alloc.weight.reshape(alloc.weight.shape[0], -1)
    st = alloc.stats
    e_in = log2_ceil(st.in_max * HEADROOM)
    signal = float((w * w).sum()) * max(st.in_ms, 1e-30)

    def best_of(candidates: list[tuple[int, int]]) -> tuple[float, int, int]:
        best = None
        for bits, split in candidates:
            frac_in = bits - e_in
            x_bound = (1 << split) if split else (1 << bits) - 1
            # one pass: keep a quarter of the budget for bias and rounding when predicting
            budget = limit if split else limit * 3 // 4
            s = _weight_exponents(w, None if split else alloc.bias, frac_in, x_bound, budget)
            scale = torch.tensor([pow2(v) for v in s], dtype=torch.float64).view(-1, 1)
            err = w - torch.round(w * scale) / scale
            act = pow2(-2 * frac_in) / 12 * float((w * w).sum())
            wt = float((err * err).sum()) * st.in_ms
            noise = (act + wt) / max(signal, 1e-30)
            if best is None or noise < best[0] * (1 - 1e-9):
                best = (noise, bits, split)
        assert best is not None
        return best

    best = best_of([(b, 0) for b in range(MIN_BITS, min(MAX_BITS, alloc.max_bits) + 1)])
    if alloc.split and -10 * math.log10(max(best[0], 1e-30)) < SPLIT_TARGET_DB:
        two = best_of([(2 * h, h) for h in range(MIN_BITS, 13) if 2 * h <= alloc.max_bits])
        if two[0] < best[0]:
            best = two
    alloc.bits, alloc.e_in, alloc.split = best[1], e_in, best[2]
    alloc.extra["predicted_snr_db"] = -10 * math.log10(max(best[0], 1e-30))


def quantise(
    alloc: ConvAllocation, frac_out: int | None, out_bound: int, limit: int = F32_EXACT
) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
    """Integer weights, bias, exponents and the output format (``frac_out=None``: keep every accumulator bit)."""
    w = alloc.weight.reshape(alloc.weight.shape[0], -1)
    x_bound, frac_in = alloc.pass_bound, alloc.frac_in
    s = _weight_exponents(w, None if alloc.split else alloc.bias, frac_in, x_bound, limit)
    if frac_out is None:  # the accumulator reaches 2**24 per pass: 2**(24 + split) over both
        frac_out = min(frac_in + v for v in s) - alloc.split
    k = alloc.split
    for c in range(len(s)):
        while True:
            wq = torch.round(w[c] * pow2(s[c]))
            l1 = int(wq.abs().sum())
            bq = round(float(alloc.bias[c]) * pow2(s[c] + frac_in))
            d = frac_in + s[c] - frac_out
            r = 1 << (d - 1) if d > 0 else 0
            if not k and l1 * x_bound + abs(bq + r) <= limit:
                break
            # two passes: the hi pass plus the carried quotient of the lo pass, and the lo pass with its bias share
            if k and l1 * x_bound + abs((bq + r) >> k) + l1 + 1 <= limit and l1 * ((1 << k) - 1) + (1 << k) <= limit:
                break
            s[c] -= 1
    scale = torch.tensor([pow2(v) for v in s], dtype=torch.float64)
    wq = torch.round(alloc.weight * scale.view(-1, *([1] * (alloc.weight.dim() - 1))))
    bq = torch.round(alloc.bias * scale * pow2(frac_in))
    return wq, bq.to(torch.int64), s, frac_out
