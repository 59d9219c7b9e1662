"""Real-coding rate-distortion evaluation: coding the images, the averages, BD-rates and the choice at floors.

Every number comes from actual bitstreams (not the likelihood estimate), so
the results are what a user of ``msinn encode`` would get. The model is coded
at each anchor; classical codecs (:mod:`msinn.classical`) are coded on the
same images in the same run, and the Bjontegaard delta rate
(:mod:`msinn.evaluation.bdrate`) of the model against each codec summarises the
comparison. Tables, the JSON document and the plot are :mod:`msinn.evaluation.report`;
the command line is :mod:`msinn.cli.eval`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..classical import CODEC_QUALITIES, code_at_quality
from ..metrics import ms_ssim_uint8, psnr_uint8
from .bdrate import bd_rate_with_reason

if TYPE_CHECKING:  # pragma: no cover
    from ..interface import CodecModel

Coder = Callable[["CodecModel", np.ndarray, int | float], tuple[int, np.ndarray, float, float]]


# ---------------------------------------------------------------------------------------------- model coding
def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def code_image(model: CodecModel, img_uint8_hwc: np.ndarray, qp: int | float) -> tuple[int, np.ndarray, float, float]:
    """Really encode and decode one image: (bytes, 8-bit reconstruction, encode s, decode s).

    The byte count is the rANS stream alone. It is a module-level function so
    that a container-aware version (header bytes included) can replace it:
    :func:`evaluate` looks it up at call time.
    """
    import torch

    from ..tensors import to_padded_tensor

    device = model.device
    h, w = img_uint8_hwc.shape[:2]
    x = to_padded_tensor(img_uint8_hwc, device)
    _sync(device)
    t0 = time.perf_counter()
    qp = model.snap_qp(qp)
    with torch.inference_mode():  # either profile: the stream, then a decode of it
        enc = model.encode_latents(model.analyze(x), qp)
        t1 = time.perf_counter()
        x_hat = model.decode_latents(enc.data, enc.latent_shape, qp)
    _sync(device)
    t2 = time.perf_counter()
    rec = model.to_uint8(x_hat)[:h, :w]
    return len(enc.data), rec, t1 - t0, t2 - t1


# ---------------------------------------------------------------------------------------------- evaluation
def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values (MS-SSIM is undefined for small images), None if none are."""
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def log_stderr(msg: str) -> None:
    """Default progress sink: stderr, so stdout holds only the report."""
    print(msg, file=sys.stderr, flush=True)


def evaluate(
    model: CodecModel,
    uris: Sequence[str],
    qps: Sequence[int | float],
    codecs: Sequence[str] = (),
    limit: int | None = None,
    coder: Coder | None = None,
    progress: Callable[[str], None] = log_stderr,
    done: Sequence[dict] = (),
    checkpoint: Callable[[dict], None] | None = None,
    also: Sequence[CodecModel] = (),
) -> dict:
    """Code each readable image at every qp (and codec quality); per-image and averaged results.

    ``also`` holds other weights that compete with ``model`` as ``msinn encode
    --also-model`` makes them: at each qp every weights codes the image and the
    point is the file with the lowest training loss there
    (:mod:`msinn.weights_set`), its weights named in the point's ``model``;
    its encode time is all of them together, as the encoder spends it.

    Images are processed one at a time so memory does not grow with the
    dataset. Unreadable images are reported through ``progress`` and listed
    under ``"skipped"`` instead of aborting the run. ``done`` holds per-image
    results of an earlier run (``--resume``): those images are not coded
    again. ``checkpoint`` receives the summary so far after every image, so a
    run of hours that is interrupted loses one image, not all of them.
    """
    from ..image_files import read_image_rgb

    if coder is None:
        coder = code_image  # looked up now, so a replacement assigned to the module is used
    models = [model, *also]
    lambdas = None
    if also:
        from ..weights_set import shared_lambdas

        lambdas = shared_lambdas(models)  # before hours of coding, not after
    _check_same_sweep(done, qps, codecs)  # before hours of coding, not after
    earlier = {im["image"]: im for im in done}
    per_image: list[dict] = []
    skipped: list[dict] = []
    for uri in uris:
        if limit is not None and len(per_image) >= limit:
            break
        if uri in earlier:
            per_image.append(earlier[uri])
            continue
        try:
            img = read_image_rgb(uri)
            if img.ndim != 3 or img.shape[2] != 3 or img.size == 0:
                raise ValueError(f"decoded to an array of shape {img.shape}, not HxWx3")
        except Exception as exc:
            progress(f"msinn eval: error: cannot read {uri}: {type(exc).__name__}: {exc}; skipped")
            skipped.append({"image": uri, "error": f"{type(exc).__name__}: {exc}"})
            continue
        h, w = img.shape[:2]
        pixels = h * w
        t_start = time.perf_counter()
        points = []
        for qp in qps:
            nbytes, rec, enc_s, dec_s, chosen = _code_best(models, lambdas, coder, img, qp)
            points.append(
                {
                    "qp": qp,
                    "bytes": int(nbytes),
                    "bpp": nbytes * 8.0 / pixels,
                    "psnr": psnr_uint8(img, rec),
                    "ms_ssim": ms_ssim_uint8(img, rec),
                    "encode_s": enc_s,
                    "decode_s": dec_s,
                    **({"model": chosen} if also else {}),
                }
            )
        mine: dict[str, list[dict]] = {}
        for c in codecs:
            for q in CODEC_QUALITIES[c]:
                nbytes, rec, seconds = code_at_quality(c, img, q)
                row = {"bpp": nbytes * 8.0 / pixels, "psnr": psnr_uint8(img, rec), "ms_ssim": ms_ssim_uint8(img, rec),
                       "encode_s": seconds}
                mine.setdefault(c, []).append({"quality": q, "bytes": int(nbytes), **row})
        per_image.append({"image": uri, "width": w, "height": h, "points": points, "codecs": mine})
        n = len(per_image)
        total = min(len(uris), limit) if limit is not None else len(uris)
        progress(f"[{n}/{total}] {uri} {w}x{h}: {time.perf_counter() - t_start:.1f} s")
        if checkpoint is not None:
            checkpoint(summarize(per_image, qps, codecs, skipped))
    return summarize(per_image, qps, codecs, skipped)


def _code_best(models: Sequence[CodecModel], lambdas: Sequence[float] | None, coder: Coder, img: np.ndarray,
               qp: int | float) -> tuple[int, np.ndarray, float, float, str | None]:
    """The image coded at ``qp`` by each weights, the file with the lowest training loss kept (the first on a tie):
    (bytes, reconstruction, encode s of all, decode s of the kept one, its weights' name)."""
    if len(models) == 1:
        return (*coder(models[0], img, qp), None)
    from ..weights_set import lambda_at, rd_cost

    lam = lambda_at(lambdas, float(qp))
    pixels = img.shape[0] * img.shape[1]
    best, best_cost, total_enc = None, math.inf, 0.0
    for i, m in enumerate(models):
        nbytes, rec, enc_s, dec_s = coder(m, img, qp)
        total_enc += enc_s
        cost = rd_cost(nbytes * 8 / pixels, psnr_uint8(img, rec), lam)
        if cost < best_cost:
            best, best_cost = (nbytes, rec, dec_s, getattr(m, "model_name", None) or f"weights {i}"), cost
    nbytes, rec, dec_s, name = best
    return nbytes, rec, total_enc, dec_s, name


def _check_same_sweep(per_image: Sequence[dict], qps: Sequence[int | float], codecs: Sequence[str]) -> None:
    for im in per_image:
        if [p["qp"] for p in im["points"]] != list(qps) or any(c not in im.get("codecs", {}) for c in codecs):
            raise ValueError(f"{im['image']}: coded with other qps or codecs than this run; start it afresh")


def summarize(per_image: Sequence[dict], qps: Sequence[int | float], codecs: Sequence[str],
              skipped: Sequence[dict] = ()) -> dict:
    """Mean points per qp and codec quality, and BD-rates, over the per-image results."""
    per_image = list(per_image)
    _check_same_sweep(per_image, qps, codecs)
    codec_rows: dict[str, dict[int, list[dict]]] = {c: {q: [] for q in CODEC_QUALITIES[c]} for c in codecs}
    for im in per_image:
        for c in codecs:
            for row in im["codecs"][c]:
                codec_rows[c][row["quality"]].append(row)
    points = []
    for i, qp in enumerate(qps):
        rows = [im["points"][i] for im in per_image]
        points.append(
            {
                "qp": qp,
                "bpp": _mean([r["bpp"] for r in rows]),
                "psnr": _mean([r["psnr"] for r in rows]),
                "ms_ssim": _mean([r["ms_ssim"] for r in rows]),
                "encode_s": _mean([r["encode_s"] for r in rows]),
                "decode_s": _mean([r["decode_s"] for r in rows]),
            }
        )
    codec_points = {
        c: [
            {
                "quality": q,
                "bpp": _mean([r["bpp"] for r in rows]),
                "psnr": _mean([r["psnr"] for r in rows]),
                "ms_ssim": _mean([r["ms_ssim"] for r in rows]),
                "encode_s": _mean([r["encode_s"] for r in rows]),
            }
            for q, rows in by_q.items()
        ]
        for c, by_q in codec_rows.items()
    }
    bd: dict[str, float | None] = {}
    bd_reasons: dict[str, str] = {}
    for c, cps in codec_points.items():
        value, reason = bd_rate_with_reason(
            [p["bpp"] for p in cps], [p["psnr"] for p in cps], [p["bpp"] for p in points], [p["psnr"] for p in points]
        )
        bd[c] = value
        if reason:
            bd_reasons[c] = reason
    return {
        "points": points,
        "per_image": per_image,
        "codecs": codec_points,
        "bd_rate": bd,
        "bd_rate_reasons": bd_reasons,
        "skipped": list(skipped),
    }


DEFAULT_FLOORS = tuple(float(v) for v in range(30, 41))  # dB: the span of the and README's choice figures


def image_curves(im: dict) -> dict[str, tuple[list[float], list[float]]]:
    """One image's measured (bpp, PSNR) curves by codec (``msinn``: the model), from an eval's per-image entry."""
    out = {"msinn": ([p["bpp"] for p in im["points"]], [p["psnr"] for p in im["points"]])}
    for c, pts in im.get("codecs", {}).items():
        out[c] = ([p["bpp"] for p in pts], [p["psnr"] for p in pts])
    return out


def floor_winner(curves_of: dict[str, tuple[list[float], list[float]]], choice: Sequence[str],
                 floor: float) -> tuple[str, float] | None:
    """The codec of ``choice`` with the smallest rate reaching ``floor`` on one image, and that rate."""
    from .bdrate import rate_reaching

    rates = {c: rate_reaching(*curves_of[c], floor) for c in choice if c in curves_of}
    rates = {c: r for c, r in rates.items() if r is not None}
    if not rates:
        return None
    best = min(rates, key=rates.get)
    return best, rates[best]


def floor_curves(result: dict, choice: Sequence[str], floors: Sequence[float] = DEFAULT_FLOORS) -> dict:
    """Curves at PSNR floors from each image's own measured points: every codec alone, and the per-image choice.

    For each image and floor, each codec's rate comes from its measured
    points (``bdrate.rate_reaching``: log-rate PCHIP over PSNR inside them,
    the smallest measured file reaching the floor below them, as on graphics
    where a codec's lowest quality is already above 40 dB); the choice takes,
    per image, the smallest of the ``choice`` codecs (``msinn`` is the model).
    A floor enters a curve only where every image has a rate for it. This is
    the choice interpolated from a sweep: ``bench/codec_choice.py`` codes each
    image to each floor for real.
    """
    from .bdrate import rate_reaching

    per_image = [image_curves(im) for im in result["per_image"]]
    names = list(per_image[0]) if per_image else []
    curves: dict[str, dict[str, list[float]]] = {}
    for name in [*names, "choice"]:
        bpp, kept = [], []
        for f in floors:
            rates = []
            for curves_of in per_image:
                if name == "choice":
                    won = floor_winner(curves_of, choice, f)
                    rates.append(won[1] if won else None)
                else:
                    rates.append(rate_reaching(*curves_of[name], f))
            if rates and all(r is not None for r in rates):
                bpp.append(float(np.mean(rates)))
                kept.append(float(f))
        curves[name] = {"bpp": bpp, "psnr": kept}
    bd = {}
    for c in names:
        if c != "msinn":
            bd[c] = bd_rate_with_reason(curves[c]["bpp"], curves[c]["psnr"], curves["choice"]["bpp"],
                                        curves["choice"]["psnr"])[0]
    return {"codecs": list(choice), "floors": list(floors), "curves": curves, "bd_rate_vs": bd}


def compare(other_name: str, other: dict, result: dict) -> dict:
    """BD-rate and time ratios of ``result``'s model against another model coded on the same images."""
    pts, ref = result["points"], other["points"]
    value, reason = bd_rate_with_reason(
        [p["bpp"] for p in ref], [p["psnr"] for p in ref], [p["bpp"] for p in pts], [p["psnr"] for p in pts]
    )

    def ratio(key: str) -> float | None:
        a = sum(p[key] or 0.0 for p in pts)
        b = sum(p[key] or 0.0 for p in ref)
        return a / b if b else None

    return {
        "model": other_name,
        "points": ref,
        "bd_rate": value,
        "bd_rate_reason": reason,
        "encode_time_ratio": ratio("encode_s"),
        "decode_time_ratio": ratio("decode_s"),
    }
