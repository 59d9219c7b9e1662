"""Nonlinearities as integer tables.

Transcendental functions (erf, tanh, exp) differ by an ulp between math
libraries, so the decoder never evaluates them. A converted model ships one
*canonical table* per function: ``f`` sampled on ``[-R, R]`` every ``2**-A``,
as integers in units of ``2**-C``. Each layer's lookup table (its input codes
to its output codes) is derived from the canonical one by integer arithmetic
alone (linear interpolation with floor, a rounding shift, a clamp), so it is
the same on every machine; beyond ``[-R, R]`` each function has a fixed tail.

The exponential of the fractional rate parameter's gain interpolation works
the same way (:func:`exp2_fixed`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

CANON_FRAC_IN = 10  # A: canonical sampling step 2**-10
CANON_RANGE = 8  # R: sampled domain [-8, 8]
CANON_FRAC_OUT = 24  # C: canonical values in units of 2**-24
EXP2_FRAC = 10  # 2**(i / 2**10) sampled for i in [0, 2**10]
EXP2_ONE = 30  # its values in units of 2**-30
LOG_FRAC = 16  # log2 gains and the rate parameter's fraction: units of 2**-16
CANON_LIMIT = 1 << 31  # canonical values stay below this, so interpolation products fit int64


def _gelu(x: float) -> float:
    return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))


def _inv_coupling_scale(x: float) -> float:
    # the affine coupling multiplies by exp(2 sigmoid(s) - 1) going forward; decoding divides
    return math.exp(1.0 - 2.0 / (1.0 + math.exp(-x)))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


FUNCTIONS: dict[str, Callable[[float], float]] = {
    "gelu": _gelu,
    "tanh": math.tanh,
    "inv_coupling_scale": _inv_coupling_scale,
    "sigmoid": _sigmoid,
}
# Outside [-R, R]: "identity" continues as f(x) = x (GELU), "zero" as 0, "edge" repeats the end value.
TAILS: dict[str, tuple[str, str]] = {
    "gelu": ("zero", "identity"),
    "tanh": ("edge", "edge"),
    "inv_coupling_scale": ("edge", "edge"),
    "sigmoid": ("edge", "edge"),
}


def canonical_table(fn: str) -> np.ndarray:
    """round(f(j / 2**A) * 2**C) for j in [-R 2**A, R 2**A] (computed at conversion, then shipped)."""
    f = FUNCTIONS[fn]
    n = CANON_RANGE << CANON_FRAC_IN
    scale = float(1 << CANON_FRAC_OUT)
    return np.array([math.floor(f(j / (1 << CANON_FRAC_IN)) * scale + 0.5) for j in range(-n, n + 1)], dtype=np.int64)


def exp2_table() -> np.ndarray:
    """round(2**(i / 2**EXP2_FRAC) * 2**EXP2_ONE) for i in [0, 2**EXP2_FRAC]."""
    n = 1 << EXP2_FRAC
    return np.array([math.floor(2.0 ** (i / n) * (1 << EXP2_ONE) + 0.5) for i in range(n + 1)], dtype=np.int64)


def _round_shift(v: np.ndarray, s: int) -> np.ndarray:
    """floor(v / 2**s + 1/2) for s > 0, v * 2**-s otherwise (int64, exact)."""
    if s > 0:
        return (v + (1 << (s - 1))) >> s
    return v << (-s)


def derive_lut(
    fn: str, canon: np.ndarray, in_bound: int, frac_in: int, frac_out: int, out_bound: int
) -> np.ndarray:
    """Output codes (units 2**-frac_out) for every input code k in [-in_bound, in_bound] (units 2**-frac_in)."""
    if in_bound > 1 << 20 or not -40 <= frac_in <= 40 or not -40 <= frac_out <= 40:
        raise ValueError(f"lookup table for {fn}: formats out of range")
    n = CANON_RANGE << CANON_FRAC_IN
    if canon.shape != (2 * n + 1,):
        raise ValueError(f"canonical table for {fn} has {canon.shape} entries")
    k = np.arange(-in_bound, in_bound + 1, dtype=np.int64)
    step = frac_in - CANON_FRAC_IN  # input codes per canonical sample (log2), may be negative
    if step > 0:
        j, rem = k >> step, k & ((1 << step) - 1)
    else:
        j, rem = k << (-step), np.zeros_like(k)
    inside = (j >= -n) & (j < n)
    jj = np.clip(j, -n, n - 1) + n
    lo, hi = canon[jj], canon[jj + 1]
    v = lo + (((hi - lo) * rem) >> max(step, 0))  # canonical units 2**-C
    low_tail, high_tail = TAILS[fn]
    below, above = j < -n, j >= n
    v = np.where(below, _tail(low_tail, canon[0], k, frac_in), v)
    v = np.where(above & ~inside, _tail(high_tail, canon[-1], k, frac_in), v)
    out = _round_shift(v, CANON_FRAC_OUT - frac_out)
    return np.clip(out, -out_bound, out_bound)


def _tail(kind: str, edge: np.int64, k: np.ndarray, frac_in: int) -> np.ndarray:
    if kind == "zero":
        return np.zeros_like(k)
    if kind == "edge":
        return np.full_like(k, edge)
    return _round_shift(k, frac_in - CANON_FRAC_OUT)  # identity: k * 2**-frac_in in units of 2**-C


def exp2_fixed(log2_value: np.ndarray, table: np.ndarray, frac_out: int) -> np.ndarray:
    """round(2**(L / 2**LOG_FRAC) * 2**frac_out) for integer L, by table and shifts only."""
    L = np.asarray(log2_value, dtype=np.int64)
    whole, frac = L >> LOG_FRAC, L & ((1 << LOG_FRAC) - 1)
    sub = LOG_FRAC - EXP2_FRAC
    i, rem = frac >> sub, frac & ((1 << sub) - 1)
    v = table[i] + (((table[i + 1] - table[i]) * rem) >> sub)  # 2**(frac/2**16) in units of 2**-30
    out = np.empty_like(v)
    for idx in np.ndindex(v.shape):  # per-element shifts differ in sign; a few hundred values
        s = EXP2_ONE - frac_out - int(whole[idx])
        out[idx] = (int(v[idx]) + (1 << (s - 1))) >> s if s > 0 else int(v[idx]) << (-s)
    return out
