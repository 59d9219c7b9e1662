"""Choosing the rate parameter that meets a size cap or a quality floor.

The measured quantity g(qp) (log of the coded size, or decoded PSNR) rises
with qp. Real measurements cost a full pass of the context models, so the
search leans on cheap estimates: the model's rate estimate (or PSNR) on a
small crop of the image, at a few anchors, gives the shape of g. One real
encode calibrates that shape to the whole image, the next lands in the
window, and a secant step between real measurements corrects the rare miss.

* caps (``bpp``, ``bytes``): the largest quality whose real size is within
  the cap, aiming 1% under it (accepted window 0.98..1.0 x cap);
* floors (``psnr``): the smallest size whose decoded PSNR reaches the target,
  aiming 0.04 dB over it (accepted window target..target + 0.1 dB);
* ``qp``: fixed.

A target outside the model's range returns the nearest end, flagged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

TARGET_KINDS = ("bpp", "bytes", "psnr", "qp", "lossless")  # lossless: msinn.lossless, the exact file
QP_STEP = 1 / 256  # chosen qps are multiples of this: exact in binary, short in headers and manifests
MAX_MEASURES = 8


@dataclass(frozen=True)
class Target:
    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ValueError(f"target kind must be one of {TARGET_KINDS}, got {self.kind!r}")
        if not isinstance(self.value, int | float) or not math.isfinite(self.value) or self.value < 0:
            raise ValueError(f"{self.kind} target must be a finite non-negative number, got {self.value!r}")
        if self.kind in ("bpp", "bytes", "psnr") and self.value <= 0:
            raise ValueError(f"{self.kind} target must be positive")

    @property
    def is_cap(self) -> bool:
        return self.kind in ("bpp", "bytes")

    def cap_bytes(self, pixels: int) -> float:
        """The file-size limit of a cap target for an image of ``pixels`` pixels."""
        return self.value if self.kind == "bytes" else self.value * pixels / 8


def snap_qp(q: float, top: int) -> int | float:
    q = min(max(q, 0.0), float(top))
    s = round(q / QP_STEP) * QP_STEP
    return int(s) if float(s).is_integer() else s


@dataclass
class Measurement:
    qp: int | float
    g: float  # log(bytes) for caps, PSNR for floors
    payload: Any


@dataclass
class SearchResult:
    qp: int | float
    payload: Any
    in_range: bool
    note: str
    estimates: int
    measures: int


class RateSearch:
    """Finds qp for a monotone measured quantity with an estimate of its shape.

    ``estimate(q)`` is cheap (crop probe) and ``measure(q)`` real; both return
    g (log-bytes for caps, PSNR for floors). ``lo``/``hi`` bound the accepted
    window of g, ``aim`` lies inside it, and ``cap`` says which side is hard.
    """

    def __init__(
        self,
        anchor_num: int,
        estimate: Callable[[float], float],
        measure: Callable[[int | float], tuple[float, Any]],
        lo: float,
        hi: float,
        aim: float,
        cap: bool,
    ):
        self.top = anchor_num - 1
        self._estimate_fn = estimate
        self._measure_fn = measure
        self.lo, self.hi, self.aim, self.cap = lo, hi, aim, cap
        self.est: dict[float, float] = {}
        self.meas: dict[float, Measurement] = {}

    # -- helpers
    def estimate(self, q: float) -> float:
        if q not in self.est:
            self.est[q] = self._estimate_fn(q)
        return self.est[q]

    def measure(self, q: int | float) -> Measurement:
        if float(q) not in self.meas:
            g, payload = self._measure_fn(q)
            self.meas[float(q)] = Measurement(q, g, payload)
        return self.meas[float(q)]

    def feasible(self, m: Measurement) -> bool:
        return m.g <= self.hi if self.cap else m.g >= self.lo

    def in_window(self, m: Measurement) -> bool:
        return self.lo <= m.g <= self.hi

    def _invert_estimate(self, value: float) -> float:
        """q where the (piecewise-linear over anchors) estimate equals value, found by bisection on anchors."""
        lo_a, hi_a = 0, self.top
        if value <= self.estimate(lo_a):
            return self._extrapolate(0, 1, value)
        if value >= self.estimate(hi_a):
            return self._extrapolate(self.top - 1, self.top, value)
        while hi_a - lo_a > 1:
            mid = (lo_a + hi_a) // 2
            if self.estimate(mid) <= value:
                lo_a = mid
            else:
                hi_a = mid
        return self._interp(lo_a, hi_a, value)

    def _interp(self, a: float, b: float, value: float) -> float:
        ea, eb = self.estimate(a), self.estimate(b)
        if eb == ea:
            return (a + b) / 2
        return a + (value - ea) / (eb - ea) * (b - a)

    def _extrapolate(self, a: int, b: int, value: float) -> float:
        return self._interp(a, b, value)

    def shape(self, q: float) -> float:
        """Estimate at any q, interpolated linearly between the two neighbouring anchors."""
        a = min(int(math.floor(q)), self.top - 1)
        return self.estimate(a) + (q - a) * (self.estimate(a + 1) - self.estimate(a))

    def _best(self) -> Measurement | None:
        feas = [m for m in self.meas.values() if self.feasible(m)]
        if not feas:
            return None
        return max(feas, key=lambda m: m.g) if self.cap else min(feas, key=lambda m: m.g)

    def _next_qp(self, last: Measurement) -> float:
        below = [m for m in self.meas.values() if m.g < self.aim]
        above = [m for m in self.meas.values() if m.g >= self.aim]
        if below and above:
            a = max(below, key=lambda m: m.g)
            b = min(above, key=lambda m: m.g)
            if b.g > a.g:
                q = float(a.qp) + (self.aim - a.g) / (b.g - a.g) * (float(b.qp) - float(a.qp))
            else:
                q = (float(a.qp) + float(b.qp)) / 2
            return q
        # calibrate the estimate's shape with the latest real measurement
        offset = last.g - self.shape(float(last.qp))
        q = self._invert_estimate(self.aim - offset)
        # never step away from the target (the shape may be locally off)
        if last.g > self.aim:
            q = min(q, float(last.qp) - QP_STEP)
        else:
            q = max(q, float(last.qp) + QP_STEP)
        return q

    def run(self) -> SearchResult:
        q = self._invert_estimate(self.aim)
        last: Measurement | None = None
        for _ in range(MAX_MEASURES):
            qs = snap_qp(q, self.top)
            if float(qs) in self.meas:
                # the search cannot move any further on the qp grid
                break
            last = self.measure(qs)
            if self.in_window(last):
                return self._result(last, True, "")
            if qs == 0 and not self.feasible(last) and self.cap:
                return self._result(last, False, "target below the model's lowest rate: returned qp 0")
            if qs == 0 and last.g > self.hi and not self.cap:
                return self._result(last, False, "target below the model's lowest quality: returned qp 0")
            if qs == self.top and last.g < self.lo and self.cap:
                return self._result(last, False, "target above the model's highest rate: returned the top anchor")
            if qs == self.top and not self.feasible(last) and not self.cap:
                return self._result(last, False, "target above the model's highest quality: returned the top anchor")
            q = self._next_qp(last)
        best = self._best()
        if best is None:
            # nothing met the hard side yet: walk to the safe end, which always ends the search
            end = 0 if self.cap else self.top
            m = self.measure(end)
            if self.feasible(m):
                best = m
            else:
                side = "lowest rate" if self.cap else "highest quality"
                return self._result(m, False, f"target beyond the model's {side}: returned qp {end}")
        return self._result(best, self.in_window(best), "" if self.in_window(best) else "closest feasible qp found")

    def _result(self, m: Measurement, in_range: bool, note: str) -> SearchResult:
        return SearchResult(m.qp, m.payload, in_range, note, len(self.est), len(self.meas))


class RateProblem(Protocol):
    """What a rate search needs of the image being coded (``msinn.encoding``'s session provides it).

    ``kind`` is ``"bytes"`` (g is the log of the whole file's size) or
    ``"psnr"``; ``estimate`` works on crops, ``measure`` on the whole image,
    with every probe entropy-coded when ``exact`` (else sized from the CDF
    tables, which is exact to the byte but skips the coder).
    """

    anchor_num: int
    pixels: int

    def estimate(self, q: float, kind: str) -> float: ...

    def measure(self, q: int | float, kind: str, exact: bool) -> tuple[float, Any]: ...


def search_rate(problem: RateProblem, target: Target, exact: bool = False) -> SearchResult:
    """The qp that meets a cap or a floor for this image: the whole search, in one call."""
    if target.kind == "qp":
        raise ValueError("a qp target needs no search")
    kind = "bytes" if target.is_cap else "psnr"
    limit = Target("bytes", target.cap_bytes(problem.pixels)) if target.is_cap else target
    lo, hi, aim = window_for(limit)
    search = RateSearch(problem.anchor_num, lambda q: problem.estimate(q, kind),
                        lambda q: problem.measure(q, kind, exact), lo, hi, aim, cap=target.is_cap)
    return search.run()


class Sized(Protocol):
    bytes: int
    in_range: bool


S = TypeVar("S", bound=Sized)


def keep_within_cap(cap: float, first: S, sizes_were_right: bool, search_again: Callable[[float], S],
                    tries: int = 3) -> S:
    """The final file within a cap its search judged reachable, searching again while it overshoots.

    A search sizes probes from the CDF tables and the header from its
    largest values, so the final file rarely differs; when it is over the
    cap anyway, ``search_again(aim)`` (which codes every probe) runs first at
    the cap itself if a predicted size was wrong, then below each overshoot.
    """
    result, aim, tighten = first, cap, sizes_were_right
    for _ in range(tries):
        if result.bytes <= cap or not result.in_range:
            break
        if tighten:  # sizes were right, so only a lower aim helps
            aim = max(aim - (result.bytes - cap), 1.0)
        tighten = True
        result = search_again(aim)
    return result


def window_for(target: Target) -> tuple[float, float, float]:
    """(lo, hi, aim) of g for a ``psnr`` or ``bytes`` target: PSNR for floors, log-bytes for caps."""
    if target.kind == "psnr":
        return target.value, target.value + 0.1, target.value + 0.04
    return math.log(0.98 * target.value), math.log(target.value), math.log(0.99 * target.value)


@dataclass
class QualityResult:
    quality: int
    payload: Any
    in_range: bool
    note: str
    measures: int
    decided: bool  # stopped because the caller's ``decided`` said the outcome was known


class QualitySearch:
    """The best integer quality of a classical codec for a cap or a floor, in as few encodes as the curve allows.

    ``measure(quality)`` encodes for real and returns g: log-bytes for caps,
    PSNR for floors, rising with quality. The answer is the largest quality
    whose file is within the cap, or the smallest whose PSNR reaches the
    floor, proven by a measured neighbour on the other side (or the end of the
    range). The first guess comes from the codec's typical curve (``start``,
    ``slope``: g per quality step); then each step interpolates between the
    nearest measurements on either side of the limit, so a near-linear curve
    is bracketed in two or three encodes. ``decided`` (optional) is asked
    after every encode whether the outcome no longer matters (another codec
    has already won or lost against everything this search could still find).
    """

    def __init__(
        self,
        lo: int,
        hi: int,
        measure: Callable[[int], tuple[float, Any]],
        limit: float,
        cap: bool,
        start: float,
        slope: float,
        decided: Callable[[QualitySearch], bool] | None = None,
        max_measures: int = 10,
        window: float = 0.0,
    ):
        self.lo, self.hi, self.limit, self.cap = lo, hi, limit, cap
        self.window = window
        self._measure_fn, self._decided = measure, decided
        self.start, self.slope, self.max_measures = start, max(slope, 1e-6), max_measures
        self.meas: dict[int, Measurement] = {}

    def feasible(self, m: Measurement) -> bool:
        return m.g <= self.limit if self.cap else m.g >= self.limit

    def measure(self, q: int) -> Measurement:
        if q not in self.meas:
            g, payload = self._measure_fn(q)
            self.meas[q] = Measurement(q, g, payload)
        return self.meas[q]

    def best(self) -> Measurement | None:
        """The feasible measurement closest to the limit (largest quality for caps, smallest for floors)."""
        feas = [m for m in self.meas.values() if self.feasible(m)]
        if not feas:
            return None
        return max(feas, key=lambda m: m.qp) if self.cap else min(feas, key=lambda m: m.qp)

    def _bracket(self) -> tuple[Measurement | None, Measurement | None]:
        """(feasible side, infeasible side) nearest the boundary: for caps good < bad, for floors bad < good."""
        good = self.best()
        if self.cap:
            bad = [m for m in self.meas.values() if not self.feasible(m) and (good is None or m.qp > good.qp)]
            return good, min(bad, key=lambda m: m.qp) if bad else None
        bad = [m for m in self.meas.values() if not self.feasible(m) and (good is None or m.qp < good.qp)]
        return good, max(bad, key=lambda m: m.qp) if bad else None

    def in_window(self, m: Measurement) -> bool:
        """Feasible and as close to the limit as the model's own rate control lands: accepted without proof."""
        return self.window > 0 and self.feasible(m) and abs(m.g - self.limit) <= self.window

    def _next(self) -> int | None:
        good, bad = self._bracket()
        if good is not None and self.in_window(good):
            return None
        if good is not None and bad is not None:
            a, b = sorted((good, bad), key=lambda m: m.qp)
            if b.qp - a.qp <= 1:
                return None  # proven: neighbours on either side of the limit
            x = a.qp + (self.limit - a.g) / (b.g - a.g) * (b.qp - a.qp) if b.g != a.g else (a.qp + b.qp) / 2
            q = math.floor(x) if self.cap else math.ceil(x)
            return int(min(max(q, a.qp + 1), b.qp - 1))
        # one side only: from the measurement nearest the limit, step across it along the curve's slope
        up = not self.cap if good is None else self.cap
        pts = sorted(self.meas.values(), key=lambda m: m.qp)
        base = pts[-1] if up else pts[0]
        if (up and base.qp >= self.hi) or (not up and base.qp <= self.lo):
            return None  # the range ends here
        slope = self.slope
        if len(pts) >= 2 and pts[-1].g != pts[0].g:
            slope = max((pts[-1].g - pts[0].g) / (pts[-1].qp - pts[0].qp), self.slope / 4)
        x = base.qp + (self.limit - base.g) / slope
        q = max(math.ceil(x), base.qp + 1) if up else min(math.floor(x), base.qp - 1)
        return int(min(max(q, self.lo), self.hi))

    def run(self) -> QualityResult:
        q: int | None = int(min(max(round(self.start), self.lo), self.hi))
        decided = False
        while q is not None and len(self.meas) < self.max_measures:
            self.measure(q)
            if self._decided is not None and self._decided(self):
                decided = True
                break
            q = self._next()
        best = self.best()
        if best is None:
            # the limit is beyond the codec's range: the nearest end, flagged
            end = self.lo if self.cap else self.hi
            if decided:
                m = min(self.meas.values(), key=lambda m: abs(m.qp - end))
            else:
                m = self.measure(end)
            if self.feasible(m):
                return self._result(m, True, "", decided)
            side = "lowest rate" if self.cap else "highest quality"
            return self._result(m, False, f"target beyond the codec's {side}: returned quality {m.qp}", decided)
        good, bad = self._bracket()
        proven = (bad is not None and abs(bad.qp - good.qp) <= 1) or good.qp == (self.hi if self.cap else self.lo)
        proven = proven or self.in_window(good)
        note = "" if proven else "stopped once another codec's file was known to win" if decided else \
            "closest feasible quality found"
        return self._result(best, True, note, decided)

    def _result(self, m: Measurement, in_range: bool, note: str, decided: bool) -> QualityResult:
        return QualityResult(int(m.qp), m.payload, in_range, note, len(self.meas), decided)
