"""``msinn eval``: real-coding rate-distortion evaluation against classical codecs.

Every number comes from actual bitstreams (not the likelihood estimate), so
the results are what a user of ``msinn encode`` would get. The model is coded
at each anchor; JPEG, WebP and AVIF (through Pillow) are coded on the same
images in the same run, and the Bjontegaard delta rate of the model against
each codec summarises the comparison.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAPER_RD = REPO_ROOT.parent / "shared" / "reference" / "paper_rd.json"
PAPER_CURVES = {"anchor8_lambda_max_0.18": "paper anchor8 (Kodak)", "anchor12_lambda_max_1.8": "paper anchor12 (Kodak)"}

# Quality sweeps chosen to span roughly 0.1-3 bpp on natural photographs (Kodak-like content).
CODEC_QUALITIES: dict[str, tuple[int, ...]] = {
    "jpeg": (5, 10, 20, 30, 50, 70, 85, 92, 96),
    "webp": (0, 10, 25, 50, 70, 85, 95, 100),
    "avif": (10, 25, 40, 55, 70, 80, 88, 94),
}
AVIF_SPEED = 6  # libavif's default trade-off; slower speeds gain little and cost seconds per image
MS_SSIM_MIN_SIDE = 161  # pytorch_msssim needs the smaller side > (win_size - 1) * 2**4 = 160

Coder = Callable[[Any, np.ndarray, int | float], tuple[int, np.ndarray, float, float]]


# ---------------------------------------------------------------------------------------------- BD-rate
def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Shape-preserving (Fritsch-Carlson / scipy PchipInterpolator) derivatives at the knots."""
    h = np.diff(x)
    m = np.diff(y) / h
    n = len(x)
    if n == 2:
        return np.array([m[0], m[0]])
    d = np.zeros(n)
    sm = np.sign(m)
    flat = (sm[1:] != sm[:-1]) | (m[1:] == 0) | (m[:-1] == 0)
    w1 = 2 * h[1:] + h[:-1]
    w2 = h[1:] + 2 * h[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        whmean = (w1 / m[:-1] + w2 / m[1:]) / (w1 + w2)
        d[1:-1] = np.where(flat, 0.0, 1.0 / whmean)

    def edge(h0: float, h1: float, m0: float, m1: float) -> float:
        e = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
        if np.sign(e) != np.sign(m0):
            return 0.0
        if np.sign(m0) != np.sign(m1) and abs(e) > 3 * abs(m0):
            return 3 * m0
        return e

    d[0] = edge(h[0], h[1], m[0], m[1])
    d[-1] = edge(h[-1], h[-2], m[-1], m[-2])
    return d


def _pchip_integral(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Exact integral over [lo, hi] (inside [x0, xn]) of the PCHIP interpolant through (x, y)."""
    d = _pchip_slopes(x, y)
    h = np.diff(x)

    def primitive(t: np.ndarray, k: np.ndarray) -> np.ndarray:
        # Integral from x[k] to x[k] + t*h[k] of the cubic Hermite piece k (basis antiderivatives).
        t2, t3, t4 = t * t, t**3, t**4
        i00 = t4 / 2 - t3 + t
        i10 = t4 / 4 - 2 * t3 / 3 + t2 / 2
        i01 = -t4 / 2 + t3
        i11 = t4 / 4 - t3 / 3
        hk = h[k]
        return hk * (y[k] * i00 + hk * d[k] * i10 + y[k + 1] * i01 + hk * d[k + 1] * i11)

    full = primitive(np.ones(len(h)), np.arange(len(h)))
    cumulative = np.concatenate(([0.0], np.cumsum(full)))

    def antiderivative(v: float) -> float:
        k = int(np.clip(np.searchsorted(x, v, side="right") - 1, 0, len(h) - 1))
        t = (v - x[k]) / h[k]
        return float(cumulative[k] + primitive(np.array([t]), np.array([k]))[0])

    return antiderivative(hi) - antiderivative(lo)


def _integrate_pchip(x: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    try:  # scipy ships with compressai's dependencies; the numpy version is the same interpolant
        from scipy.interpolate import PchipInterpolator
    except ImportError:  # pragma: no cover - exercised directly by the tests
        return _pchip_integral(x, y, lo, hi)
    return float(PchipInterpolator(x, y).integrate(lo, hi))


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
    avg_diff = (_integrate_pchip(pb, lb, lo, hi) - _integrate_pchip(pa, la, lo, hi)) / (hi - lo)
    return float((math.exp(avg_diff) - 1) * 100), None


def bd_rate(
    rate_a: Sequence[float], psnr_a: Sequence[float], rate_b: Sequence[float], psnr_b: Sequence[float]
) -> float | None:
    """Bjontegaard delta rate of curve B against anchor curve A, in percent.

    Summarises two RD curves as one number: the average bitrate change B needs
    for the same quality as A, over the PSNR interval both curves cover.
    Log-rate is interpolated as a function of PSNR with PCHIP (the
    shape-preserving interpolant of the current Bjontegaard recommendation)
    and integrated exactly. Negative means B saves bits. Rates may be in any
    unit (bpp, bytes) as long as both curves use the same one. Returns None
    when either curve has fewer than two usable points or the PSNR ranges do
    not overlap.
    """
    return bd_rate_with_reason(rate_a, psnr_a, rate_b, psnr_b)[0]


# ---------------------------------------------------------------------------------------------- metrics
def psnr_rgb(a: np.ndarray, b: np.ndarray) -> float:
    """RGB PSNR in dB between two 8-bit images (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ms_ssim_rgb(a: np.ndarray, b: np.ndarray) -> float | None:
    """MS-SSIM of two HxWx3 uint8 images on [0, 1]; None when a side is too small for 5 scales."""
    if min(a.shape[0], a.shape[1]) < MS_SSIM_MIN_SIDE:
        return None
    import torch
    from pytorch_msssim import ms_ssim

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(x, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float() / 255.0

    with torch.inference_mode():
        return float(ms_ssim(t(a), t(b), data_range=1.0, size_average=True))


# ---------------------------------------------------------------------------------------------- coding
def _sync(device: Any) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def code_image(model: Any, img_uint8_hwc: np.ndarray, qp: int | float) -> tuple[int, np.ndarray, float, float]:
    """Really encode and decode one image: (bytes, 8-bit reconstruction, encode s, decode s).

    The byte count is the rANS stream alone. It is a module-level function so
    that a container-aware version (header bytes included) can replace it:
    :func:`evaluate` looks it up at call time.
    """
    import torch
    import torch.nn.functional as F

    device = model.device
    h, w = img_uint8_hwc.shape[:2]
    x = torch.from_numpy(np.array(img_uint8_hwc, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0)  # writable copy
    x = x.to(device=device, dtype=torch.float32) / 255.0
    ph, pw = -h % 64, -w % 64
    if ph or pw:  # the transform needs multiples of 64; replicate edges so padding costs few bits
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
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


def codec_available(name: str) -> str | None:
    """None if Pillow can encode and decode ``name`` here, else why not."""
    try:
        nbytes, rec = code_classical(name, np.full((16, 16, 3), 128, np.uint8), CODEC_QUALITIES[name][-1])
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    if nbytes <= 0 or rec.shape != (16, 16, 3):
        return "round trip through Pillow produced no image"
    return None


def code_classical(name: str, img_uint8_hwc: np.ndarray, quality: int) -> tuple[int, np.ndarray]:
    """(bytes, 8-bit reconstruction) of one image through a Pillow codec at one quality."""
    from PIL import Image

    im = Image.fromarray(img_uint8_hwc, "RGB")
    buf = io.BytesIO()
    if name == "jpeg":
        im.save(buf, "JPEG", quality=quality, subsampling=0)  # 4:4:4, like the model
    elif name == "webp":
        im.save(buf, "WEBP", quality=quality, method=6)  # lossy WebP is always 4:2:0
    elif name == "avif":
        im.save(buf, "AVIF", quality=quality, subsampling="4:4:4", speed=AVIF_SPEED)
    else:
        raise ValueError(f"unknown codec {name!r}")
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as dec:
        rec = np.asarray(dec.convert("RGB"))
    return len(data), rec


# ---------------------------------------------------------------------------------------------- evaluation
def _mean(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values (MS-SSIM is undefined for small images), None if none are."""
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def evaluate(
    model: Any,
    uris: Sequence[str],
    qps: Sequence[int | float],
    codecs: Sequence[str] = (),
    limit: int | None = None,
    coder: Coder | None = None,
    progress: Callable[[str], None] = _log,
) -> dict:
    """Code each readable image at every qp (and codec quality); per-image and averaged results.

    Images are processed one at a time so memory does not grow with the
    dataset. Unreadable images are reported through ``progress`` and listed
    under ``"skipped"`` instead of aborting the run.
    """
    import msinn.imageio as imageio

    if coder is None:
        coder = code_image  # looked up now, so a replacement assigned to the module is used
    per_image: list[dict] = []
    codec_rows: dict[str, dict[int, list[dict]]] = {c: {q: [] for q in CODEC_QUALITIES[c]} for c in codecs}
    skipped: list[dict] = []
    for uri in uris:
        if limit is not None and len(per_image) >= limit:
            break
        try:
            img = imageio.read_image_rgb(uri)
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
                    "psnr": psnr_rgb(img, rec),
                    "ms_ssim": ms_ssim_rgb(img, rec),
                    "encode_s": enc_s,
                    "decode_s": dec_s,
                }
            )
        per_image.append({"image": uri, "width": w, "height": h, "points": points})
        for c in codecs:
            for q in CODEC_QUALITIES[c]:
                nbytes, rec = code_classical(c, img, q)
                codec_rows[c][q].append(
                    {"bpp": nbytes * 8.0 / pixels, "psnr": psnr_rgb(img, rec), "ms_ssim": ms_ssim_rgb(img, rec)}
                )
        n = len(per_image)
        total = min(len(uris), limit) if limit is not None else len(uris)
        progress(f"[{n}/{total}] {uri} {w}x{h}: {time.perf_counter() - t_start:.1f} s")

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
        "skipped": skipped,
    }


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
        lines.append(f"{'quality':>7} {'bpp':>8} {'PSNR dB':>8} {'MS-SSIM':>8}")
        for p in cps:
            lines.append(
                f"{p['quality']:>7} {_fmt(p['bpp'], '.4f'):>8} {_fmt(p['psnr'], '.2f'):>8} "
                f"{_fmt(p['ms_ssim'], '.4f'):>8}"
            )
    if result["bd_rate"]:
        lines.append("")
        lines.append("BD-rate of the model vs each codec (PSNR, negative = model saves bits)")
        for c, v in result["bd_rate"].items():
            why = result.get("bd_rate_reasons", {}).get(c)
            lines.append(f"  {c:<6} {v:+8.2f} %" if v is not None else f"  {c:<6} None ({why})")
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


def to_json(model_name: str, result: dict) -> dict:
    """The documented ``--json`` document."""
    return _finite(
        {
            "model": model_name,
            "points": result["points"],
            "per_image": result["per_image"],
            "codecs": result["codecs"],
            "bd_rate": result["bd_rate"],
            **({"compare": result["compare"]} if "compare" in result else {}),
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


def plot_rd(path: str | Path, model_name: str, result: dict, paper: dict[str, tuple[list[float], list[float]]]) -> None:
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
    for i, (c, cps) in enumerate(result["codecs"].items()):
        x, y = curve(cps)
        bd = result["bd_rate"].get(c)
        note = f" (model BD-rate {bd:+.1f}%)" if bd is not None else ""
        ax.plot(x, y, "s-", ms=4, color=f"C{i}", label=f"{c}{note}")
    for j, (label, (bpp, psnr)) in enumerate(paper.items()):
        ax.plot(bpp, psnr, "x--", color="0.4" if j == 0 else "0.65", lw=1, label=label)
    n = len(result["per_image"])
    ax.set_title(f"Rate-distortion on {n} image{'s' if n != 1 else ''}")
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("RGB PSNR (dB)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(str(path), format="png")


# ---------------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msinn eval",
        description="Rate-distortion evaluation with real coding, optionally against JPEG/WebP/AVIF.",
    )
    p.add_argument("dir", help="folder, file or fsspec URI of images")
    p.add_argument("--model", help="registered model name or checkpoint path (default: bundled weights)")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write the results as JSON")
    p.add_argument("--plot", metavar="OUT.png", help="write RD curves as a PNG")
    p.add_argument("--codecs", default="", help=f"comma-separated classical codecs: {','.join(CODEC_QUALITIES)}")
    p.add_argument("--qps", help="comma-separated rate parameters (default: every anchor)")
    p.add_argument("--limit", type=int, help="evaluate at most N (readable) images")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--compare",
        metavar="MODEL",
        help="also code the images with MODEL and report the BD-rate and speed of --model against it "
        "(e.g. a portable model against the float model it was converted from)",
    )
    p.add_argument(
        "--paper-rd",
        default=str(DEFAULT_PAPER_RD),
        metavar="PATH",
        help="JSON with the paper's Kodak RD points for the plot ('' to leave them out)",
    )
    return p


def _parse_qps(text: str) -> list[int | float]:
    out: list[int | float] = []
    for part in text.split(","):
        v = float(part.strip())
        out.append(int(v) if v.is_integer() else v)
    return out


def main(argv: list[str]) -> int:
    """Entry point of ``msinn eval``; returns the exit status."""
    p = _parser()
    args = p.parse_args(argv)
    codecs = [c.strip().lower() for c in args.codecs.split(",") if c.strip()]
    unknown = [c for c in codecs if c not in CODEC_QUALITIES]
    if unknown:
        p.error(f"unknown codec(s) {unknown}; choose from {','.join(CODEC_QUALITIES)}")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    try:
        qps_arg = _parse_qps(args.qps) if args.qps else None
    except ValueError:
        p.error(f"--qps must be comma-separated numbers, got {args.qps!r}")
    available = []
    for c in dict.fromkeys(codecs):
        why = codec_available(c)
        if why is None:
            available.append(c)
        else:
            _log(f"msinn eval: codec {c} is not available in this Pillow build ({why}); skipping it")

    import msinn
    import msinn.imageio as imageio

    try:
        uris = imageio.list_images(args.dir)
    except (FileNotFoundError, OSError, ValueError) as exc:
        _log(f"msinn eval: error: {exc}")
        return 1
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            _log("msinn eval: error: --device cuda requested but CUDA is not available")
            return 1
    try:
        model = msinn.load(args.model, args.device)
    except (msinn.CheckpointError, FileNotFoundError) as exc:
        _log(f"msinn eval: error: cannot load model: {exc}")
        return 1
    qps = qps_arg if qps_arg is not None else list(range(model.anchor_num))
    for qp in qps:
        try:
            model.check_qp(qp)
        except (TypeError, ValueError) as exc:
            p.error(str(exc))
    name = getattr(model, "model_name", None) or str(args.model or "default")
    _log(f"msinn eval: {len(uris)} file(s), model {name}, qps {qps}, codecs {available or 'none'}")

    result = evaluate(model, uris, qps, available, limit=args.limit)
    if not result["per_image"]:
        _log(f"msinn eval: error: none of the {len(uris)} file(s) could be read")
        return 1
    if args.compare:
        try:
            other = msinn.load(args.compare, args.device)
        except (msinn.CheckpointError, FileNotFoundError) as exc:
            _log(f"msinn eval: error: cannot load model to compare: {exc}")
            return 1
        other_name = getattr(other, "model_name", None) or str(args.compare)
        _log(f"msinn eval: comparing with {other_name}")
        result["compare"] = compare(other_name, evaluate(other, uris, qps, (), limit=args.limit), result)
    print(format_table(name, result))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(to_json(name, result), indent=1) + "\n")
        _log(f"msinn eval: wrote {args.json_out}")
    if args.plot:
        paper = load_paper_rd(args.paper_rd) if args.paper_rd else {}
        if args.paper_rd and not paper and args.paper_rd != str(DEFAULT_PAPER_RD):
            _log(f"msinn eval: no paper RD points read from {args.paper_rd}")
        plot_rd(args.plot, name, result, paper)
        _log(f"msinn eval: wrote {args.plot}")
    return 0
