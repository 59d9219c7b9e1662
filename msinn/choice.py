"""Per-image codec choice: code an image with each allowed codec at the target, keep the best file.

The promise is the same whichever codec wins:

* a cap (``bpp``, ``bytes``): the candidate with the highest PSNR within the
  cap (if none fits, the smallest file);
* a floor (``psnr``): the smallest file that reaches it (if none does, the
  highest PSNR);
* ``qp``: the model's rate parameter. It needs ``msinn`` among the codecs:
  the model is coded at that qp, the PSNR it reaches becomes the floor of
  every other codec, and the smallest file reaching it wins. With several
  weights (``--also-model``), each is coded at that qp and the one with the
  lower training loss there sets the floor (:mod:`msinn.weights_set`);
* ``lossless``: the exact file alone (:mod:`msinn.lossless`).

``lossless`` among the codecs lets the exact file (the original back, or its
pixels) compete at the target: its PSNR is infinite, so it reaches any floor
and wins wherever it is the smallest file that does (within a cap it wins
whenever it fits).

Several weights are several candidates of the codec ``msinn``: each file
names its weights, so any of them decodes. The model runs first (its rate
search is the costliest); each classical
codec's quality search then stops as soon as its outcome is decided against
the best candidate so far (:class:`msinn.ratecontrol.QualitySearch`), so a
codec that cannot win costs one or two encodes. Every candidate is decoded
once, and the winner carries the hash of its decoded pixels, which the
pipeline's manifest records so that ``verify`` checks every codec the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import classical
from .container import Header, image_digest
from .images import PreparedImage, restore_image
from .lossless import LOSSLESS, ExactFile
from .ratecontrol import QualitySearch, Target
from .version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from .interface import CodecModel

MODEL_CODEC = "msinn"  # the --codecs name of the model's own .msinn files
DEFAULT_CODECS = (MODEL_CODEC,)
# Larger images are not offered to classical codecs: their encoders hold the whole image, at several
# bytes per pixel, where the model codes bounded tiles (and WebP stops at 16383 pixels a side).
CLASSICAL_MAX_PIXELS = 40_000_000


def parse_codecs(text: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``"msinn,avif"`` (or a list) as a checked tuple, without repeats, in the given order."""
    if text is None or text == "":
        return DEFAULT_CODECS
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(str(c).strip().lower() for c in items if str(c).strip()))
    allowed = (MODEL_CODEC, *classical.ARCHIVE_CODECS, LOSSLESS)
    unknown = [c for c in names if c not in allowed]
    if unknown or not names:
        raise ValueError(f"unknown codec(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(allowed)}")
    return names


def missing_codecs(codecs: tuple[str, ...]) -> dict[str, str]:
    """Codecs this Pillow build cannot write or read, with why: a job refuses them at its start."""
    return {c: why for c in codecs
            if c not in (MODEL_CODEC, LOSSLESS) and (why := classical.codec_available(c)) is not None}


@dataclass(frozen=True)
class ChoiceOptions:
    codecs: tuple[str, ...] = DEFAULT_CODECS
    avif_speed: int = classical.AVIF_SPEED

    def __post_init__(self) -> None:
        object.__setattr__(self, "codecs", parse_codecs(self.codecs))
        if not 0 <= int(self.avif_speed) <= 10:
            raise ValueError(f"AVIF speed must be 0 (slowest, smallest) .. 10, got {self.avif_speed}")

    def speed(self, codec: str) -> int | None:
        return int(self.avif_speed) if codec == "avif" else None


@dataclass
class Candidate:
    """One codec's file for one image at the target."""

    codec: str
    data: bytes
    psnr: float
    quality: float  # the codec's own rate parameter: the model's qp, a classical codec's quality
    in_range: bool
    note: str
    probes: int  # real encodes
    estimates: int  # cheap crop estimates (the model only)
    seconds: float
    pixels: np.ndarray = field(repr=False)  # decoded, in the image's restore layout
    pixel_hash: str
    codec_version: str
    codec_params: str | None = None
    header: Header | None = None  # the .msinn header (the model only)
    model: str | None = None  # the weights' registry name (the model only)
    exact: ExactFile | None = None  # the exact file (lossless only): what comes back, and what was tried

    @property
    def bytes(self) -> int:
        return len(self.data)

    @property
    def extension(self) -> str:
        if self.exact is not None:
            return self.exact.extension
        return "msinn" if self.codec == MODEL_CODEC else classical.get(self.codec).extension


@dataclass
class Choice:
    """The kept file and what every codec offered."""

    winner: Candidate
    candidates: list[Candidate]
    target: Target
    floor: float | None  # the PSNR floor the codecs competed for (psnr targets, and qp with several codecs)
    seconds: float
    failed: dict[str, str] = field(default_factory=dict)  # codecs that could not code this image, and why

    def summary(self, pixels: int) -> dict[str, Any]:
        w = self.winner
        return {
            "codec": w.codec,
            "bytes": w.bytes,
            "bpp": round(w.bytes * 8 / pixels, 6),
            "psnr": round(w.psnr, 4) if math.isfinite(w.psnr) else None,
            "quality": w.quality,
            "in_range": w.in_range,
            "note": w.note,
            "probes": sum(c.probes for c in self.candidates),
            "estimates": sum(c.estimates for c in self.candidates),
            "seconds": round(self.seconds, 3),
            **({"failed": dict(self.failed)} if self.failed else {}),
            "candidates": [{"codec": c.codec, "bytes": c.bytes, "psnr": round(c.psnr, 4), "quality": c.quality,
                            "in_range": c.in_range, **({"model": c.model} if c.model else {})}
                           for c in self.candidates],
        }


def meets(c: Candidate, target: Target, floor: float | None, pixels: int) -> bool:
    """Whether a candidate meets the target (a floor given by the model's qp counts as the target)."""
    if target.is_cap:
        return c.bytes <= target.cap_bytes(pixels)
    if floor is None:
        return True
    return c.psnr >= floor


def pick(cands: list[Candidate], target: Target, floor: float | None, pixels: int) -> Candidate:
    """The winner by the module's rule; ties go to the earlier codec in ``--codecs`` order."""
    ok = [c for c in cands if meets(c, target, floor, pixels)]
    if target.is_cap:
        if ok:
            return min(ok, key=lambda c: (-c.psnr, c.bytes))
        return min(cands, key=lambda c: c.bytes)
    if ok:
        return min(ok, key=lambda c: c.bytes)
    return min(cands, key=lambda c: (-c.psnr, c.bytes))


def from_encode_result(res: Any) -> Candidate:
    """The model's :class:`msinn.encoding.EncodeResult` as a candidate."""
    return Candidate(
        codec=MODEL_CODEC, data=res.data, psnr=res.psnr, quality=float(res.qp), in_range=res.in_range, note=res.note,
        probes=res.probes, estimates=res.estimates, seconds=res.seconds, pixels=res.reconstruction,
        pixel_hash=res.header.image_digest, codec_version=__version__, header=res.header,
        model=res.header.model_name,
    )


def from_exact(exact: ExactFile, img: PreparedImage | None) -> Candidate:
    """The exact file as a candidate: infinite PSNR, the prepared image's own pixels as its reconstruction."""
    pixels = restore_image(img.rgb, img.alpha, img.mode) if img is not None else np.zeros((0, 0), np.uint8)
    from .lossless import versions

    return Candidate(
        codec=exact.codec, data=exact.data, psnr=math.inf, quality=0.0, in_range=True, note=exact.note, probes=1,
        estimates=0, seconds=exact.seconds, pixels=pixels, pixel_hash=exact.pixel_hash or "",
        codec_version=versions(exact.codec), exact=exact,
    )


class Unsuitable(ValueError):
    """A codec that cannot carry this image (alpha it would lose, a size it should not be given)."""


def search_classical(
    codec: str,
    img: PreparedImage,
    target: Target,
    floor: float | None,
    speed: int | None,
    best: Candidate | None = None,
) -> Candidate:
    """A classical codec's best file for the target; :class:`Unsuitable` when it cannot carry this image.

    ``best`` is the leading candidate so far: the search stops once this
    codec can no longer beat it, or has beaten it by what it found.
    """
    c = classical.get(codec)
    if img.alpha is not None and not c.keeps_alpha:
        raise Unsuitable("cannot keep an alpha channel")
    if img.width * img.height > CLASSICAL_MAX_PIXELS:
        raise Unsuitable(f"images over {CLASSICAL_MAX_PIXELS} pixels are coded by the model alone")
    t0 = time.perf_counter()
    pixels = img.width * img.height
    cap = target.is_cap
    if cap:
        limit = math.log(target.cap_bytes(pixels))
        start, slope = c.first_guess(True, math.log(target.cap_bytes(pixels) * 8 / pixels))
    else:
        assert floor is not None, "floors need a PSNR"
        limit = floor
        start, slope = c.first_guess(False, floor)

    def measure(q: int) -> tuple[float, Any]:
        coded = classical.code(c, img, q, speed)
        return (math.log(len(coded.data)) if cap else coded.psnr), coded

    ref_meets = best is not None and meets(best, target, floor, pixels)

    def decided(search: QualitySearch) -> bool:
        if not ref_meets:
            return False
        for m in search.meas.values():
            coded = m.payload
            if search.feasible(m):
                continue
            # an infeasible file that is already no better than the leader: every feasible one is worse
            if cap and coded.psnr <= best.psnr:
                return True
            if not cap and len(coded.data) >= best.bytes:
                return True
        return False

    lo, hi = c.quality_range
    # accepted without a proof where the model's own rate control lands: 0.98-1.0 x a cap, floor + 0.1 dB
    window = math.log(1 / 0.98) if cap else 0.1
    search = QualitySearch(lo, hi, measure, limit, cap, start, slope, decided if best is not None else None,
                           window=window)
    res = search.run()
    coded = res.payload
    return Candidate(
        codec=codec, data=coded.data, psnr=coded.psnr, quality=float(res.quality), in_range=res.in_range,
        note=res.note, probes=res.measures, estimates=0, seconds=time.perf_counter() - t0, pixels=coded.pixels,
        pixel_hash=image_digest(coded.pixels), codec_version=classical.versions(codec),
        codec_params=c.params(res.quality, speed),
    )


def _model_lead(cands: list[Candidate], pixels: int, qp_lambda: float | None) -> Candidate:
    """At a qp target, the weights whose file has the lowest training loss there (the first on a tie)."""
    if len(cands) == 1:
        return cands[0]
    if qp_lambda is None:
        raise ValueError("several weights at a qp target need the lambda of that qp to compare their files")
    from .weights_set import rd_cost

    return min(cands, key=lambda c: rd_cost(c.bytes * 8 / pixels, c.psnr, qp_lambda))


def choose(
    img: PreparedImage,
    target: Target,
    options: ChoiceOptions,
    model_result: Any = None,
    exact: ExactFile | None = None,
    qp_lambda: float | None = None,
) -> Choice:
    """Every allowed codec at ``target``, the winner by the module's rule.

    ``model_result`` is the model's finished encode (an
    :class:`msinn.encoding.EncodeResult`), or a list of them, one per weights,
    when ``msinn`` is among the codecs; the caller makes it, so the network
    half can run elsewhere (see :class:`msinn.encoding.PendingEncode`).
    ``qp_lambda`` is the training lambda of a qp target, which compares several
    weights' files there (:func:`msinn.weights_set.lambda_at`). ``exact`` is the exact file
    (:func:`msinn.lossless.store_exactly` of the input's bytes) when
    ``lossless`` is among the codecs or is the target.
    """
    t0 = time.perf_counter()
    if target.kind == LOSSLESS or (LOSSLESS in options.codecs and exact is not None and img is None):
        if exact is None:
            raise ValueError("a lossless target needs the exact file of the input")
        cand = from_exact(exact, img)
        return Choice(cand, [cand], target, None, time.perf_counter() - t0 + exact.seconds)
    if target.kind == "qp" and model_result is None:
        raise ValueError("a qp target is the model's rate parameter: it needs msinn among the codecs")
    results = [] if model_result is None else (
        list(model_result) if isinstance(model_result, list | tuple) else [model_result])
    cands: list[Candidate] = [from_encode_result(r) for r in results]
    failed: dict[str, str] = {}
    pixels = img.width * img.height
    floor = None
    if target.kind == "psnr":
        floor = float(target.value)
    elif target.kind == "qp":
        floor = _model_lead(cands, pixels, qp_lambda).psnr  # the model's quality at that qp: what others must reach
    for codec in options.codecs:
        if codec == MODEL_CODEC:
            continue
        if codec == LOSSLESS:
            if exact is not None:
                cands.append(from_exact(exact, img))
            continue
        if target.kind == "qp" and not math.isfinite(floor):
            break  # lossless at that qp: nothing can match it with fewer bytes by this rule
        leader = pick(cands, target, floor, pixels) if cands else None
        try:
            cands.append(search_classical(codec, img, target, floor, options.speed(codec), leader))
        except Unsuitable as exc:
            failed[codec] = str(exc)
        except (ValueError, OSError, MemoryError) as exc:  # a library that fails on this image: the others compete
            failed[codec] = f"{type(exc).__name__}: {exc}"
    if not cands:
        why = "; ".join(f"{k}: {v}" for k, v in failed.items())
        raise ValueError(f"none of the codecs {', '.join(options.codecs)} could code this image ({why})")
    seconds = time.perf_counter() - t0 + sum(r.seconds for r in results)
    return Choice(pick(cands, target, floor, pixels), cands, target, floor, seconds, failed)


def qp_lambda_for(models: list[CodecModel], target: Target) -> float | None:
    """The training lambda of a qp target when several weights compete there (None otherwise)."""
    if target.kind != "qp" or len(models) < 2:
        return None
    from .weights_set import lambda_at, shared_lambdas

    return lambda_at(shared_lambdas(models), float(target.value))


def encode_best(
    model: CodecModel, img: PreparedImage, target: Target, options: ChoiceOptions, encode_options: Any = None,
    exact: ExactFile | None = None, also: list[CodecModel] | tuple[CodecModel, ...] = (),
) -> Choice:
    """Code ``img`` with every allowed codec and keep the best: the whole choice in one call (``msinn encode``);
    ``encode_options`` is the model's (:class:`msinn.encoding.EncodeOptions`, its effort included), ``exact``
    the input's exact file when ``lossless`` is among the codecs, ``also`` other weights that compete with
    ``model`` (a qp target means ``model``'s qp)."""
    results = None
    models = [model, *also]
    lam = qp_lambda_for(models, target) if MODEL_CODEC in options.codecs else None  # before any coding
    failed: dict[str, str] = {}
    if MODEL_CODEC in options.codecs:
        from .encoding import encode_image

        results = [encode_image(model, img, target, encode_options)]  # --model's failure is the image's
        for m in also:  # another weights failing leaves the image to the rest, as a classical codec's would
            try:
                results.append(encode_image(m, img, target, encode_options))
            except (ValueError, RuntimeError, MemoryError) as exc:
                failed[f"msinn {m.model_name}"] = f"{type(exc).__name__}: {exc}"
    choice = choose(img, target, options, results, exact, lam)
    choice.failed.update(failed)
    return choice
