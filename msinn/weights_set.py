"""Several weights competing for one image: what a qp means across them, so the encoder can keep the better file.

A specialist (weights fine-tuned on graphics) beats the default on some images
and loses on others, so the encoder codes an image with each and keeps the
better file, as it does between codecs (:mod:`msinn.choice`). At a PSNR floor or
a size cap "better" needs nothing new. At a ``qp`` target the files differ in
both rate and quality, so they are compared by the loss the weights were
trained to minimise at that qp, ``bpp + lambda_qp * MSE`` (MSE on 0..255):
weights trained with the same lambdas agree on what each qp trades, and the
lower loss is the better point. A fractional qp takes the log-linear
interpolation of its anchors' lambdas, as the model interpolates its gains
geometrically.

A float checkpoint records its lambdas; a portable file converted by this
version carries them over; an older portable file of the registry gets them
from the bundled float model it was converted from (same weights hash).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .interface import CodecModel


def _checked(lambdas: Any, anchors: int | None, name: str) -> tuple[float, ...]:
    try:
        lam = tuple(float(v) for v in lambdas)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: its recorded lambdas are not numbers ({exc})") from None
    if not lam or not all(math.isfinite(v) and v > 0 for v in lam) or list(lam) != sorted(lam):
        raise ValueError(f"{name}: its recorded lambdas {list(lam)} are not positive and increasing")
    if anchors is not None and len(lam) != anchors:
        raise ValueError(f"{name}: {len(lam)} recorded lambdas for {anchors} anchors")
    return lam


def trained_lambdas(model: CodecModel) -> tuple[float, ...] | None:
    """The lambda per anchor the weights were trained with, or None where nothing records them."""
    name = getattr(model, "model_name", None) or "model"
    anchors = getattr(model, "anchor_num", None)
    meta = getattr(model, "checkpoint_meta", None) or {}
    if meta.get("lambdas") is not None:
        return _checked(meta["lambdas"], anchors, name)
    from .registry import float_source_name, lookup

    source = float_source_name(name)  # None for an unnamed model ("model" has no -pN suffix)
    entry = lookup(source) if source else None
    if entry is None or not entry.bundled or meta.get("source_sha256") != entry.sha256:
        return None
    lam = _bundled_lambdas(str(entry.path), entry.sha256)
    return _checked(lam, anchors, entry.name) if lam is not None else None


@functools.lru_cache(maxsize=8)
def _bundled_lambdas(path: str, sha256: str) -> tuple[float, ...] | None:
    """A bundled float model's recorded lambdas, its file read once per process (the eval command's check and
    its run, the driver's check and each model it loads, all ask); ``sha256`` keys the cache to those weights."""
    from .checkpoint import load_object

    _, obj = load_object(path)
    lam = (obj.get("meta") or {}).get("lambdas")
    return tuple(lam) if lam is not None else None


def shared_lambdas(models: Sequence[CodecModel]) -> tuple[float, ...]:
    """The lambdas every model records and agrees on; a clear error otherwise (weights that record none are not
    assumed to share the others': a qp would mean an unknown trade for them)."""
    names = [getattr(m, "model_name", None) or "model" for m in models]
    anchors = {getattr(m, "anchor_num", None) for m in models}
    if len(anchors) != 1:
        raise ValueError(f"weights {', '.join(names)} have different numbers of anchors {sorted(anchors)}: "
                         "their qps do not mean the same rates")
    known = [(n, trained_lambdas(m)) for n, m in zip(names, models)]
    unknown = [n for n, lam in known if lam is None]
    if unknown:
        raise ValueError(f"weights {', '.join(unknown)} record no lambdas they were trained with, so their files "
                         "at one qp cannot be compared with the others': give a --psnr, --bpp or --bytes target")
    first_name, first = known[0]
    for n, lam in known[1:]:
        if len(lam) != len(first) or any(not math.isclose(a, b, rel_tol=1e-9) for a, b in zip(lam, first)):
            raise ValueError(f"weights {first_name} and {n} were trained with different lambdas: a qp does "
                             "not mean the same trade for both; give a --psnr, --bpp or --bytes target instead")
    return first


def lambda_at(lambdas: Sequence[float], qp: float) -> float:
    """The lambda of a rate parameter: an anchor's own, or the log-linear interpolation of its two anchors."""
    if not 0 <= qp <= len(lambdas) - 1:
        raise ValueError(f"qp {qp} outside [0, {len(lambdas) - 1}]")
    if float(qp).is_integer():
        return float(lambdas[int(qp)])
    lo = int(math.floor(qp))
    t = qp - lo
    return float(math.exp((1 - t) * math.log(lambdas[lo]) + t * math.log(lambdas[lo + 1])))


def rd_cost(bpp: float, psnr: float, lam: float) -> float:
    """The training loss of one file: ``bpp + lambda * MSE`` with MSE on 0..255, from the file's PSNR."""
    mse = 0.0 if math.isinf(psnr) else 255.0**2 * 10 ** (-psnr / 10)
    return bpp + lam * mse
