"""Bjontegaard delta rate: two rate-distortion curves summarised as one number.

Log-rate is interpolated as a function of PSNR with PCHIP (the
shape-preserving interpolant of the current Bjontegaard recommendation,
scipy's :class:`~scipy.interpolate.PchipInterpolator`) and integrated exactly
over the PSNR interval both curves cover.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.interpolate import PchipInterpolator


def _rd_curve(rate: Sequence[float], psnr: Sequence[float]) -> tuple[np.ndarray, np.ndarray] | str:
    """(psnr, log rate) sorted by PSNR with usable points only, or why there is no curve."""
    r = np.asarray(rate, dtype=np.float64)
    p = np.asarray(psnr, dtype=np.float64)
    if r.shape != p.shape or r.ndim != 1:
        return "rate and PSNR lists differ in length"
    ok = np.isfinite(r) & np.isfinite(p) & (r > 0)
    r, p = r[ok], p[ok]
    order = np.argsort(p, kind="stable")
    p, lr = p[order], np.log(r[order])
    uniq, inverse = np.unique(p, return_inverse=True)  # equal PSNRs: one knot at their mean log-rate
    lr = np.bincount(inverse, weights=lr) / np.bincount(inverse)
    if len(uniq) < 2:
        return "fewer than 2 points with finite PSNR and positive rate"
    return uniq, lr


def bd_rate_with_reason(
    rate_a: Sequence[float], psnr_a: Sequence[float], rate_b: Sequence[float], psnr_b: Sequence[float]
) -> tuple[float | None, str | None]:
    """:func:`bd_rate` and, when it is None, the reason (for tables and logs)."""
    ca, cb = _rd_curve(rate_a, psnr_a), _rd_curve(rate_b, psnr_b)
    if isinstance(ca, str):
        return None, f"anchor curve: {ca}"
    if isinstance(cb, str):
        return None, f"test curve: {cb}"
    (pa, la), (pb, lb) = ca, cb
    lo, hi = max(pa[0], pb[0]), min(pa[-1], pb[-1])
    if not hi > lo:
        return None, (f"PSNR ranges do not overlap ({pa[0]:.2f}-{pa[-1]:.2f} dB vs {pb[0]:.2f}-{pb[-1]:.2f} dB)")
    area_b = float(PchipInterpolator(pb, lb).integrate(lo, hi))
    area_a = float(PchipInterpolator(pa, la).integrate(lo, hi))
    return float((math.exp((area_b - area_a) / (hi - lo)) - 1) * 100), None


def bd_rate(
    rate_a: Sequence[float], psnr_a: Sequence[float], rate_b: Sequence[float], psnr_b: Sequence[float]
) -> float | None:
    """Bjontegaard delta rate of curve B against anchor curve A, in percent.

    The average bitrate change B needs for the same quality as A, over the
    PSNR interval both curves cover. Negative means B saves bits. Rates may
    be in any unit (bpp, bytes) as long as both curves use the same one.
    Returns None when either curve has fewer than two usable points or the
    PSNR ranges do not overlap.
    """
    return bd_rate_with_reason(rate_a, psnr_a, rate_b, psnr_b)[0]


def rate_at(rate: Sequence[float], psnr: Sequence[float], target_psnr: float) -> float | None:
    """The rate a curve needs for ``target_psnr`` (log-rate PCHIP over PSNR, as BD-rate interpolates), or None
    when the target lies outside the PSNRs the curve measured."""
    c = _rd_curve(rate, psnr)
    if isinstance(c, str) or not c[0][0] <= target_psnr <= c[0][-1]:
        return None
    return float(math.exp(PchipInterpolator(*c)(target_psnr)))


def rate_reaching(rate: Sequence[float], psnr: Sequence[float], floor: float) -> float | None:
    """The rate a codec needs to reach ``floor`` dB, as rate control would code it: interpolated (``rate_at``)
    inside the measured PSNRs; below them, the smallest measured file that already reaches the floor (a
    file that exists, so an upper bound on what a finer search would find); None above them (out of reach)."""
    pts = [(r, p) for r, p in zip(rate, psnr) if r is not None and p is not None and math.isfinite(p)]
    if not pts or floor > max(p for _, p in pts):
        return None
    if floor < min(p for _, p in pts):
        return float(min(r for r, p in pts if p >= floor))
    inside = rate_at([r for r, _ in pts], [p for _, p in pts], floor)
    return inside if inside is not None else float(min(r for r, p in pts if p >= floor))

