"""Encode and decode time of the portable profile against its float model, side by side.

    python bench/portable_speed.py [--images 3] [--repeats 3] [--qp 5] [--threads 2] [--device cpu]

Both models code the same Kodak images at the same qp through the whole codec
(``encode_image``: analysis, context models, rANS, reconstruction and
container; ``decode_image``: every check included), alternately in one
process, so machine load hits both alike. Prints the median seconds per image
and the portable/float ratios (of medians, and of each image's fastest repeat).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
KODAK = REPO.parent / "shared" / "datasets" / "kodak"
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--float-model", default="msinn-small-2026-11d")
    ap.add_argument("--portable-model", default="msinn-small-2026-11d-p1")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--qp", type=float, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import msinn
    from msinn.codec import decode_image, encode_image
    from msinn.ratecontrol import Target

    models = {
        "float": msinn.load(args.float_model, args.device),
        "portable": msinn.load(args.portable_model, args.device),
    }
    images = sorted(KODAK.glob("*.png"))[: args.images]
    times: dict[str, list[float]] = {f"{k} {op}": [] for k in models for op in ("encode", "decode")}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for img in images:
        data = img.read_bytes()
        for rep in range(args.repeats + 1):  # the first round warms up
            for name, model in models.items():
                sync()
                t0 = time.perf_counter()
                res = encode_image(model, data, Target("qp", args.qp))
                sync()
                t1 = time.perf_counter()
                decode_image(res.data, model)
                sync()
                t2 = time.perf_counter()
                if rep:
                    times[f"{name} encode"].append(t1 - t0)
                    times[f"{name} decode"].append(t2 - t1)
    med = {k: statistics.median(v) for k, v in times.items()}
    # per image, the fastest of the repeats: the least disturbed by other load on the machine
    best = {k: statistics.mean(min(v[i * args.repeats : (i + 1) * args.repeats]) for i in range(len(images)))
            for k, v in times.items()}
    out = {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "images": [p.name for p in images],
        "median_seconds_per_image": {k: round(v, 3) for k, v in med.items()},
        "best_seconds_per_image": {k: round(v, 3) for k, v in best.items()},
        "encode_ratio": round(med["portable encode"] / med["float encode"], 2),
        "decode_ratio": round(med["portable decode"] / med["float decode"], 2),
        "encode_ratio_best": round(best["portable encode"] / best["float encode"], 2),
        "decode_ratio_best": round(best["portable decode"] / best["float decode"], 2),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
