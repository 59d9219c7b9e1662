"""Real-coding rate-distortion evaluation: the loop, its tables, JSON and plot (``msinn eval``).

Every number comes from actual bitstreams (not the likelihood estimate), so
the results are what a user of ``msinn encode`` would get. The model is coded
at each anchor; classical codecs (:mod:`msinn.classical`) are coded on the
same images in the same run, and the Bjontegaard delta rate
(:mod:`msinn.evaluation.bdrate`) of the model against each codec summarises the
comparison. The command line is :mod:`msinn.cli.eval`.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..classical import CODEC_QUALITIES, code_at_quality
from ..metrics import ms_ssim_uint8, psnr_uint8
from .bdrate import bd_rate_with_reason

if TYPE_CHECKING:  # pragma: no cover
    from ..interface import CodecModel

PAPER_CURVES = {"anchor8_lambda_max_0.18": "paper anchor8 (Kodak)", "anchor12_lambda_max_1.8": "paper anchor12 (Kodak)"}

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
) -> dict:
    """Code each readable image at every qp (and codec quality); per-image and averaged results.

    Images are processed one at a time so memory does not grow with the
    dataset. Unreadable images are reported through ``progress`` and listed
    under ``"skipped"`` instead of aborting the run. ``done`` holds per-image
    results of an earlier run (``--resume``): those images are not coded
    again. ``checkpoint`` receives the summary so far after every image, so a
    run of hours that is interrupted loses one image, not all of them.
    """
    from ..images import read_image_rgb

    if coder is None:
        coder = code_image  # looked up now, so a replacement assigned to the module is used
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
            nbytes, rec, enc_s, dec_s = coder(model, img, qp)
            points.append(
                {
                    "qp": qp,
                    "bytes": int(nbytes),
                    "bpp": nbytes * 8.0 / pixels,
                    "psnr": psnr_uint8(img, rec),
                    "ms_ssim": ms_ssim_uint8(img, rec),
                    "encode_s": enc_s,
                    "decode_s": dec_s,
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


DEFAULT_FLOORS = tuple(float(v) for v in range(30, 41))  # dB: the span of the issue's and README's choice figures


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


# ---------------------------------------------------------------------------------------------- output
def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(model_name: str, result: dict) -> str:
    """The human-readable report printed to stdout."""
    n = len(result["per_image"])
    lines = [f"model {model_name} on {n} image{'s' if n != 1 else ''} (real coding, averages over images)"]
    lines.append(f"{'qp':>6} {'bpp':>8} {'PSNR dB':>8} {'MS-SSIM':>8} {'enc s':>7} {'dec s':>7}")
    for p in result["points"]:
        lines.append(
            f"{p['qp']:>6} {_fmt(p['bpp'], '.4f'):>8} {_fmt(p['psnr'], '.2f'):>8} {_fmt(p['ms_ssim'], '.4f'):>8} "
            f"{_fmt(p['encode_s'], '.3f'):>7} {_fmt(p['decode_s'], '.3f'):>7}"
        )
    for c, cps in result["codecs"].items():
        lines.append("")
        lines.append(f"{c}")
        lines.append(f"{'quality':>7} {'bpp':>8} {'PSNR dB':>8} {'MS-SSIM':>8} {'enc s':>7}")
        for p in cps:
            lines.append(
                f"{p['quality']:>7} {_fmt(p['bpp'], '.4f'):>8} {_fmt(p['psnr'], '.2f'):>8} "
                f"{_fmt(p['ms_ssim'], '.4f'):>8} {_fmt(p.get('encode_s'), '.3f'):>7}"
            )
    if result["bd_rate"]:
        lines.append("")
        lines.append("BD-rate of the model vs each codec (PSNR, negative = model saves bits)")
        for c, v in result["bd_rate"].items():
            why = result.get("bd_rate_reasons", {}).get(c)
            lines.append(f"  {c:<12} {v:+8.2f} %" if v is not None else f"  {c:<12} None ({why})")
    fl = result.get("choice")
    if fl:
        lines.append("")
        lines.append(f"per-image choice of {'+'.join(fl['codecs'])} at PSNR floors (each image's best codec, "
                     "interpolated from its measured points); mean bpp")
        names = list(fl["curves"])
        lines.append(f"{'floor':>6} " + " ".join(f"{n:>12}" for n in names))
        for f in fl["floors"]:
            cells = []
            for n in names:
                c = fl["curves"][n]
                cells.append(f"{c['bpp'][c['psnr'].index(f)]:>12.4f}" if f in c["psnr"] else f"{'-':>12}")
            lines.append(f"{f:>6g} " + " ".join(cells))
        lines.append("BD-rate of the choice vs each codec alone (PSNR floors, negative = choice saves bits)")
        for c, v in fl["bd_rate_vs"].items():
            lines.append(f"  {c:<12} " + (f"{v:+8.2f} %" if v is not None else "None"))
    cmp = result.get("compare")
    if cmp:
        lines.append("")
        lines.append(f"against {cmp['model']} on the same images")
        lines.append(f"{'qp':>6} {'bpp':>8} {'PSNR dB':>8} {'enc s':>7} {'dec s':>7}")
        for p in cmp["points"]:
            lines.append(
                f"{p['qp']:>6} {_fmt(p['bpp'], '.4f'):>8} {_fmt(p['psnr'], '.2f'):>8} "
                f"{_fmt(p['encode_s'], '.3f'):>7} {_fmt(p['decode_s'], '.3f'):>7}"
            )
        v = cmp["bd_rate"]
        lines.append(
            f"BD-rate of the model vs {cmp['model']}: "
            + (f"{v:+.2f} %" if v is not None else f"None ({cmp['bd_rate_reason']})")
            + f"; encode time x{_fmt(cmp['encode_time_ratio'], '.2f')}"
            + f", decode time x{_fmt(cmp['decode_time_ratio'], '.2f')}"
        )
    if result.get("skipped"):
        lines.append("")
        lines.append(f"skipped {len(result['skipped'])} unreadable file(s):")
        lines += [f"  {s['image']}: {s['error']}" for s in result["skipped"]]
    return "\n".join(lines)


def _finite(obj: Any) -> Any:
    """JSON-safe copy: inf/NaN (e.g. PSNR of a lossless reconstruction) become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def per_image_digest(per_image: Sequence[dict]) -> str:
    """SHA-256 of the per-image results as the ``--json`` file holds them: a file damaged or edited since it was
    written no longer matches, so ``--resume`` never reports its numbers as measured."""
    text = json.dumps(_finite(list(per_image)), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def to_json(model_name: str, result: dict) -> dict:
    """The documented ``--json`` document."""
    return _finite(
        {
            "model": model_name,
            "points": result["points"],
            "per_image": result["per_image"],
            "per_image_sha256": per_image_digest(result["per_image"]),
            "codecs": result["codecs"],
            "bd_rate": result["bd_rate"],
            **({"compare": result["compare"]} if "compare" in result else {}),
            **({"choice": result["choice"]} if "choice" in result else {}),
        }
    )


def load_paper_rd(path: str | Path) -> dict[str, tuple[list[float], list[float]]]:
    """The paper's Kodak (bpp, PSNR) curves by label; empty when the file is absent."""
    p = Path(path)
    if not p.is_file():
        return {}
    ref = json.loads(p.read_text())
    out = {}
    for key, label in PAPER_CURVES.items():
        kodak = ref.get(key, {}).get("kodak")
        if kodak and "bpp" in kodak and "psnr" in kodak:
            out[label] = (list(map(float, kodak["bpp"])), list(map(float, kodak["psnr"])))
    return out


def plot_rd(path: str | Path, model_name: str, result: dict, paper: dict[str, tuple[list[float], list[float]]],
            title: str | None = None) -> None:
    """RD curves (bpp vs PSNR) of the model, the codecs and the paper's Kodak points, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), dpi=120)
    FigureCanvasAgg(fig)  # Agg without pyplot: no global backend state, works headless
    ax = fig.add_subplot()

    def curve(pts: list[dict]) -> tuple[list[float], list[float]]:
        ok = [p for p in pts if p["bpp"] is not None and p["psnr"] is not None and math.isfinite(p["psnr"])]
        return [p["bpp"] for p in ok], [p["psnr"] for p in ok]

    x, y = curve(result["points"])
    ax.plot(x, y, "o-", lw=2, color="C3", label=f"MS-INN {model_name}")
    others = [f"C{i}" for i in range(10) if i != 3]  # C3 (red) is the model's
    for i, (c, cps) in enumerate(result["codecs"].items()):
        x, y = curve(cps)
        bd = result["bd_rate"].get(c)
        note = f" (model BD-rate {bd:+.1f}%)" if bd is not None else ""
        ax.plot(x, y, "s-", ms=4, color=others[i % len(others)], label=f"{c}{note}")
    fl = result.get("choice")
    if fl and fl["curves"]["choice"]["bpp"]:
        c = fl["curves"]["choice"]
        ax.plot(c["bpp"], c["psnr"], "D-", ms=4, lw=2, color="k", label=f"choice {'+'.join(fl['codecs'])} (floors)")
    for j, (label, (bpp, psnr)) in enumerate(paper.items()):
        ax.plot(bpp, psnr, "x--", color="0.4" if j == 0 else "0.65", lw=1, label=label)
    n = len(result["per_image"])
    ax.set_title(title or f"Rate-distortion on {n} image{'s' if n != 1 else ''}")
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("RGB PSNR (dB)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(str(path), format="png")




# ------------------------------------------------------------------------------------------ --resume's input
def resumable(doc: Any, model_name: str) -> list[dict]:
    """The per-image results of an earlier ``--json`` file, if they are whole, unaltered and plausible; else a
    ValueError naming the first thing wrong (one line), so nothing damaged is reported as measured.

    Checked: the file's own checksum of its results (:func:`per_image_digest`),
    the model, and every entry's types and ranges: a size in whole pixels,
    bytes and bpp that agree, a PSNR no 8-bit image of that size can exceed
    (null: lossless), MS-SSIM within [0, 1], times not negative, each
    classical codec's qualities those ``msinn eval`` measures.
    """
    if not isinstance(doc, dict):
        raise ValueError(f"holds a JSON {type(doc).__name__}, not an msinn eval result")
    if doc.get("model") != model_name:
        raise ValueError(f"holds results of model {doc.get('model')!r}, not {model_name!r}")
    per_image = doc.get("per_image")
    if not isinstance(per_image, list):
        raise ValueError("has no per_image list")
    digest = doc.get("per_image_sha256")
    if digest is None:
        raise ValueError("has no per_image_sha256 (written by an earlier version, or edited): start afresh")
    try:
        ok = digest == per_image_digest(per_image)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"per_image cannot be checked ({exc})") from None
    if not ok:
        raise ValueError("per_image does not match its per_image_sha256: the file was damaged or edited since it "
                         "was written; start afresh")
    seen: set[str] = set()
    for i, im in enumerate(per_image):
        _check_entry(im, f"per_image[{i}]", seen)
    return per_image


def _number(d: Any, key: str, where: str, low: float = -math.inf, high: float = math.inf, whole: bool = False,
            none: bool = False) -> float | None:
    """``d[key]`` if it is a finite number within [low, high] (a whole one with ``whole``; None with ``none``)."""
    if not isinstance(d, dict) or key not in d:
        raise ValueError(f"{where}: no {key}")
    v = d[key]
    if v is None and none:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ValueError(f"{where}.{key} {v!r} is not a finite number")
    if whole and not float(v).is_integer():
        raise ValueError(f"{where}.{key} {v!r} is not a whole number")
    if not low <= v <= high:
        raise ValueError(f"{where}.{key} {v!r} is outside [{low:g}, {high:g}]")
    return v


def _check_point(p: Any, where: str, pixels: int, psnr_max: float, timings: tuple[str, ...]) -> None:
    nbytes = _number(p, "bytes", where, 1, math.inf, whole=True)
    bpp = _number(p, "bpp", where, 0, math.inf)
    if not math.isclose(bpp, nbytes * 8 / pixels, rel_tol=1e-9):
        raise ValueError(f"{where}.bpp {bpp!r} is not its {nbytes} bytes over {pixels} pixels")
    _number(p, "psnr", where, 0, psnr_max, none=True)
    _number(p, "ms_ssim", where, 0, 1, none=True)
    for t in timings:
        _number(p, t, where, 0)


def _check_entry(im: Any, where: str, seen: set[str]) -> None:
    if not isinstance(im, dict) or not isinstance(im.get("image"), str) or not im["image"]:
        raise ValueError(f"{where}: not an image's results (no image name)")
    where = f"{where} ({im['image'][:200]})"
    if im["image"] in seen:
        raise ValueError(f"{where}: the image appears twice")
    seen.add(im["image"])
    w = _number(im, "width", where, 1, 1 << 20, whole=True)
    h = _number(im, "height", where, 1, 1 << 20, whole=True)
    pixels = int(w) * int(h)
    psnr_max = 10 * math.log10(255**2 * 3 * pixels)  # one sample off by one: the highest finite PSNR there is
    points = im.get("points")
    if not isinstance(points, list) or not points:
        raise ValueError(f"{where}: no points")
    for j, p in enumerate(points):
        _number(p, "qp", f"{where}.points[{j}]", 0)
        _check_point(p, f"{where}.points[{j}]", pixels, psnr_max, ("encode_s", "decode_s"))
    codecs = im.get("codecs", {})
    if not isinstance(codecs, dict):
        raise ValueError(f"{where}: codecs is not an object")
    for c, rows in codecs.items():
        if c not in CODEC_QUALITIES:
            raise ValueError(f"{where}: codec {str(c)[:40]!r} is not one msinn eval measures")
        if not isinstance(rows, list) or [r.get("quality") if isinstance(r, dict) else None for r in rows] != list(
                CODEC_QUALITIES[c]):
            raise ValueError(f"{where}: {c}'s qualities are not the {list(CODEC_QUALITIES[c])} msinn eval measures")
        for j, r in enumerate(rows):
            _check_point(r, f"{where}.codecs.{c}[{j}]", pixels, psnr_max, ("encode_s",))
