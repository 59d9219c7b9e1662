"""Reporting an evaluation (``msinn eval``): the table printed, the ``--json`` document and its check on
``--resume``, the RD plot. The numbers come from :mod:`msinn.evaluation.rd`."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..classical import CODEC_QUALITIES

PAPER_CURVES = {"anchor8_lambda_max_0.18": "paper anchor8 (Kodak)", "anchor12_lambda_max_1.8": "paper anchor12 (Kodak)"}


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
