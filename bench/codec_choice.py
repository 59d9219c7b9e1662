"""Per-image codec choice against each codec alone, every image coded to each PSNR floor, in one run.

    python bench/codec_choice.py [DIR] [--floors 30,31,...,40] [--caps 0.25,0.5,1] [--limit N] [--stride N] [--effort N]
                                 [--crop SIDE]

For every image and floor F: the model's rate control to F (``msinn``), the
choice between the model and AVIF (the model's file, then AVIF's quality
search with its early stop: ``choice``), AVIF alone tuned for PSNR
(``avif``), and AVIF with Pillow's defaults (``avif-default``: speed 6,
4:4:4, libavif's perceptual tune, the anchor a newcomer would use). Each
curve is the mean rate of all images at each floor; BD-rates (PCHIP) compare
the curves. Caps (``--caps``, bpp) check that no codec's file exceeds one.
Times: the choice's cost relative to the model alone is measured on the same
images in the same run (the model's encode is shared, AVIF's part is timed
inside the choice). Prints tables; ``--json`` keeps every per-image figure.
``--crop SIDE`` codes a centre crop of each image instead (refinement at
higher efforts costs minutes per whole image on a CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import msinn  # noqa: E402
from msinn.choice import ChoiceOptions, choose, search_classical  # noqa: E402
from msinn.encoding import encode_image  # noqa: E402
from msinn.evaluation.bdrate import bd_rate_with_reason  # noqa: E402
from msinn.images import PreparedImage, open_image  # noqa: E402
from msinn.ratecontrol import Target  # noqa: E402

CURVES = ("msinn", "choice", "avif", "avif-default")


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v]


def code_floor(model, img, floor: float, effort: int, speed: int) -> dict:
    """Every curve's file for one image at one floor: bytes, PSNR, probes, seconds."""
    target = Target("psnr", floor)
    out = {}
    t0 = time.perf_counter()
    res = encode_image(model, img, target, effort=effort)
    t_model = time.perf_counter() - t0
    out["msinn"] = {"bytes": len(res.data), "psnr": res.psnr, "probes": res.probes, "seconds": t_model}
    t0 = time.perf_counter()
    ch = choose(img, target, ChoiceOptions(("msinn", "avif"), speed), res)
    t_choice = t_model + time.perf_counter() - t0
    w = ch.winner
    out["choice"] = {"bytes": w.bytes, "psnr": w.psnr, "codec": w.codec, "seconds": t_choice,
                     "probes": sum(c.probes for c in ch.candidates)}
    for name, codec in (("avif", "avif"), ("avif-default", "avif-default")):
        t0 = time.perf_counter()
        c = search_classical(codec, img, target, floor, speed)
        out[name] = {"bytes": c.bytes, "psnr": c.psnr, "probes": c.probes, "seconds": time.perf_counter() - t0,
                     "in_range": c.in_range}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", default=str(REPO.parent / "shared" / "datasets" / "kodak"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--floors", default=",".join(str(v) for v in range(30, 41)))
    ap.add_argument("--caps", default="", help="bpp caps to check (no file of any codec may exceed one)")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--stride", type=int, default=1, help="take every N-th image (spread over a set's kinds)")
    ap.add_argument("--effort", type=int, default=0)
    ap.add_argument("--avif-speed", type=int, default=6)
    ap.add_argument("--json", default=None)
    ap.add_argument("--crop", type=int, default=0, help="code a centre crop of this side instead of each image")
    args = ap.parse_args()
    model = msinn.load(args.model)
    files = sorted(p for p in Path(args.dir).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    files = files[:: args.stride]
    if args.limit:
        files = files[: args.limit]
    floors = _floats(args.floors)
    per_image = []
    for f in files:
        img = open_image(f.read_bytes(), f.name)
        if args.crop:
            y0, x0 = max((img.height - args.crop) // 2, 0), max((img.width - args.crop) // 2, 0)
            rgb = np.ascontiguousarray(img.rgb[y0 : y0 + args.crop, x0 : x0 + args.crop])
            img = PreparedImage(rgb, None, "RGB", img.source_mode, img.bit_depth, img.source_format)
        t0 = time.perf_counter()
        rec = {"image": f.name, "pixels": img.width * img.height, "floors": {}, "caps": {}}
        for floor in floors:
            rec["floors"][str(floor)] = code_floor(model, img, floor, args.effort, args.avif_speed)
        for cap in _floats(args.caps):
            t = Target("bpp", cap)
            res = encode_image(model, img, t)
            ch = choose(img, t, ChoiceOptions(("msinn", "avif", "webp", "jpeg"), args.avif_speed), res)
            rec["caps"][str(cap)] = {c.codec: {"bpp": c.bytes * 8 / rec["pixels"], "psnr": c.psnr,
                                               "in_range": c.in_range} for c in ch.candidates}
            rec["caps"][str(cap)]["winner"] = ch.winner.codec
        per_image.append(rec)
        wins = sum(v["choice"]["codec"] != "msinn" for v in rec["floors"].values())
        print(f"{f.name}: {time.perf_counter() - t0:.0f} s, AVIF chosen at {wins}/{len(floors)} floors",
              file=sys.stderr, flush=True)

    def mean_bpp(curve: str, floor: float) -> float:
        return statistics.mean(r["floors"][str(floor)][curve]["bytes"] * 8 / r["pixels"] for r in per_image)

    curves = {c: [mean_bpp(c, fl) for fl in floors] for c in CURVES}
    name = getattr(model, "model_name", "?")
    what = f"centre crops of {args.crop}x{args.crop} of " if args.crop else ""
    print(f"{len(per_image)} {what}images of {args.dir}, model {name} (effort {args.effort}), AVIF speed "
          f"{args.avif_speed}; each image coded to each PSNR floor; mean bpp")
    print(f"{'floor dB':>8} " + " ".join(f"{c:>12}" for c in CURVES) + f" {'AVIF chosen':>12}")
    for i, fl in enumerate(floors):
        chosen = sum(r["floors"][str(fl)]["choice"]["codec"] != "msinn" for r in per_image)
        print(f"{fl:>8g} " + " ".join(f"{curves[c][i]:>12.4f}" for c in CURVES) + f" {chosen:>9}/{len(per_image)}")
    print("\nBD-rate (rows against columns; negative = fewer bits at equal PSNR)")
    print(f"{'':>14}" + "".join(f"{c:>14}" for c in CURVES))
    for a in CURVES:
        cells = []
        for b in CURVES:
            v, _ = bd_rate_with_reason(curves[b], floors, curves[a], floors) if a != b else (None, None)
            cells.append("-" if v is None else f"{v:+.2f}%")
        print(f"{a:>14}" + "".join(f"{c:>14}" for c in cells))

    def total(curve: str, key: str) -> float:
        return sum(v[curve][key] for r in per_image for v in r["floors"].values())

    print(f"\nencode time: choice / msinn alone = {total('choice', 'seconds') / total('msinn', 'seconds'):.3f} "
          f"(msinn {total('msinn', 'seconds') / len(per_image) / len(floors):.2f} s per image and floor); "
          f"AVIF alone {total('avif', 'seconds') / total('msinn', 'seconds'):.3f}x msinn")
    n = len(per_image) * len(floors)
    print("mean real encodes per image and floor: " + ", ".join(f"{c} {total(c, 'probes') / n:.2f}" for c in CURVES))
    missed = {c: sum(v[c]["psnr"] < float(fl) for r in per_image for fl, v in r["floors"].items()) for c in CURVES}
    print("floors missed (PSNR below the floor): " + ", ".join(f"{c} {m}/{n}" for c, m in missed.items()))
    if args.caps:
        over = {}
        for r in per_image:
            for cap, cands in r["caps"].items():
                for codec, v in cands.items():
                    if codec != "winner" and v["in_range"]:
                        over.setdefault(codec, [0, 0])
                        over[codec][1] += 1
                        over[codec][0] += v["bpp"] > float(cap)
        print("caps exceeded (in-range targets): " + ", ".join(f"{c} {o}/{t}" for c, (o, t) in over.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"floors": floors, "curves": curves, "per_image": per_image}, indent=1))


if __name__ == "__main__":
    main()
