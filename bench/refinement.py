"""Encoder-side refinement (``--effort``): BD-rate against effort 0 and time, per image set, in one run.

    python bench/refinement.py [--sets kodak,graphics] [--limit 6] [--crop 256] [--qps 1,3,5,7]
                               [--try 60:0.01,150:0.01] [--timing-images 1]

For each set, a centre crop of each of the first ``--limit`` images is coded
at each qp with effort 0 and with each refinement setting (iterations:step
size, or a shipped level as ``L1``), through the exact coding path; the
BD-rate (PCHIP) of each setting against effort 0 is over the mean rate and
PSNR of the crops at each qp. Then the whole of the first ``--timing-images``
images is refined once at the middle qp, for the time a user pays per image.
The crops keep the run to hours on a 2-core CPU; refinement's cost grows
with the pixels, its gain does not depend on the image's size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import msinn  # noqa: E402
from msinn.evaluation.bdrate import bd_rate_with_reason  # noqa: E402
from msinn.images import open_image  # noqa: E402
from msinn.metrics import psnr_uint8  # noqa: E402
from msinn.refine import EFFORTS, Effort, refine_latents  # noqa: E402
from msinn.tensors import to_padded_tensor  # noqa: E402


def _settings(text: str) -> dict[str, Effort]:
    out = {}
    for item in text.split(","):
        if item.startswith("L"):
            out[item] = EFFORTS[int(item[1:])]
        else:
            it, lr = item.split(":")
            out[item] = Effort(int(it), float(lr))
    return out


def code(model, rgb: np.ndarray, qp: float, effort: Effort | None) -> tuple[float, float, float]:
    """(bpp, PSNR, seconds) of one image at one qp through the exact path, refined or not."""
    h, w = rgb.shape[:2]
    x = to_padded_tensor(rgb, model.device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        latents = model.analyze(x)
    if effort is not None:
        latents, _ = refine_latents(model, [t.clone() for t in latents], x, qp, effort, region=(h, w))
    with torch.inference_mode():
        enc = model.encode_latents(latents, model.snap_qp(qp), keep_state=True, code=False)
        rec = model.to_uint8(enc.finish())[:h, :w]
    return enc.code_length() * 8 / (h * w), psnr_uint8(rec, rgb), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="kodak,graphics")
    ap.add_argument("--limit", type=int, default=6)
    ap.add_argument("--stride", type=int, default=1, help="take every N-th image (spread over a set's kinds)")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--qps", default="1,3,5,7")
    ap.add_argument("--try", dest="settings", default="60:0.01,150:0.01")
    ap.add_argument("--timing-images", type=int, default=1)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    model = msinn.load(args.model)
    qps = [float(q) for q in args.qps.split(",")]
    settings = _settings(args.settings)
    for name in args.sets.split(","):
        folder = REPO.parent / "shared" / "datasets" / name
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")[:: args.stride][: args.limit]
        rows: dict[str, dict[float, list[tuple[float, float, float]]]] = {
            s: {q: [] for q in qps} for s in ["effort 0", *settings]}
        for f in files:
            img = open_image(f.read_bytes(), f.name)
            c = args.crop
            y0, x0 = max((img.height - c) // 2, 0), max((img.width - c) // 2, 0)
            rgb = np.ascontiguousarray(img.rgb[y0 : y0 + c, x0 : x0 + c])
            for q in qps:
                rows["effort 0"][q].append(code(model, rgb, q, None))
                for s, eff in settings.items():
                    rows[s][q].append(code(model, rgb, q, eff))
            print(f"{name}/{f.name} done", file=sys.stderr, flush=True)

        def curve(s: str, rows: dict = rows) -> tuple[list[float], list[float]]:
            return ([statistics.mean(r[0] for r in rows[s][q]) for q in qps],
                    [statistics.mean(r[1] for r in rows[s][q]) for q in qps])

        base = curve("effort 0")
        print(f"\n{name}: {len(files)} centre crops of {args.crop}x{args.crop}, qps {qps}, model "
              f"{getattr(model, 'model_name', '?')}")
        print(f"{'setting':>12} {'BD-rate vs 0':>13} {'s per crop':>11}   bpp / PSNR per qp")
        for s in rows:
            bpp, psnr = curve(s)
            bd = bd_rate_with_reason(*base, bpp, psnr)[0] if s != "effort 0" else 0.0
            secs = statistics.mean(r[2] for q in qps for r in rows[s][q])
            pts = "  ".join(f"{b:.4f}/{p:.2f}" for b, p in zip(bpp, psnr))
            print(f"{s:>12} {bd:>+12.2f}% {secs:>11.1f}   {pts}")
        for f in files[: args.timing_images]:
            img = open_image(f.read_bytes(), f.name)
            q = qps[len(qps) // 2]
            t0 = code(model, img.rgb, q, None)[2]
            for s, eff in settings.items():
                t = code(model, img.rgb, q, eff)[2]
                print(f"whole image {f.name} ({img.width}x{img.height}) at qp {q}: {s} {t:.0f} s, effort 0 "
                      f"{t0:.1f} s ({t / t0:.0f}x)")


if __name__ == "__main__":
    main()
