"""Working memory of encoding one image against its size and effort: the figures behind ``pipeline/limits.py``.

    python bench/image_memory.py [--sides 1024,2048,4096] [--effort 0] [--model NAME_OR_PATH] [--threads 1]
    python bench/image_memory.py --sides 256,512,1024 --effort 1 --iterations 3

Each size runs in a fresh process: a smooth PNG of side x side pixels is
opened and encoded at qp 3 (no rate search) with the pipeline's tiling and
the given refinement level, and the peak RSS above the loaded model is
printed with what ``limits.peak_bytes`` estimates for it. Refinement's peak
is one optimisation step's (each step frees its graph before the next), so
``--iterations`` may shorten a level to a few steps to measure it: the peak
is the same, only the time differs. Not a test: 4096 takes minutes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import io, json, resource, sys, time
sys.path.insert(0, {repo!r})
import numpy as np
import torch
from PIL import Image
side = {side}
rng = np.random.default_rng(0)
small = (rng.random((max(1, side // 16), max(1, side // 16), 3)) * 255).astype(np.uint8)
buf = io.BytesIO()
Image.fromarray(small).resize((side, side)).save(buf, "PNG")
data = buf.getvalue()
torch.set_num_threads({threads})
import msinn
from dataclasses import replace
from msinn import refine
from msinn.encoding import EncodeOptions, encode_image
from msinn.images import open_image
from msinn.ratecontrol import Target
from pipeline.limits import peak_bytes
if {effort} and {iterations}:
    refine.EFFORTS[{effort}] = replace(refine.EFFORTS[{effort}], iterations={iterations})
model = msinn.load({model!r})
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
base, t0 = rss(), time.time()
img = open_image(data, "bench", 1 << 30)
opts = EncodeOptions(tile_pixels=1 << 21, max_pixels=1 << 30, effort={effort})
encode_image(model, img, Target("qp", 3), opts)
estimate = peak_bytes(side, side, 1 << 21, {effort}) / 2**20
print(json.dumps({{"side": side, "peak_mb": (rss() - base) / 2**20, "estimate_mb": estimate,
                  "seconds": time.time() - t0}}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", default="1024,2048,4096", help="square image sides in pixels")
    p.add_argument("--effort", type=int, default=0, help="refinement level (msinn.refine.EFFORTS)")
    p.add_argument("--iterations", type=int, default=0,
                   help="with --effort: this many optimisation steps instead of the level's (same peak, less time)")
    p.add_argument("--model", default=None, help="model name or checkpoint (default: bundled)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    repo = str(Path(__file__).resolve().parents[1])
    print(f"{'side':>6} {'MP':>6} {'effort':>6} {'peak MB':>8} {'estimate MB':>12} {'seconds':>8}")
    for side in (int(s) for s in args.sides.split(",")):
        code = CHILD.format(repo=repo, side=side, model=args.model, threads=args.threads, effort=args.effort,
                            iterations=args.iterations)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        mp = side * side / 1e6
        print(f"{side:>6} {mp:>6.1f} {args.effort:>6} {r['peak_mb']:>8.0f} {r['estimate_mb']:>12.0f} "
              f"{r['seconds']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
